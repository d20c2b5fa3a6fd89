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

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use serde_json::json;

use crate::backend::dropout::DropoutSites;
use crate::config::ImageGptConfig;
use crate::data::tokens::TokenFile;
use crate::error::{Error, Result};
use crate::model::train_graph::{Objective, TrainActs};
use crate::model::{ImageGpt, ModelKind, load_model_as};
use crate::rng::Rng;
use crate::tokenizer::ImageProcessorConfig;
use batches::Cursor;
use checkpoint::TrainState;
pub use config::TrainConfig;
use optim::{AdamW, clip_grad_norm, lr_at};

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
    pub val_loss: f64,
    pub val_bits: f64,
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
}

fn open_data(dir: &Path) -> Result<(TokenFile, TokenFile, ImageProcessorConfig)> {
    let hint = |f: &str| {
        Error::Invalid(format!(
            "{}: no {f}; make the data folder with `igpt prepare --data ... --out {}`",
            dir.display(),
            dir.display()
        ))
    };
    for f in ["train.tokens", "val.tokens", "preprocessor_config.json"] {
        if !dir.join(f).exists() {
            return Err(hint(f));
        }
    }
    let train = TokenFile::open(&dir.join("train.tokens"))?;
    let val = TokenFile::open(&dir.join("val.tokens"))?;
    let proc = ImageProcessorConfig::from_file(&dir.join("preprocessor_config.json"))?;
    Ok((train, val, proc))
}

/// The model config of a run: preset or explicit shape, size and palette from the data.
pub fn resolve_model(cfg: &TrainConfig, data: &TokenFile) -> Result<ImageGptConfig> {
    let mut m = ImageGptConfig::preset(&cfg.preset)?;
    if let Some(v) = cfg.n_layer {
        m.n_layer = v;
    }
    if let Some(v) = cfg.n_embd {
        m.n_embd = v;
    }
    if let Some(v) = cfg.n_head {
        m.n_head = v;
    }
    m.n_positions = data.seq_len();
    m.vocab_size = data.colors + 1;
    // the image's width is written only when it is not the square root
    m.image_width = (data.width * data.width != data.seq_len()).then_some(data.width);
    (m.position_embedding, m.rope_theta, m.attention) = (cfg.position_embedding, cfg.rope_theta, cfg.attention);
    (m.local_rows, m.local_cols) = (cfg.local_rows, cfg.local_cols);
    m.validate("train config")?;
    Ok(m)
}

