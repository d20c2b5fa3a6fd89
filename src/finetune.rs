//! Fine-tuning a pretrained model into a classifier (paper, section 3.4): the loss is the
//! generative loss plus the cross-entropy of a linear head (`score`, zero-initialised) over
//! the mean-pooled final features; early stopping on validation accuracy. The result is
//! saved as HF's `ImageGPTForImageClassification` (transformer + `score.weight`). It runs on
//! the pretraining loop ([`crate::train::run_task`]): the head is a second parameter group
//! of the same AdamW, checkpoints are resumable, rotated and atomic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::json;

use crate::data::tokens::TokenFile;
use crate::error::{Error, Result};
use crate::model::train_graph::TrainActs;
use crate::model::{ImageGpt, Logits, ModelKind, Workspace, load_model_as, save_model};
use crate::train::batches;
use crate::train::checkpoint::TrainState;
use crate::train::task::{DataInfo, Evaluation, Losses, Task};
use crate::train::{TrainConfig, TrainObserver};

#[derive(Clone, Debug, Serialize)]
pub struct FinetuneConfig {
    pub data: PathBuf,
    pub model: PathBuf,
    pub out: PathBuf,
    pub steps: u64,
    pub batch: usize,
    pub lr: f64,
    pub warmup: u64,
    pub min_lr: f64,
    pub clip: f64,
    /// Weight of the generative loss (paper: 1; 0 = classification loss only).
    pub gen_weight: f64,
    pub eval_every: u64,
    /// Stop after this many evaluations without a better val accuracy.
    pub patience: usize,
    pub hflip: bool,
    pub seed: u64,
    /// Step checkpoints kept besides best/.
    pub keep: usize,
    /// Stop (as if interrupted) after this step; `--resume` continues.
    pub stop_after: Option<u64>,
    /// Only the first N images of each split (stratified by label).
    pub limit: Option<usize>,
    /// Dropout (transformers' sites); None keeps the pretrained config's.
    pub embd_pdrop: Option<f32>,
    pub attn_pdrop: Option<f32>,
    pub resid_pdrop: Option<f32>,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig {
            data: "data".into(),
            model: "model".into(),
            out: "runs/finetune".into(),
            steps: 500,
            batch: 8,
            lr: 1e-3,
            warmup: 20,
            min_lr: 1e-4,
            clip: 1.0,
            gen_weight: 1.0,
            eval_every: 50,
            patience: 5,
            hflip: false,
            seed: 0,
            keep: 2,
            stop_after: None,
            limit: None,
            embd_pdrop: None,
            attn_pdrop: None,
            resid_pdrop: None,
        }
    }
}

