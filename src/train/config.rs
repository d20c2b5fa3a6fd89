//! `TrainConfig`: every hyper-parameter of a run, written to RUN/train.json. The model
//! config is resolved from the preset (or explicit shape) plus the prepared data (image
//! size -> n_positions, palette -> vocab_size).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::optim::AdamWConfig;
use crate::config::{AttentionKind, PositionEmbedding};
use crate::model::train_graph::Objective;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Prepared data folder (train.tokens, val.tokens, preprocessor_config.json).
    pub data: PathBuf,
    /// Run folder.
    pub out: PathBuf,
    /// tiny | s | m | l (ignored for the shape when n_layer/n_embd/n_head are all set).
    pub preset: String,
    pub n_layer: Option<usize>,
    pub n_embd: Option<usize>,
    pub n_head: Option<usize>,
    /// Start from this model directory instead of random weights.
    pub init: Option<PathBuf>,
    /// The architecture options (`architectures.md`); the image width comes from the data.
    pub position_embedding: PositionEmbedding,
    pub rope_theta: f64,
    pub attention: AttentionKind,
    pub local_rows: i64,
    pub local_cols: i64,
    pub objective: Objective,
    pub mask_prob: f64,
    /// Dropout probabilities in training (transformers' sites); None keeps the model's
    /// config (presets: 0, HF checkpoints: usually 0.1).
    pub embd_pdrop: Option<f32>,
    pub attn_pdrop: Option<f32>,
    pub resid_pdrop: Option<f32>,
    pub batch: usize,
    pub grad_accum: usize,
    /// Optimizer steps (overrides `epochs`).
    pub steps: Option<u64>,
    pub epochs: Option<f64>,
    /// A time budget instead of steps: the schedule's length comes from the first steps' speed.
    pub minutes: Option<f64>,
    pub lr: f64,
    pub warmup: u64,
    pub min_lr: f64,
    pub adamw: AdamWConfig,
    /// Global gradient-norm clip (0 = off).
    pub clip: f64,
    pub eval_every: u64,
    pub eval_batches: usize,
    pub log_every: u64,
    pub hflip: bool,
    pub seed: u64,
    pub threads: usize,
    /// Checkpoints kept besides best/.
    pub keep: usize,
    /// Stop (as if interrupted) after this step, without changing the schedule.
    pub stop_after: Option<u64>,
    /// Stop early after this many evaluations without a better one (fine-tuning).
    pub patience: Option<usize>,
}

/// Checks for the numeric values of a run and a fine-tuning, naming the flag.
pub(crate) fn check(flag: &str, v: f64, ok: bool, want: &str) -> crate::error::Result<()> {
    if v.is_finite() && ok { Ok(()) } else { Err(crate::error::Error::Invalid(format!("{flag} {v}: give {want}"))) }
}

impl TrainConfig {
    /// Refuses values the trainer cannot run, naming the flag (or the train.json field).
    pub fn validate(&self) -> crate::error::Result<()> {
        let a = &self.adamw;
        check("--lr", self.lr, self.lr > 0.0, "a finite learning rate > 0, e.g. 3e-3")?;
        check("--min-lr", self.min_lr, self.min_lr >= 0.0 && self.min_lr <= self.lr, "a value from 0 to --lr")?;
        check("--clip", self.clip, self.clip >= 0.0, "a gradient-norm limit >= 0 (0 = off)")?;
        check("--mask-prob", self.mask_prob, self.mask_prob > 0.0 && self.mask_prob < 1.0, "a fraction in (0, 1)")?;
        check("--weight-decay", a.weight_decay, a.weight_decay >= 0.0, "a value >= 0")?;
        for (name, b) in [("adamw.beta1", a.beta1), ("adamw.beta2", a.beta2)] {
            check(name, b, (0.0..1.0).contains(&b), "a value in [0, 1)")?;
        }
        check("adamw.eps", a.eps, a.eps > 0.0, "a value > 0")?;
        for (flag, p) in
            [("--embd-pdrop", self.embd_pdrop), ("--attn-pdrop", self.attn_pdrop), ("--resid-pdrop", self.resid_pdrop)]
        {
            if let Some(p) = p {
                check(flag, p as f64, (0.0..1.0).contains(&p), "a dropout probability in [0, 1)")?;
            }
        }
        if let Some(m) = self.minutes {
            check("--minutes", m, m > 0.0 && m <= 1e6, "a time budget in minutes > 0")?;
        }
        if let Some(e) = self.epochs {
            check("--epochs", e, e > 0.0 && e <= 1e6, "a number of epochs > 0")?;
        }
        let counts = [
            ("--steps", self.steps.unwrap_or(1) as usize),
            ("--batch", self.batch),
            ("--grad-accum", self.grad_accum),
            ("--eval-every", self.eval_every as usize),
            ("--eval-batches", self.eval_batches),
            ("--log-every", self.log_every as usize),
            ("--keep", self.keep),
        ];
        for (flag, n) in counts {
            if n == 0 {
                return Err(crate::error::Error::Invalid(format!("{flag} 0: give at least 1")));
            }
        }
        if self.batch > 1 << 16 || self.grad_accum > 1 << 16 {
            return Err(crate::error::Error::Invalid("--batch and --grad-accum: at most 65536 each".into()));
        }
        Ok(())
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            data: PathBuf::from("data"),
            out: PathBuf::from("runs/train"),
            preset: "tiny".into(),
            n_layer: None,
            n_embd: None,
            n_head: None,
            init: None,
            position_embedding: PositionEmbedding::Learned1d,
            rope_theta: 100.0,
            attention: AttentionKind::Dense,
            local_rows: 8,
            local_cols: 8,
            objective: Objective::Gpt,
            mask_prob: 0.15,
            embd_pdrop: None,
            attn_pdrop: None,
            resid_pdrop: None,
            batch: 8,
            grad_accum: 1,
            steps: None,
            epochs: None,
            minutes: None,
            lr: 3e-3,
            warmup: 100,
            min_lr: 3e-4,
            adamw: AdamWConfig::default(),
            clip: 1.0,
            eval_every: 200,
            eval_batches: 8,
            log_every: 10,
            hflip: false,
            seed: 0,
            threads: 0,
            keep: 2,
            stop_after: None,
            patience: None,
        }
    }
}