/// This machine's memory in bytes (Linux: MemTotal of /proc/meminfo).
fn memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = text.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Refuses a model whose weights, gradients and AdamW moments (16 bytes a parameter) would
/// not fit this machine's memory, before anything is allocated.
fn check_memory(m: &ImageGptConfig) -> Result<()> {
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
fn apply_dropout(m: &mut ImageGptConfig, cfg: &TrainConfig) -> Result<()> {
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
    let key = seed.rotate_left(29) ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (micro as u64).wrapping_mul(0xd1b5_4a32_d192_ed03);
    DropoutSites::new(key, m.embd_pdrop, m.attn_pdrop, m.resid_pdrop)
}

/// What a checkpoint must share with the run's configuration to resume it: the shape and
/// the architecture options.
fn shape_of(c: &ImageGptConfig) -> (usize, usize, usize, usize, usize, usize, String) {
    let variant = format!(
        "{} {} {} {}x{} theta {} window {}x{}",
        c.position_embedding.name(),
        c.attention.name(),
        c.width(),
        c.height(),
        c.width(),
        c.rope_theta,
        c.local_rows,
        c.local_cols
    );
    (c.n_layer, c.n_embd, c.n_head, c.n_inner(), c.n_positions, c.vocab_size, variant)
}

/// Mean validation loss over the first `eval_batches` batches (fixed images, fixed BERT masks).
fn evaluate(model: &ImageGpt, acts: &mut TrainActs, val: &TokenFile, cfg: &TrainConfig) -> Result<f64> {
    let t = val.seq_len();
    let n = (cfg.eval_batches * cfg.batch).min(val.count);
    if n == 0 {
        return Err(Error::Invalid(format!("{}: the validation split is empty", val.path.display())));
    }
    let mut rng = Rng::new(cfg.seed ^ 0xe7a1);
    let (mut sum, mut count) = (0.0, 0usize);
    let mut tokens = vec![0u32; cfg.batch * t];
    for start in (0..n).step_by(cfg.batch) {
        let b = cfg.batch.min(n - start);
        for i in 0..b {
            val.image_into(start + i, &mut tokens[i * t..(i + 1) * t]);
        }
        let mask = (cfg.objective == Objective::Bert).then(|| batches::bert_mask(b * t, cfg.mask_prob, &mut rng));
        let loss = model.loss(acts, &tokens[..b * t], b, t, cfg.objective, mask.as_deref())?;
        sum += loss * b as f64;
        count += b;
    }
    Ok(sum / count as f64)
}

fn append_line(path: &Path, v: &serde_json::Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
    writeln!(f, "{v}").map_err(|e| Error::io(path, e))
}

/// Keeps only the metrics lines up to `step` (after a resume, later lines are recomputed).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
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

/// Reads (train losses, val losses) back from metrics.jsonl.
pub fn read_metrics(path: &Path) -> (Vec<(u64, f64)>, Vec<(u64, f64)>) {
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

/// Runs (or, with `resume`, continues) training.
pub fn run(cfg: &TrainConfig, resume: bool, obs: &mut dyn TrainObserver) -> Result<TrainSummary> {
    let t_start = Instant::now();
    cfg.validate()?;
    let (train, val, proc) = open_data(&cfg.data)?;
    let (h, w) = proc.hw();
    if (train.height, train.width) != (h, w)
        || train.colors != proc.n_clusters()
        || (val.height, val.width, val.colors) != (train.height, train.width, train.colors)
    {
        return Err(Error::Invalid(format!(
            "{}: token files and preprocessor_config.json disagree (sizes or palette); run `igpt prepare` again",
            cfg.data.display()
        )));
    }
    let mcfg = resolve_model(cfg, &train)?;
    check_memory(&mcfg)?;
    let run_dir = &cfg.out;
    std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
    for msg in checkpoint::repair(run_dir)? {
        obs.note(&msg);
    }
    let latest = checkpoint::list(run_dir).pop();
    if resume && latest.is_none() {
        return Err(Error::Invalid(format!(
            "--resume: {} has no checkpoint to continue from; run without --resume to start training there",
            run_dir.display()
        )));
    }
    if !resume && latest.is_some() {
        return Err(Error::Invalid(format!(
            "{}: the run folder already has checkpoints; pass --resume to continue it or choose another --out",
            run_dir.display()
        )));
    }

    // Model and optimizer: from a checkpoint (resume), an initial model (--init) or random.
    let (mut model, start): (ImageGpt, Option<PathBuf>) = match (&latest, &cfg.init) {
        (Some((_, dir)), _) if resume => (load_model_as(dir, Some(ModelKind::CausalLm))?, Some(dir.clone())),
        (_, Some(init)) => (load_model_as(init, Some(ModelKind::CausalLm))?, None),
        _ => (ImageGpt::init_random(mcfg.clone(), ModelKind::CausalLm, cfg.seed)?, None),
    };
    // the saved model records what it was trained for (BERT: every later pass bidirectional)
    // and the dropout it was trained with
    model.config.objective = cfg.objective;
    apply_dropout(&mut model.config, cfg)?;
    if shape_of(&model.config) != shape_of(&mcfg) && cfg.init.is_none() {
        return Err(Error::Invalid(format!(
            "{}: the checkpoint's shape {:?} differs from this configuration's {:?}; resume with the same flags",
            run_dir.display(),
            shape_of(&model.config),
            shape_of(&mcfg)
        )));
    }
    if model.config.n_colors() != train.colors || model.config.n_positions != train.seq_len() {
        return Err(Error::Invalid(format!(
            "model ({} colours, {} positions) does not match the data ({} colours, {}x{} images)",
            model.config.n_colors(),
            model.config.n_positions,
            train.colors,
            train.height,
            train.width
        )));
    }
    let mut opt = AdamW::new(cfg.adamw.clone(), &model.layout);
    let mut state = match &start {
        Some(dir) => checkpoint::load_state(dir, &model, &mut opt)?,
        None => TrainState {
            format_version: checkpoint::FORMAT_VERSION,
            step: 0,
            rng: Rng::new(cfg.seed ^ 0x7a11),
            cursor: Cursor::default(),
            best_val_loss: None,
            best_step: None,
            tokens_seen: 0,
            adam_step: 0,
        },
    };
    let t = train.seq_len();
    let per_step = (cfg.batch * cfg.grad_accum) as u64;
    let total = match (cfg.steps, cfg.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => ((e * train.count as f64) / per_step as f64).ceil() as u64,
        (None, None) => return Err(Error::Invalid("give --steps or --epochs".into())),
    }
    .max(1); // --epochs so small it rounds to no step still takes one
    let json = serde_json::to_string_pretty(&json!({"train": cfg, "model": model.config, "total_steps": total}))
        .map_err(|e| Error::Invalid(e.to_string()))?;
    crate::formats::write_atomic(&run_dir.join("train.json"), json.as_bytes())?;
    let metrics = run_dir.join("metrics.jsonl");
    if start.is_some() {
        truncate_metrics(&metrics, state.step)?;
    } else if metrics.exists() {
        std::fs::remove_file(&metrics).map_err(|e| Error::io(&metrics, e))?;
    }
    let palette = cfg.data.join("preprocessor_config.json");
    let (decayed, not_decayed) = opt.decay_counts();
    obs.start(&RunInfo {
        n_params: model.params.len(),
        decayed,
        not_decayed,
        total_steps: total,
        start_step: state.step,
        train_images: train.count,
        val_images: val.count,
        model: model.config.clone(),
    });

    let mut acts = TrainActs::new();
    let mut grads = vec![0f32; model.params.len()];
    let mut tokens = Vec::new();
    let mut order = Vec::new();
    let (mut last_loss, mut last_val) = (f64::NAN, None);
    let (mut losses, mut evals) = (Vec::new(), Vec::new());
    let mut window = (Instant::now(), 0u64);
    while state.step < total {
        if cfg.stop_after.is_some_and(|s| state.step >= s) {
            break;
        }
        let step = state.step;
        let lr = lr_at(step, cfg.lr, cfg.min_lr, cfg.warmup, total);
        grads.fill(0.0);
        let mut loss = 0.0;
        for micro in 0..cfg.grad_accum {
            let _ = batches::next_batch(&train, &mut state.cursor, &mut order, cfg.seed, cfg.batch, &mut tokens);
            if cfg.hflip {
                batches::hflip(&mut tokens, train.width, train.height, &mut state.rng);
            }
            let mask = (cfg.objective == Objective::Bert)
                .then(|| batches::bert_mask(cfg.batch * t, cfg.mask_prob, &mut state.rng));
            acts.set_dropout(dropout_of(&model.config, cfg.seed, step, micro));
            loss +=
                model.forward_backward(&mut acts, &mut grads, &tokens, cfg.batch, t, cfg.objective, mask.as_deref())?
                    / cfg.grad_accum as f64;
        }
        if cfg.grad_accum > 1 {
            let s = 1.0 / cfg.grad_accum as f32;
            grads.iter_mut().for_each(|g| *g *= s);
        }
        if !loss.is_finite() {
            let last = checkpoint::list(run_dir)
                .pop()
                .map_or("none was written yet".to_string(), |(_, p)| p.display().to_string());
            return Err(Error::Invalid(format!(
                "the loss is {loss} at step {step}: training stopped (lower --lr or raise --warmup); the last good checkpoint is {last}"
            )));
        }
        let norm = clip_grad_norm(&mut grads, cfg.clip);
        opt.update(&mut model.params, &grads, lr);
        state.step += 1;
        state.adam_step = opt.step;
        state.tokens_seen += per_step * t as u64;
        window.1 += per_step * t as u64;
        last_loss = loss;
        losses.push((state.step, loss));
        let log = StepLog {
            step: state.step,
            loss,
            lr,
            grad_norm: norm,
            tok_s: window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9),
            elapsed_s: t_start.elapsed().as_secs_f64(),
        };
        obs.step(&log, total);
        if state.step % cfg.log_every.max(1) == 0 || state.step == total {
            append_line(
                &metrics,
                &json!({"kind": "train", "step": log.step, "tokens": state.tokens_seen, "loss": log.loss, "lr": log.lr, "grad_norm": log.grad_norm, "tok_s": log.tok_s, "elapsed_s": log.elapsed_s}),
            )?;
            obs.log(&log);
            window = (Instant::now(), 0);
        }
        if state.step % cfg.eval_every.max(1) == 0 || state.step == total {
            let vl = evaluate(&model, &mut acts, &val, cfg)?;
            let best = state.best_val_loss.is_none_or(|b| vl < b);
            if best {
                (state.best_val_loss, state.best_step) = (Some(vl), Some(state.step));
            }
            last_val = Some(vl);
            evals.push((state.step, vl));
            let e = EvalLog { step: state.step, val_loss: vl, val_bits: vl / std::f64::consts::LN_2, best };
            append_line(
                &metrics,
                &json!({"kind": "eval", "step": e.step, "tokens": state.tokens_seen, "val_loss": e.val_loss, "val_bits": e.val_bits}),
            )?;
            obs.eval(&e);
            // best/ first: once any step checkpoint exists, a complete best/ exists too
            if best {
                checkpoint::save(&run_dir.join("best"), &model, &opt, &state, &palette)?;
            }
            checkpoint::save(
                &run_dir.join("checkpoints").join(format!("step-{}", state.step)),
                &model,
                &opt,
                &state,
                &palette,
            )?;
            checkpoint::prune(run_dir, cfg.keep)?;
            plot_losses(run_dir, (per_step as usize * t) as f64)?;
        }
    }
    Ok(TrainSummary {
        steps: state.step,
        final_train_loss: last_loss,
        final_val_loss: last_val,
        best_val_loss: state.best_val_loss,
        best_dir: run_dir.join("best"),
        seconds: t_start.elapsed().as_secs_f64(),
        losses,
        evals,
    })
}
