use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use igpt::model::{Logits, ModelKind, Workspace, cross_entropy};
use serde_json::json;

#[derive(Args)]
pub struct EvalArgs {
    /// Model directory (config.json, weights, preprocessor_config.json).
    #[arg(long)]
    model: PathBuf,
    /// PNG or JPEG images.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Print JSON on stdout: {"images":[{"path","nll"}],"mean_nll","bits_per_token"}.
    #[arg(long)]
    json: bool,
}

pub fn run(a: EvalArgs) -> Result<()> {
    super::init_threads(a.threads);
    let model = super::open_model(&a.model)?;
    if model.kind != ModelKind::CausalLm {
        bail!(
            "{}: eval needs a causal model (ImageGPTForCausalImageModeling with lm_head), this is {}",
            a.model.display(),
            model.kind.hf_architecture()
        );
    }
    let proc = super::open_processor(&a.model)?;
    let (h, w) = proc.hw();
    let t = h * w;
    if t != model.config.n_positions || proc.n_clusters() != model.config.n_colors() {
        bail!(
            "{}: palette ({} colours, {}x{} = {} pixels) does not match the model (vocab {} colours, n_positions {})",
            a.model.display(),
            proc.n_clusters(),
            h,
            w,
            t,
            model.config.n_colors(),
            model.config.n_positions
        );
    }
    let imgs = super::open_images(&a.images)?;
    let sos = model.config.sos_token();
    let v = model.config.n_colors();
    let mut ws = Workspace::new();
    let mut nlls = Vec::with_capacity(imgs.len());
    let bar = indicatif::ProgressBar::new(imgs.len() as u64).with_style(indicatif::ProgressStyle::with_template(
        "eval {bar:30} {pos}/{len} images [{elapsed_precise}<{eta_precise}, {per_sec}]",
    )?);
    for chunk in imgs.chunks(a.batch.max(1)) {
        let targets: Vec<Vec<u32>> = chunk.iter().map(|img| proc.encode(img)).collect();
        // input = [SOS] + tokens[:-1]; logits[:, i] predicts tokens[i]
        let inputs: Vec<u32> =
            targets.iter().flat_map(|tg| std::iter::once(sos).chain(tg[..t - 1].iter().copied())).collect();
        model.forward(&mut ws, &inputs, chunk.len(), t, Logits::All, false)?;
        for (i, tg) in targets.iter().enumerate() {
            let (nll, _) = cross_entropy(&ws.logits[i * t * v..(i + 1) * t * v], tg, v);
            nlls.push(nll);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let mean = nlls.iter().sum::<f64>() / nlls.len() as f64;
    let bits = mean / std::f64::consts::LN_2;
    if a.json {
        let items: Vec<_> = a
            .images
            .iter()
            .zip(&nlls)
            .map(|(p, n)| json!({"path": p, "nll": n, "bits_per_token": n / std::f64::consts::LN_2}))
            .collect();
        return super::print_json(&json!({"images": items, "mean_nll": mean, "bits_per_token": bits}));
    }
    for (p, n) in a.images.iter().zip(&nlls) {
        println!("{:>9.5} nats/token  {:>8.5} bits/token  {}", n, n / std::f64::consts::LN_2, p.display());
    }
    println!("mean {mean:.5} nats/token = {bits:.5} bits/token over {} images", nlls.len());
    Ok(())
}
