use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use igpt::model::save_model;

#[derive(Args)]
pub struct ConvertArgs {
    /// HF model directory (model.safetensors, a sharded index, or pytorch_model.bin).
    #[arg(long)]
    model: PathBuf,
    /// Output directory: config.json + model.safetensors (+ the palette, copied).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: ConvertArgs) -> Result<()> {
    let model = super::open_model(&a.model)?;
    save_model(&model, &a.out).with_context(|| format!("saving to {}", a.out.display()))?;
    let palette = a.model.join("preprocessor_config.json");
    if palette.exists() {
        std::fs::copy(&palette, a.out.join("preprocessor_config.json"))
            .with_context(|| format!("copying {}", palette.display()))?;
    }
    println!("wrote {} ({}, {} parameters)", a.out.display(), model.kind.hf_architecture(), model.params.len());
    Ok(())
}
