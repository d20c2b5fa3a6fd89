//! What a training run optimises. The loop ([`super::run_task`]) is one for every task: the
//! schedule, micro-batches, clipping, AdamW over all parameter groups, evaluations,
//! checkpoints (atomic, rotated, resumable bit for bit), best/, metrics and plots. A task
//! says what a micro-batch's loss is, how a model is evaluated, and what best/ holds.
//! Pretraining ([`super::pretrain::Pretrain`]) and fine-tuning a classifier
//! (`crate::finetune::Classify`) are the two.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::checkpoint::TrainState;
use super::config::TrainConfig;
use crate::error::Result;
use crate::model::ImageGpt;
use crate::model::train_graph::TrainActs;

/// The loss of one micro-batch: the total (what is minimised; a non-finite one stops the
/// run) and the named parts logged in metrics.jsonl.
pub struct Losses {
    pub loss: f64,
    pub fields: Map<String, Value>,
}

/// One evaluation: the value compared across evaluations (named `metric`) and the fields
/// logged in metrics.jsonl.
pub struct Evaluation {
    pub value: f64,
    pub fields: Map<String, Value>,
}

/// The data a task trains on, as the loop needs it.
pub struct DataInfo {
    pub train_images: usize,
    pub val_images: usize,
    /// Tokens per image.
    pub seq_len: usize,
    /// The palette copied into every model folder written.
    pub palette: PathBuf,
}

impl DataInfo {
    /// The loop's view of a task's training and validation token files and palette.
    pub fn of(train: &crate::data::tokens::TokenFile, val: &crate::data::tokens::TokenFile, palette: &Path) -> Self {
        DataInfo { train_images: train.count, val_images: val.count, seq_len: train.seq_len(), palette: palette.into() }
    }
}

pub trait Task {
    /// The evaluation's name in logs and metrics (`val_loss`, `val_acc`).
    fn metric(&self) -> &'static str;
    /// Whether a larger evaluation value is better (accuracy) or a smaller one (loss).
    fn higher_is_better(&self) -> bool;
    fn data(&self) -> DataInfo;
    /// The model a fresh run starts from.
    fn initial_model(&self, cfg: &TrainConfig) -> Result<ImageGpt>;
    /// Refuses a model (fresh, or a checkpoint's) that does not fit the task's data.
    fn check_model(&self, model: &ImageGpt, cfg: &TrainConfig) -> Result<()>;
    /// The parameter group trained beside the model's (name, shape), zero-initialised.
    fn head(&self, _model: &ImageGpt) -> Option<(String, Vec<usize>)> {
        None
    }
    /// One micro-batch: adds its gradients to `grads` (the model's layout) and `dhead`.
    #[allow(clippy::too_many_arguments)]
    fn micro_batch(
        &self,
        model: &ImageGpt,
        head: &[f32],
        acts: &mut TrainActs,
        grads: &mut Vec<f32>,
        dhead: &mut [f32],
        state: &mut TrainState,
        cfg: &TrainConfig,
    ) -> Result<Losses>;
    fn evaluate(&self, model: &ImageGpt, head: &[f32], acts: &mut TrainActs, cfg: &TrainConfig) -> Result<Evaluation>;
    /// Writes what best/ holds into the (empty) folder `dir` (with `state` as its state.json);
    /// `checkpoint` writes a resumable checkpoint there (what pretraining keeps).
    fn write_best(
        &self,
        dir: &Path,
        model: &ImageGpt,
        head: &[f32],
        state: &TrainState,
        checkpoint: &dyn Fn(&Path) -> Result<()>,
    ) -> Result<()>;
    /// The run's charts from metrics.jsonl.
    fn plot(&self, run: &Path, tokens_per_step: f64) -> Result<()>;
}
