//! Training ImageGPT: the nanoGPT-shaped loop. In order, every optimizer step: set the
//! learning rate (warmup + cosine), run `grad_accum` micro-batches (forward, loss, backward),
//! clip the global gradient norm, AdamW; every `eval_every` steps: validation NLL, the best
//! and a step checkpoint, metrics.jsonl and loss.png.
//!
//! ```text
//! igpt train --data data/emoji32 --out runs/tiny --preset tiny --steps 2000
//! ```

pub mod batches;
pub mod checkpoint;
pub mod config;
pub mod optim;
pub mod pretrain;
mod run_loop;
pub mod task;

pub use run_loop::run_task;

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::backend::dropout::DropoutSites;
use crate::config::ImageGptConfig;
use crate::error::{Error, Result};
use crate::model::ModelKind;
pub use config::TrainConfig;

/// One logged training step.
#[derive(Clone, Debug, Serialize)]
pub struct StepLog {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tok_s: f64,
    pub elapsed_s: f64,
}

/// One evaluation.
#[derive(Clone, Debug, Serialize)]
pub struct EvalLog {
    pub step: u64,
    /// `val_loss` (nats per token) or `val_acc` (a fraction).
    pub metric: String,
    pub value: f64,
    pub best: bool,
}

/// What the caller is told while training runs (the binary draws it; the library prints nothing).
pub trait TrainObserver {
    fn start(&mut self, _info: &RunInfo) {}
    fn step(&mut self, _log: &StepLog, _total: u64) {}
    fn log(&mut self, _log: &StepLog) {}
    fn eval(&mut self, _log: &EvalLog) {}
    /// Something the run did on its own that the user should hear of (a repaired best/).
    fn note(&mut self, _msg: &str) {}
}

/// A silent observer.
pub struct NoObserver;
impl TrainObserver for NoObserver {}

#[derive(Clone, Debug, Serialize)]
pub struct RunInfo {
    pub n_params: usize,
    pub decayed: usize,
    pub not_decayed: usize,
    pub total_steps: u64,
    pub start_step: u64,
    pub train_images: usize,
    pub val_images: usize,
    pub model: ImageGptConfig,
}

/// The outcome of a run.
#[derive(Clone, Debug, Serialize)]
pub struct TrainSummary {
    pub steps: u64,
    pub final_train_loss: f64,
    pub final_val_loss: Option<f64>,
    pub best_val_loss: Option<f64>,
    pub best_dir: PathBuf,
    pub seconds: f64,
    pub losses: Vec<(u64, f64)>,
    pub evals: Vec<(u64, f64)>,
    /// The step of the model in best/.
    pub best_step: Option<u64>,
    /// Whether --patience ended the run before its last step.
    pub stopped_early: bool,
}

impl TrainSummary {
    fn empty(best_dir: PathBuf) -> Self {
        TrainSummary {
            steps: 0,
            final_train_loss: f64::NAN,
            final_val_loss: None,
            best_val_loss: None,
            best_dir,
            seconds: 0.0,
            losses: Vec::new(),
            evals: Vec::new(),
            best_step: None,
            stopped_early: false,
        }
    }
}

pub use pretrain::resolve_model;

/// This machine's memory in bytes (Linux: MemTotal of /proc/meminfo).
fn memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = text.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Refuses a model whose weights, gradients and AdamW moments (16 bytes a parameter) would
/// not fit this machine's memory, before anything is allocated.
pub(crate) fn check_memory(m: &ImageGptConfig) -> Result<()> {
    let params = crate::model::ParamLayout::new(m, ModelKind::CausalLm).total as u64;
    let need = params.saturating_mul(16);
    match memory_bytes() {
        Some(have) if need > have => Err(Error::Invalid(format!(
            "a model of {params} parameters needs {:.1} GiB for weights, gradients and AdamW, and this machine has {:.1} GiB; lower --n-layer or --n-embd",
            need as f64 / (1u64 << 30) as f64,
            have as f64 / (1u64 << 30) as f64
        ))),
        _ => Ok(()),
    }
}

