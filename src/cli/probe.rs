use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use igpt::probe::{ProbeOptions, ProbeProgress, run_probe};

#[derive(Args)]
pub struct ProbeArgs {
    #[command(flatten)]
    device: super::DeviceArgs,
    /// Model directory.
    #[arg(long)]
    model: PathBuf,
    /// Prepared, labelled data folder (train/val[/test].tokens).
    #[arg(long)]
    data: PathBuf,
    /// `all`, or a comma-separated list of layers (0 = embeddings, n_layer = last block).
    #[arg(long, default_value = "all")]
    layers: String,
    /// Report folder: probe.json, probe.png, probe.svg.
    #[arg(long)]
    out: PathBuf,
    /// Also write each probed feature set to this folder (layer_N.safetensors,
    /// pixels.safetensors, concat.safetensors: float32 train/val/test, int64 *_labels; what
    /// ../shared/bench/sklearn_probe.py reads).
    #[arg(long)]
    save_features: Option<PathBuf>,
    /// L-BFGS iterations per fit (at most).
    #[arg(long, default_value_t = 300)]
    max_iter: usize,
    /// A fit stops when the largest component of its objective's gradient is at or below
    /// this (scikit-learn's `tol` for lbfgs; smaller: closer to the optimum, slower).
    #[arg(long, default_value_t = igpt::logreg::GTOL)]
    tol: f32,
    /// Also probe the concatenated features of this many consecutive layers around the
    /// best one (the paper's ImageNet result concatenates 5); 0 = off.
    #[arg(long, default_value_t = 0)]
    concat: usize,
    /// Only the first N images of each split, stratified by label (a quick look).
    #[arg(long)]
    limit: Option<usize>,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Print probe.json on stdout.
    #[arg(long)]
    json: bool,
}

pub struct Bar(Option<indicatif::ProgressBar>);

impl Bar {
    pub fn new() -> Self {
        Bar(None)
    }
}

impl ProbeProgress for Bar {
    fn stage(&mut self, name: &str, total: u64) {
        if let Some(b) = self.0.take() {
            b.finish_and_clear();
        }
        let style = indicatif::ProgressStyle::with_template(&format!(
            "{name:>9} {{bar:30}} {{pos}}/{{len}} [{{elapsed_precise}}<{{eta_precise}}, {{per_sec}}]"
        ))
        .expect("valid template");
        self.0 = Some(indicatif::ProgressBar::new(total).with_style(style));
    }
    fn inc(&mut self, n: u64) {
        if let Some(b) = &self.0 {
            b.inc(n);
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            b.finish_and_clear();
        }
    }
}

pub fn parse_layers(s: &str) -> Result<Option<Vec<usize>>> {
    if s == "all" {
        return Ok(None);
    }
    Ok(Some(
        s.split(',')
            .map(|x| x.trim().parse::<usize>().with_context(|| format!("--layers: `{x}` is not a layer number")))
            .collect::<Result<_>>()?,
    ))
}

pub fn run(a: ProbeArgs) -> Result<()> {
    let engine = a.device.engine("probe")?;
    if a.limit == Some(0) {
        anyhow::bail!("--limit 0: give at least 1 image");
    }
    if a.max_iter == 0 {
        anyhow::bail!("--max-iter 0: give at least 1 L-BFGS iteration (default 300)");
    }
    if !(a.tol.is_finite() && a.tol > 0.0) {
        anyhow::bail!("--tol {}: give a positive gradient tolerance (default {:e})", a.tol, igpt::logreg::GTOL);
    }
    super::init_threads(a.threads);
    let model = super::open_model(&a.model)?;
    let opts = ProbeOptions {
        layers: parse_layers(&a.layers)?,
        stop: igpt::logreg::Stop { max_iter: a.max_iter, tol: a.tol },
        concat: a.concat,
        save_features: a.save_features.clone(),
        limit: a.limit,
    };
    let mut bar = Bar::new();
    let r = with_model!(engine, model, probe_on(&a.data, &opts, &a.out, &mut bar))
        .with_context(|| format!("probing {} on {}", a.model.display(), a.data.display()))?;
    drop(bar);
    if a.json {
        return super::print_json(&serde_json::to_value(&r)?);
    }
    let pct = |v: Option<f64>| v.map_or("   -  ".into(), |x| format!("{:6.2}%", 100.0 * x));
    println!("layer   lambda    train      val     test");
    for p in &r.layers {
        let mark = if p.layer == Some(r.best_layer) { " <- best (val)" } else { "" };
        println!(
            "{:>5} {:>8.0e}  {}  {}  {}{mark}",
            p.layer.unwrap_or(0),
            p.lambda,
            pct(Some(p.train_acc)),
            pct(Some(p.val_acc)),
            pct(p.test_acc)
        );
    }
    let b = &r.baseline;
    println!(
        "pixels {:>7.0e}  {}  {}  {}  (raw-pixel logistic regression)",
        b.lambda,
        pct(Some(b.train_acc)),
        pct(Some(b.val_acc)),
        pct(b.test_acc)
    );
    if let Some(cc) = &r.concat {
        let p = &cc.result;
        println!(
            "concat {:>7.0e}  {}  {}  {}  (layers {:?} side by side)",
            p.lambda,
            pct(Some(p.train_acc)),
            pct(Some(p.val_acc)),
            pct(p.test_acc),
            cc.layers
        );
    }
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    println!("features {:.1} s, fits {:.1} s -> {}/probe.json, probe.png", r.feature_s, r.fit_s, a.out.display());
    Ok(())
}

/// The probe of `model`, on its engine (the features; the fits run on the CPU).
fn probe_on<B: igpt::backend::Backend>(
    model: igpt::model::ImageGpt<B>,
    data: &std::path::Path,
    opts: &ProbeOptions,
    out: &std::path::Path,
    bar: &mut Bar,
) -> igpt::Result<igpt::probe::ProbeReport> {
    run_probe(&model, data, opts, out, bar)
}
