use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde_json::json;

#[derive(Args)]
pub struct InfoArgs {
    /// HF model directory (config.json + model.safetensors or pytorch_model.bin).
    #[arg(long)]
    model: PathBuf,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(a: InfoArgs) -> Result<()> {
    let model = super::open_model(&a.model)?;
    let c = &model.config;
    let palette = super::open_processor(&a.model).ok();
    let n_params = model.params.len();
    let (h, w) = palette.as_ref().map_or((0, 0), |p| p.hw());
    if a.json {
        return super::print_json(&json!({
            "model": a.model, "class": model.kind.hf_architecture(), "n_params": n_params,
            "n_layer": c.n_layer, "n_embd": c.n_embd, "n_head": c.n_head, "n_inner": c.n_inner(),
            "n_positions": c.n_positions, "vocab_size": c.vocab_size, "n_colors": c.n_colors(),
            "activation_function": c.activation_function, "num_labels": (model.kind == igpt::model::ModelKind::Classifier).then(|| c.num_labels()),
            "palette_size": palette.as_ref().map(|p| p.n_clusters()), "image_height": h, "image_width": w,
        }));
    }
    println!("model       {}", a.model.display());
    println!("class       {}", model.kind.hf_architecture());
    println!("parameters  {} ({:.2}M)", n_params, n_params as f64 / 1e6);
    println!(
        "shape       {} layers, n_embd {}, {} heads (head size {}), MLP {}",
        c.n_layer,
        c.n_embd,
        c.n_head,
        c.head_dim(),
        c.n_inner()
    );
    println!(
        "sequence    {} positions, vocab {} ({} colours + SOS {})",
        c.n_positions,
        c.vocab_size,
        c.n_colors(),
        c.sos_token()
    );
    println!(
        "attention   scale_attn_weights {}, by_inverse_layer_idx {}",
        c.scale_attn_weights, c.scale_attn_by_inverse_layer_idx
    );
    match palette {
        Some(p) => println!("palette     {} colours, images {}x{} (H x W)", p.n_clusters(), h, w),
        None => println!("palette     none (no preprocessor_config.json)"),
    }
    Ok(())
}