impl FinetuneConfig {
    /// Refuses values that cannot work, naming the flag.
    pub fn validate(&self) -> Result<()> {
        use crate::train::config::check;
        check("--lr", self.lr, self.lr > 0.0, "a finite learning rate > 0, e.g. 1e-3")?;
        check("--min-lr", self.min_lr, self.min_lr >= 0.0 && self.min_lr <= self.lr, "a value from 0 to --lr")?;
        check("--clip", self.clip, self.clip >= 0.0, "a gradient-norm limit >= 0 (0 = off)")?;
        check("--gen-weight", self.gen_weight, self.gen_weight >= 0.0, "a weight >= 0 (paper: 1)")?;
        if self.limit == Some(0) {
            return Err(Error::Invalid("--limit 0: give at least 1 image".into()));
        }
        for (flag, n) in [
            ("--steps", self.steps as usize),
            ("--batch", self.batch),
            ("--eval-every", self.eval_every as usize),
            ("--patience", self.patience),
        ] {
            if n == 0 {
                return Err(Error::Invalid(format!("{flag} 0: give at least 1")));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct FinetuneSummary {
    pub steps: u64,
    pub best_step: u64,
    pub best_val_acc: f64,
    pub test_acc: Option<f64>,
    pub seconds: f64,
    pub stopped_early: bool,
    pub best_dir: PathBuf,
}

/// Accuracy of a classifier on a token file (HF semantics: tokens without SOS, mean pool).
pub fn accuracy(model: &ImageGpt, data: &TokenFile, batch: usize) -> Result<f64> {
    let labels = data.labels().ok_or_else(|| Error::Invalid(format!("{}: no labels", data.path.display())))?;
    let t = data.seq_len();
    let mut ws = Workspace::new();
    let mut tokens = vec![0u32; batch * t];
    let mut correct = 0;
    for start in (0..data.count).step_by(batch.max(1)) {
        let b = batch.min(data.count - start);
        for i in 0..b {
            data.image_into(start + i, &mut tokens[i * t..(i + 1) * t]);
        }
        model.forward(&mut ws, &tokens[..b * t], b, t, Logits::None, false)?;
        let logits = model.classify(&model.pooled(&ws))?;
        let k = logits.len() / b;
        correct += logits
            .chunks_exact(k)
            .zip(&labels[start..start + b])
            .filter(|(r, l)| crate::backend::loss::argmax(r) as u16 == **l)
            .count();
    }
    Ok(correct as f64 / data.count.max(1) as f64)
}

/// The classifier made of `model`'s transformer and a `score` head (num_labels, C).
fn as_classifier(model: &ImageGpt, score: &[f32], classes: &[String]) -> Result<ImageGpt> {
    let mut cfg = model.config.clone();
    let id2label: BTreeMap<String, String> =
        classes.iter().enumerate().map(|(i, c)| (i.to_string(), c.clone())).collect();
    cfg.label2id = Some(classes.iter().enumerate().map(|(i, c)| (c.clone(), i)).collect());
    cfg.id2label = Some(id2label);
    let mut cls = ImageGpt::zeros(cfg, ModelKind::Classifier)?;
    for e in cls.layout.entries.clone() {
        let src = if e.name == "score.weight" {
            score
        } else {
            &model.params[model.layout.find(&e.name).expect("same transformer").range.clone()]
        };
        cls.params[e.range.clone()].copy_from_slice(src);
    }
    Ok(cls)
}

/// Fine-tuning as a training task: the pretraining loop with a second parameter group (the
/// head) in the same AdamW.
pub struct Classify {
    train: TokenFile,
    val: TokenFile,
    labels: Vec<u16>,
    classes: Vec<String>,
    gen_weight: f64,
    palette: PathBuf,
    order: std::cell::RefCell<Vec<usize>>,
}

impl Classify {
    /// Opens a labelled prepared folder for fine-tuning.
    /// With `limit`, only the first N images of each split (stratified by label).
    pub fn open(data: &Path, gen_weight: f64, limit: Option<usize>) -> Result<Self> {
        let open = |f: &str| TokenFile::open(&data.join(f)).map(|t| t.limit(limit.unwrap_or(usize::MAX)));
        let (train, val) = (open("train.tokens")?, open("val.tokens")?);
        let test = data.join("test.tokens").exists().then(|| open("test.tokens")).transpose()?;
        let labels = train.labels().ok_or_else(|| {
            Error::Invalid(format!("{}: no labels: fine-tuning needs a labelled data set", train.path.display()))
        })?;
        let names: Vec<String> =
            std::fs::read_to_string(data.join("labels.txt")).unwrap_or_default().lines().map(str::to_string).collect();
        let splits: Vec<&TokenFile> = [Some(&train), Some(&val), test.as_ref()].into_iter().flatten().collect();
        let k = crate::data::tokens::class_count(data, &splits)?;
        let classes = (0..k).map(|i| names.get(i).cloned().unwrap_or_else(|| format!("LABEL_{i}"))).collect();
        let palette = data.join("preprocessor_config.json");
        Ok(Classify { train, val, labels, classes, gen_weight, palette, order: Default::default() })
    }
}

impl Task for Classify {
    fn metric(&self) -> &'static str {
        "val_acc"
    }
    fn higher_is_better(&self) -> bool {
        true
    }
    fn data(&self) -> DataInfo {
        DataInfo::of(&self.train, &self.val, &self.palette)
    }
    fn initial_model(&self, cfg: &TrainConfig) -> Result<ImageGpt> {
        let init = cfg.init.as_ref().ok_or_else(|| Error::Invalid("fine-tuning needs --model".into()))?;
        load_model_as(init, Some(ModelKind::CausalLm))
    }
    fn check_model(&self, model: &ImageGpt, cfg: &TrainConfig) -> Result<()> {
        if model.config.n_positions != self.train.seq_len() || model.config.n_colors() != self.train.colors {
            return Err(Error::Invalid(format!(
                "{}: model ({} colours, {} positions) does not match the data ({} colours, {} pixels)",
                cfg.init.as_deref().unwrap_or(Path::new("model")).display(),
                model.config.n_colors(),
                model.config.n_positions,
                self.train.colors,
                self.train.seq_len()
            )));
        }
        Ok(())
    }
    fn head(&self, model: &ImageGpt) -> Option<(String, Vec<usize>)> {
        Some(("score.weight".into(), vec![self.classes.len(), model.config.n_embd]))
    }
    fn micro_batch(
        &self,
        model: &ImageGpt,
        head: &[f32],
        acts: &mut TrainActs,
        grads: &mut Vec<f32>,
        dhead: &mut [f32],
        state: &mut TrainState,
        cfg: &TrainConfig,
    ) -> Result<Losses> {
        let t = self.train.seq_len();
        let mut tokens = Vec::new();
        let picked = batches::next_batch(
            &self.train,
            &mut state.cursor,
            &mut self.order.borrow_mut(),
            cfg.seed,
            cfg.batch,
            &mut tokens,
        );
        let labels: Vec<u16> = picked.iter().map(|&i| self.labels[i]).collect();
        if cfg.hflip {
            batches::hflip(&mut tokens, self.train.width, self.train.height, &mut state.rng);
        }
        // BERT models: the generative loss predicts masked pixels (the run's mask rate)
        let masked = (!model.config.is_causal() && self.gen_weight > 0.0)
            .then(|| batches::bert_mask(cfg.batch * t, cfg.mask_prob, &mut state.rng));
        let (g, l, correct) = model.forward_backward_classify(
            acts,
            grads,
            head,
            dhead,
            &tokens,
            &labels,
            cfg.batch,
            t,
            (self.gen_weight, masked.as_deref()),
        )?;
        let fields = json!({"gen_loss": g, "clf_loss": l, "train_acc": correct as f64 / cfg.batch as f64});
        Ok(Losses { loss: self.gen_weight * g + l, fields: fields.as_object().cloned().unwrap_or_default() })
    }
    fn evaluate(&self, model: &ImageGpt, head: &[f32], _: &mut TrainActs, _: &TrainConfig) -> Result<Evaluation> {
        let acc = accuracy(&as_classifier(model, head, &self.classes)?, &self.val, 32)?;
        Ok(Evaluation { value: acc, fields: json!({"val_acc": acc}).as_object().cloned().unwrap_or_default() })
    }
    /// best/ is the classifier (HF `ImageGPTForImageClassification`), its palette and state.json.
    fn write_best(
        &self,
        dir: &Path,
        m: &ImageGpt,
        head: &[f32],
        state: &TrainState,
        _: &dyn Fn(&Path) -> Result<()>,
    ) -> Result<()> {
        write_classifier(dir, &as_classifier(m, head, &self.classes)?, &self.palette)?;
        let json = serde_json::to_string_pretty(state).map_err(|e| Error::Invalid(e.to_string()))?;
        crate::formats::write_atomic(&dir.join("state.json"), json.as_bytes())
    }
    fn plot(&self, run: &Path, _: f64) -> Result<()> {
        plot_finetune(run)
    }
}

/// A classifier's files in `dir`: the HF model and the palette.
fn write_classifier(dir: &Path, cls: &ImageGpt, palette: &Path) -> Result<()> {
    save_model(cls, dir)?;
    std::fs::copy(palette, dir.join("preprocessor_config.json")).map_err(|e| Error::io(palette, e))?;
    Ok(())
}

/// RUN/loss.png (the training loss: generative + classification) and RUN/accuracy.png (the
/// validation accuracy at each evaluation), with svg copies.
fn plot_finetune(run: &Path) -> Result<()> {
    use crate::plot::{Chart, Series, Style, smooth};
    let (mut loss, mut acc) = (Vec::new(), Vec::new());
    for l in std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default().lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else { continue };
        let step = v["step"].as_f64().unwrap_or(0.0);
        match v["kind"].as_str() {
            Some("train") => loss.push((step, v["loss"].as_f64().unwrap_or(f64::NAN))),
            Some("eval") => acc.push((step, 100.0 * v["val_acc"].as_f64().unwrap_or(f64::NAN))),
            _ => {}
        }
    }
    let chart = |title: &str, y: &str, series| Chart {
        title: title.into(),
        x_label: "step".into(),
        y_label: y.into(),
        series,
        ..Default::default()
    };
    chart(
        "Fine-tuning loss",
        "loss (nats)",
        vec![
            Series::new("train", loss.clone(), [40, 90, 200], Style::Faint),
            Series::new("train (smoothed, EMA 0.9)", smooth(&loss, 0.9), [40, 90, 200], Style::Line),
        ],
    )
    .save(&run.join("loss"), 760, 440)?;
    chart("Validation accuracy", "accuracy (%)", vec![Series::new("validation", acc, [230, 120, 20], Style::Markers)])
        .save(&run.join("accuracy"), 760, 440)
}

/// Fine-tunes (or, with `resume`, continues) on the pretraining loop; writes RUN/best (best
/// val accuracy), RUN/last (the final classifier), RUN/checkpoints/step-N (resumable),
/// metrics.jsonl, loss.png, accuracy.png and finetune.json.
pub fn finetune(cfg: &FinetuneConfig, resume: bool, obs: &mut dyn TrainObserver) -> Result<FinetuneSummary> {
    cfg.validate()?;
    let task = Classify::open(&cfg.data, cfg.gen_weight, cfg.limit)?;
    let pretrained = crate::config::ImageGptConfig::from_file(&cfg.model.join("config.json"))?;
    let tcfg = TrainConfig {
        data: cfg.data.clone(),
        out: cfg.out.clone(),
        init: Some(cfg.model.clone()),
        objective: pretrained.objective,
        batch: cfg.batch,
        steps: Some(cfg.steps),
        lr: cfg.lr,
        warmup: cfg.warmup,
        min_lr: cfg.min_lr,
        clip: cfg.clip,
        eval_every: cfg.eval_every,
        log_every: 1,
        hflip: cfg.hflip,
        seed: cfg.seed,
        keep: cfg.keep,
        stop_after: cfg.stop_after,
        patience: Some(cfg.patience),
        embd_pdrop: cfg.embd_pdrop,
        attn_pdrop: cfg.attn_pdrop,
        resid_pdrop: cfg.resid_pdrop,
        ..Default::default()
    };
    let s = crate::train::run_task(&tcfg, resume, &task, obs)?;
    if s.stopped_early || cfg.stop_after.is_none_or(|a| a >= cfg.steps) {
        // last/: the classifier of the final checkpoint
        if let Some((_, dir)) = crate::train::checkpoint::list(&cfg.out).pop() {
            let m = load_model_as(&dir, Some(ModelKind::CausalLm))?;
            let head =
                crate::train::checkpoint::load_head(&dir, "score.weight", &[task.classes.len(), m.config.n_embd])?;
            let cls = as_classifier(&m, &head, &task.classes)?;
            crate::formats::atomic::write_dir_atomic(&cfg.out.join("last"), |d| {
                write_classifier(d, &cls, &task.palette)
            })?;
        }
    }
    let best = load_model_as(&cfg.out.join("best"), Some(ModelKind::Classifier))?;
    let test = cfg.data.join("test.tokens");
    let limited = |t: TokenFile| t.limit(cfg.limit.unwrap_or(usize::MAX));
    let test_acc = test.exists().then(|| accuracy(&best, &limited(TokenFile::open(&test)?), 32)).transpose()?;
    let summary = FinetuneSummary {
        steps: s.steps,
        best_step: s.best_step.unwrap_or(0),
        best_val_acc: s.best_val_loss.unwrap_or(0.0),
        test_acc,
        seconds: s.seconds,
        stopped_early: s.stopped_early,
        best_dir: cfg.out.join("best"),
    };
    let json = serde_json::to_string_pretty(&json!({"config": cfg, "summary": summary}))
        .map_err(|e| Error::Invalid(e.to_string()))?;
    crate::formats::write_atomic(&cfg.out.join("finetune.json"), json.as_bytes())?;
    Ok(summary)
}
