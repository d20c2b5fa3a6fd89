//! Fine-tuning a pretrained model into a classifier (paper, section 3.4): the loss is the
//! generative loss plus the cross-entropy of a linear head (`score`, zero-initialised) over
//! the mean-pooled final features; early stopping on validation accuracy. The result is
//! saved as HF's `ImageGPTForImageClassification` (transformer + `score.weight`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use serde_json::json;

use crate::data::tokens::TokenFile;
use crate::error::{Error, Result};
use crate::model::train_graph::TrainActs;
use crate::model::{ImageGpt, Logits, ModelKind, Workspace, load_model_as, save_model};
use crate::rng::Rng;
use crate::train::batches::{self, Cursor};
use crate::train::optim::{AdamW, AdamWConfig, clip_grad_norm, lr_at};

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
        for (flag, n) in [("--steps", self.steps as usize), ("--batch", self.batch), ("--eval-every", self.eval_every as usize), ("--patience", self.patience)] {
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

/// Progress callback: (step, total, gen loss, class loss, train accuracy of the batch).
pub type StepFn<'a> = dyn FnMut(u64, u64, f64, f64, f64) + 'a;

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

fn save_classifier(dir: &Path, cls: &ImageGpt, palette: &Path) -> Result<()> {
    let tmp = dir.with_file_name(format!(
        ".{}.tmp-{}",
        dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    save_model(cls, &tmp)?;
    std::fs::copy(palette, tmp.join("preprocessor_config.json")).map_err(|e| Error::io(palette, e))?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))
}

/// Fine-tunes; writes RUN/best (best val accuracy), RUN/last, RUN/metrics.jsonl.
pub fn finetune(cfg: &FinetuneConfig, on_step: &mut StepFn) -> Result<FinetuneSummary> {
    let t0 = Instant::now();
    cfg.validate()?;
    let open = |f: &str| TokenFile::open(&cfg.data.join(f));
    let (train, val) = (open("train.tokens")?, open("val.tokens")?);
    let test = cfg.data.join("test.tokens").exists().then(|| open("test.tokens")).transpose()?;
    let ytr = train.labels().ok_or_else(|| {
        Error::Invalid(format!("{}: no labels: fine-tuning needs a labelled data set", train.path.display()))
    })?;
    let classes: Vec<String> =
        std::fs::read_to_string(cfg.data.join("labels.txt")).unwrap_or_default().lines().map(str::to_string).collect();
    let splits: Vec<&TokenFile> = [Some(&train), Some(&val), test.as_ref()].into_iter().flatten().collect();
    let k = crate::data::tokens::class_count(&cfg.data, &splits)?;
    let classes: Vec<String> =
        (0..k).map(|i| classes.get(i).cloned().unwrap_or_else(|| format!("LABEL_{i}"))).collect();
    let mut model = load_model_as(&cfg.model, Some(ModelKind::CausalLm))?;
    if model.config.n_positions != train.seq_len() || model.config.n_colors() != train.colors {
        return Err(Error::Invalid(format!(
            "{}: model ({} colours, {} positions) does not match the data ({} colours, {} pixels)",
            cfg.model.display(),
            model.config.n_colors(),
            model.config.n_positions,
            train.colors,
            train.seq_len()
        )));
    }
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    let palette = cfg.data.join("preprocessor_config.json");
    let c = model.config.n_embd;
    let t = train.seq_len();
    let mut score = vec![0f32; k * c]; // zero-initialised head (OpenAI's wclf)
    let mut opt = AdamW::new(AdamWConfig::default(), &model.layout);
    let mut opt_s = AdamW::for_tensor(AdamWConfig::default(), k * c, false);
    let (mut grads, mut dscore) = (vec![0f32; model.params.len()], vec![0f32; k * c]);
    let mut acts = TrainActs::new();
    let (mut cursor, mut order, mut tokens) = (Cursor::default(), Vec::new(), Vec::new());
    let mut rng = Rng::new(cfg.seed ^ 0xf1e7);
    let metrics = cfg.out.join("metrics.jsonl");
    let mut lines = String::new();
    let (mut best_acc, mut best_step, mut since_best, mut stopped_early) = (-1.0, 0, 0, false);
    let mut step = 0;
    while step < cfg.steps {
        let lr = lr_at(step, cfg.lr, cfg.min_lr, cfg.warmup, cfg.steps);
        let picked = batches::next_batch(&train, &mut cursor, &mut order, cfg.seed, cfg.batch, &mut tokens);
        let labels: Vec<u16> = picked.iter().map(|&i| ytr[i]).collect();
        if cfg.hflip {
            batches::hflip(&mut tokens, train.width, train.height, &mut rng);
        }
        grads.fill(0.0);
        dscore.fill(0.0);
        // BERT models: the generative loss predicts 15% masked pixels (the paper's rate)
        let masked = (!model.config.is_causal() && cfg.gen_weight > 0.0)
            .then(|| batches::bert_mask(cfg.batch * t, 0.15, &mut rng));
        let (g, l, correct) = model.forward_backward_classify(
            &mut acts,
            &mut grads,
            &score,
            &mut dscore,
            &tokens,
            &labels,
            cfg.batch,
            t,
            (cfg.gen_weight, masked.as_deref()),
        )?;
        if !(g + l).is_finite() {
            return Err(Error::Invalid(format!("the loss is not finite at fine-tuning step {step}: lower --lr")));
        }
        // one global clip over transformer and head
        let mut all: Vec<f32> = grads.iter().chain(&dscore).copied().collect();
        clip_grad_norm(&mut all, cfg.clip);
        let (gm, gs) = all.split_at(grads.len());
        opt.update(&mut model.params, gm, lr);
        opt_s.update(&mut score, gs, lr);
        step += 1;
        on_step(step, cfg.steps, g, l, correct as f64 / cfg.batch as f64);
        lines
            .push_str(&format!("{}\n", json!({"kind": "train", "step": step, "gen_loss": g, "clf_loss": l, "lr": lr})));
        if step % cfg.eval_every.max(1) == 0 || step == cfg.steps {
            let cls = as_classifier(&model, &score, &classes)?;
            let acc = accuracy(&cls, &val, 32)?;
            lines.push_str(&format!("{}\n", json!({"kind": "eval", "step": step, "val_acc": acc})));
            if acc > best_acc {
                (best_acc, best_step, since_best) = (acc, step, 0);
                save_classifier(&cfg.out.join("best"), &cls, &palette)?;
            } else {
                since_best += 1;
            }
            save_classifier(&cfg.out.join("last"), &cls, &palette)?;
            crate::formats::write_atomic(&metrics, lines.as_bytes())?;
            if since_best >= cfg.patience {
                stopped_early = true;
                break;
            }
        }
    }
    let best = load_model_as(&cfg.out.join("best"), Some(ModelKind::Classifier))?;
    let test_acc = test.as_ref().map(|t| accuracy(&best, t, 32)).transpose()?;
    let summary = FinetuneSummary {
        steps: step,
        best_step,
        best_val_acc: best_acc,
        test_acc,
        seconds: t0.elapsed().as_secs_f64(),
        stopped_early,
        best_dir: cfg.out.join("best"),
    };
    let json = serde_json::to_string_pretty(&json!({"config": cfg, "summary": summary}))
        .map_err(|e| Error::Invalid(e.to_string()))?;
    crate::formats::write_atomic(&cfg.out.join("finetune.json"), json.as_bytes())?;
    Ok(summary)
}
