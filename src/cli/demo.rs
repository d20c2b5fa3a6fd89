use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use igpt::demo::{DemoConfig, DemoObserver, run_demo};

use super::train::Console;

#[derive(Args)]
pub struct DemoArgs {
    /// Output folder (report.html and everything it shows).
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    /// Time budget in minutes (about 15 by default on 2 CPU cores).
    #[arg(long, default_value_t = 15.0)]
    minutes: f64,
    /// Data set (see `igpt prepare --help`).
    #[arg(long, default_value = "emoji32")]
    data: String,
    /// Use only this many training images (quick checks).
    #[arg(long)]
    max_images: Option<usize>,
    /// Image side after resizing (16: a 2-core budget trains on ~5x more images than at 32).
    #[arg(long, default_value_t = 16)]
    size: usize,
    /// Palette size.
    #[arg(long, default_value_t = 512)]
    colors: usize,
    /// Transformer blocks of the demo model.
    #[arg(long, default_value_t = 4)]
    n_layer: usize,
    /// Width of the demo model.
    #[arg(long, default_value_t = 128)]
    n_embd: usize,
    /// Attention heads of the demo model.
    #[arg(long, default_value_t = 4)]
    n_head: usize,
    /// Seed of the data split, the model and every sample.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Print demo.json's summary on stdout.
    #[arg(long)]
    json: bool,
}

impl DemoObserver for Console {
    fn stage(&mut self, name: &str, detail: &str) {
        eprintln!("== {name}: {detail}");
    }
}

pub fn run(a: DemoArgs) -> Result<()> {
    super::init_threads(a.threads);
    let cfg = DemoConfig {
        out: a.out.clone(),
        minutes: a.minutes,
        data: a.data.clone(),
        max_images: a.max_images,
        size: a.size,
        colors: a.colors,
        n_layer: a.n_layer,
        n_embd: a.n_embd,
        n_head: a.n_head,
        seed: a.seed,
    };
    let mut console = Console::new(false);
    let s = run_demo(&cfg, &mut console).with_context(|| format!("running the demo into {}", a.out.display()))?;
    if a.json {
        return super::print_json(&serde_json::to_value(&s)?);
    }
    let b = &s.probe.baseline;
    println!(
        "train: {} steps, best val {:.3} bits/token, test {:.3} bits/token",
        s.train.steps,
        s.train.best_val_loss.unwrap_or(f64::NAN) / std::f64::consts::LN_2,
        s.test_nll_bits
    );
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{:.1}%", 100.0 * x));
    println!(
        "probe: best layer {} (chosen on val) val {} test {} (raw pixels val {} test {}); fine-tuned test accuracy {}",
        s.probe.best_layer,
        pct(Some(s.probe.best_val_acc)),
        pct(s.probe.best_test_acc),
        pct(Some(b.val_acc)),
        pct(b.test_acc),
        pct(s.finetune.test_acc)
    );
    println!("report: {}", s.report.display());
    Ok(())
}