/// The run's dropout probabilities over the model's (flags or train.json first); linear
/// attention has no probabilities to drop, so a non-zero `attn_pdrop` is refused there.
pub(crate) fn apply_dropout(m: &mut ImageGptConfig, cfg: &TrainConfig) -> Result<()> {
    m.embd_pdrop = cfg.embd_pdrop.unwrap_or(m.embd_pdrop);
    m.attn_pdrop = cfg.attn_pdrop.unwrap_or(m.attn_pdrop);
    m.resid_pdrop = cfg.resid_pdrop.unwrap_or(m.resid_pdrop);
    if m.attention == crate::config::AttentionKind::Linear && m.attn_pdrop > 0.0 {
        return Err(Error::Invalid(format!(
            "attn_pdrop {}: linear attention has no attention probabilities to drop; give --attn-pdrop 0 (embeddings and residual branches still take --embd-pdrop / --resid-pdrop)",
            m.attn_pdrop
        )));
    }
    m.validate("train config")
}

/// The dropout masks of micro-batch `micro` of optimizer step `step`: a function of the seed
/// and the position in the run only, so a resumed run draws the same ones.
pub(crate) fn dropout_of(m: &ImageGptConfig, seed: u64, step: u64, micro: usize) -> DropoutSites {
    let key = seed.rotate_left(29)
        ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ (micro as u64).wrapping_mul(0xd1b5_4a32_d192_ed03);
    DropoutSites::new(key, m.embd_pdrop, m.attn_pdrop, m.resid_pdrop)
}

pub(crate) fn append_line(path: &Path, v: &serde_json::Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
    writeln!(f, "{v}").map_err(|e| Error::io(path, e))
}

/// Keeps only the metrics lines up to `step` (after a resume, later lines are recomputed).
pub(crate) fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .collect();
    crate::formats::write_atomic(path, (kept.join("\n") + if kept.is_empty() { "" } else { "\n" }).as_bytes())
}

/// (step, loss) points.
pub type LossCurve = Vec<(u64, f64)>;

/// Reads (train losses, val losses) back from metrics.jsonl.
pub fn read_metrics(path: &Path) -> (LossCurve, LossCurve) {
    let (mut tr, mut va) = (Vec::new(), Vec::new());
    for l in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else { continue };
        let step = v["step"].as_u64().unwrap_or(0);
        match v["kind"].as_str() {
            Some("train") => tr.push((step, v["loss"].as_f64().unwrap_or(f64::NAN))),
            Some("eval") => va.push((step, v["val_loss"].as_f64().unwrap_or(f64::NAN))),
            _ => {}
        }
    }
    (tr, va)
}

/// RUN/loss.png and loss.svg: the train loss per step (raw, faint, and smoothed) and the val
/// loss at each evaluation, in bits per token, against steps (bottom) and tokens seen (top).
pub fn plot_losses(run: &Path, tokens_per_step: f64) -> Result<()> {
    use crate::plot::{Chart, Series, Style, smooth};
    let (tr, va) = read_metrics(&run.join("metrics.jsonl"));
    let bits =
        |v: Vec<(u64, f64)>| v.into_iter().map(|(s, l)| (s as f64, l / std::f64::consts::LN_2)).collect::<Vec<_>>();
    let (tr, va) = (bits(tr), bits(va));
    let chart = Chart {
        title: "Training and validation loss".into(),
        x_label: "step".into(),
        y_label: "loss (bits/token)".into(),
        series: vec![
            Series::new("train", tr.clone(), [40, 90, 200], Style::Faint),
            Series::new("train (smoothed, EMA 0.9)", smooth(&tr, 0.9), [40, 90, 200], Style::Line),
            Series::new("validation", va, [230, 120, 20], Style::Markers),
        ],
        top_axis: Some(("tokens seen".into(), tokens_per_step)),
        ..Default::default()
    };
    chart.save(&run.join("loss"), 760, 440)
}

/// Runs (or, with `resume`, continues) pretraining.
pub fn run(cfg: &TrainConfig, resume: bool, obs: &mut dyn TrainObserver) -> Result<TrainSummary> {
    cfg.validate()?;
    let task = pretrain::Pretrain::open(cfg)?;
    run_task(cfg, resume, &task, obs)
}
