use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use igpt::backend::device::{self, Device};
use igpt::backend::isa::{self, KernelSet};
use serde_json::{Value, json};

#[derive(Args)]
pub struct InfoArgs {
    /// HF model directory (config.json + model.safetensors or pytorch_model.bin); without
    /// it only the engine is described.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Also describe a GPU (cuda or cuda:N): its name, memory and compute capability, the
    /// NVIDIA libraries found, and whether this build has the CUDA backend. Exits non-zero,
    /// saying what is missing, when the device cannot be used.
    #[arg(long)]
    device: Option<igpt::backend::Device>,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(a: InfoArgs) -> Result<()> {
    let engine = engine();
    let model = a.model.as_deref().map(model_info).transpose()?;
    let gpu = match a.device {
        Some(Device::Cuda(n)) => Some(gpu(n)),
        _ => None,
    };
    if a.json {
        let mut v = json!({ "engine": engine });
        if let Some(m) = model {
            // the model's fields at the top level (as before), the engine beside them
            v = m;
            v["engine"] = engine;
        }
        if let Some((g, _)) = &gpu {
            v["gpu"] = g.clone();
        }
        super::print_json(&v)?;
    } else {
        print_engine(&engine);
        if let Some(m) = model {
            print_model(&m);
        }
        if let Some((g, _)) = &gpu {
            print_gpu(g);
        }
    }
    match gpu {
        Some((_, Err(e))) => Err(e.into()),
        _ => Ok(()),
    }
}

/// What this build and machine offer for a GPU, and the device's own report (or why there
/// is none).
fn gpu(n: usize) -> (Value, igpt::error::Result<()>) {
    let d = Device::Cuda(n);
    let libs = device::libraries();
    let info = device::gpu_info(n);
    let v = json!({
        "device": d.to_string(),
        "cuda_backend_built": device::CUDA_BUILT,
        "libraries": libs,
        "gpu": info.as_ref().ok(),
        "error": info.as_ref().err().map(|e| e.to_string()),
    });
    (v, info.map(|_| ()))
}

fn print_gpu(g: &Value) {
    println!(
        "device      {} (CUDA backend in this build: {})",
        g["device"].as_str().unwrap_or("?"),
        g["cuda_backend_built"]
    );
    for l in g["libraries"].as_array().into_iter().flatten() {
        let found = l["found"].as_str().unwrap_or("not found");
        println!("  lib{:<9} {found}", l["name"].as_str().unwrap_or("?"));
    }
    if let Some(info) = g["gpu"].as_object() {
        let gib = |k: &str| info[k].as_f64().unwrap_or(0.0) / (1u64 << 30) as f64;
        let cc = &info["compute_capability"];
        println!(
            "gpu         {} (compute capability {}.{}), {:.1} GiB, {:.1} GiB free",
            info["name"].as_str().unwrap_or("?"),
            cc[0],
            cc[1],
            gib("total_memory_bytes"),
            gib("free_memory_bytes")
        );
    }
}

/// The kernel set that runs, the ones this CPU could run, its SIMD features and threads.
fn engine() -> Value {
    let names = |v: Vec<KernelSet>| v.into_iter().map(|s| s.name()).collect::<Vec<_>>();
    json!({
        "kernels": isa::active().name(),
        "kernels_available": names(KernelSet::available()),
        "kernels_forced": std::env::var(isa::ENV).ok().filter(|v| !v.trim().is_empty()),
        "cpu_features": isa::cpu_features(),
        "arch": std::env::consts::ARCH,
        "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
    })
}

fn print_engine(e: &Value) {
    let list = |k: &str| {
        e[k].as_array().map_or(String::new(), |a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", "))
    };
    let forced = e["kernels_forced"].as_str().map_or(String::new(), |v| format!(" ({}={v})", isa::ENV));
    println!(
        "kernels     {}{forced} (this CPU can run: {})",
        e["kernels"].as_str().unwrap_or("?"),
        list("kernels_available")
    );
    println!(
        "cpu         {} with {}; {} threads",
        e["arch"].as_str().unwrap_or("?"),
        list("cpu_features"),
        e["threads"]
    );
}

/// The summary of a model directory, as `info --json` has always printed it.
fn model_info(dir: &std::path::Path) -> Result<Value> {
    let model = super::open_model(dir)?;
    let c = &model.config;
    let palette = super::open_processor(dir).ok();
    let (h, w) = palette.as_ref().map_or((0, 0), |p| p.hw());
    Ok(json!({
        "model": dir, "class": model.kind.hf_architecture(), "n_params": model.params.len(),
        "n_layer": c.n_layer, "n_embd": c.n_embd, "n_head": c.n_head, "head_dim": c.head_dim(), "n_inner": c.n_inner(),
        "n_positions": c.n_positions, "vocab_size": c.vocab_size, "n_colors": c.n_colors(), "sos_token": c.sos_token(),
        "activation_function": c.activation_function,
        "scale_attn_weights": c.scale_attn_weights, "scale_attn_by_inverse_layer_idx": c.scale_attn_by_inverse_layer_idx,
        "num_labels": (model.kind == igpt::model::ModelKind::Classifier).then(|| c.num_labels()),
        "palette_size": palette.as_ref().map(|p| p.n_clusters()), "image_height": h, "image_width": w,
        "model_type": c.model_type, "grid_height": c.height(), "grid_width": c.width(),
        "position_embedding": c.position_embedding.name(), "rope_theta": c.rope_theta,
        "attention": c.attention.name(), "local_rows": c.local_rows, "local_cols": c.local_cols,
        "objective": c.objective.name(), "causal": c.is_causal(),
    }))
}

fn print_model(m: &Value) {
    let n = m["n_params"].as_u64().unwrap_or(0);
    println!("model       {}", m["model"].as_str().unwrap_or("?"));
    println!("class       {}", m["class"].as_str().unwrap_or("?"));
    println!("parameters  {n} ({:.2}M)", n as f64 / 1e6);
    println!(
        "shape       {} layers, n_embd {}, {} heads (head size {}), MLP {}",
        m["n_layer"], m["n_embd"], m["n_head"], m["head_dim"], m["n_inner"]
    );
    println!(
        "sequence    {} positions, vocab {} ({} colours + SOS {})",
        m["n_positions"], m["vocab_size"], m["n_colors"], m["sos_token"]
    );
    println!(
        "objective   {}",
        if m["causal"] == true {
            "gpt (causal)"
        } else {
            "bert (bidirectional: eval scores masked pixels; no sampling)"
        }
    );
    println!(
        "attention   {}{}; scale_attn_weights {}, by_inverse_layer_idx {}",
        m["attention"].as_str().unwrap_or("?"),
        if m["attention"] == "local_2d" {
            format!(" (rows {} above, columns {} either side)", m["local_rows"], m["local_cols"])
        } else {
            String::new()
        },
        m["scale_attn_weights"],
        m["scale_attn_by_inverse_layer_idx"]
    );
    println!(
        "positions   {}{} over {} x {} slots (H x W)",
        m["position_embedding"].as_str().unwrap_or("?"),
        if m["position_embedding"] == "rope_2d" { format!(" (theta {})", m["rope_theta"]) } else { String::new() },
        m["grid_height"],
        m["grid_width"]
    );
    match m["palette_size"].as_u64() {
        Some(k) => println!("palette     {k} colours, images {}x{} (H x W)", m["image_height"], m["image_width"]),
        None => println!("palette     none (no preprocessor_config.json)"),
    }
}
