use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde_json::json;

#[derive(Args)]
pub struct EncodeArgs {
    /// Model directory holding preprocessor_config.json (the palette).
    #[arg(long)]
    model: PathBuf,
    /// PNG or JPEG images.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Print JSON on stdout: {"images":[{"path":..,"tokens":[..]}]}.
    #[arg(long)]
    json: bool,
}

pub fn run(a: EncodeArgs) -> Result<()> {
    let proc = super::open_processor(&a.model)?;
    let (h, w) = proc.hw();
    let encoded = super::encode_images(&a.images, &proc)?;
    if a.json {
        let items: Vec<_> = a.images.iter().zip(&encoded).map(|(p, t)| json!({"path": p, "tokens": t})).collect();
        return super::print_json(&json!({ "images": items }));
    }
    for (p, toks) in a.images.iter().zip(&encoded) {
        println!("{} ({}x{}, {} tokens)", p.display(), h, w, toks.len());
        for row in toks.chunks(w) {
            println!("  {}", row.iter().map(|t| format!("{t:>3}")).collect::<Vec<_>>().join(" "));
        }
    }
    Ok(())
}
