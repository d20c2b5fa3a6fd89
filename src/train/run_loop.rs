//! The training loop, one for every [`Task`]: nanoGPT's shape. Every optimizer step: the
//! learning rate (warmup + cosine), `grad_accum` micro-batches (forward, loss, backward),
//! one global gradient-norm clip over all parameter groups, one AdamW step over all of them;
//! every `eval_every` steps (and at the end): an evaluation, best/ when it is better, a step
//! checkpoint, rotation, metrics.jsonl and the charts; early stopping after `patience`
//! evaluations without a better one.

use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};

use super::checkpoint::{self, Head, TrainState};
use super::config::TrainConfig;
use super::optim::{AdamW, clip_grad_norm_groups, lr_at};
use super::task::Task;
use super::{EvalLog, RunInfo, StepLog, TrainObserver, TrainSummary, append_line, apply_dropout, dropout_of};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::train_graph::TrainActs;
use crate::model::{ImageGpt, ModelKind, load_model_as};
use crate::rng::Rng;

/// A run's trainable state: the model, the extra group (head) and one optimizer over both.
struct Trainee {
    model: ImageGpt,
    head_name: String,
    head_shape: Vec<usize>,
    head: Vec<f32>,
    head_range: std::ops::Range<usize>,
    opt: AdamW,
}

impl Trainee {
    fn head_ref(&self) -> Option<Head<'_>> {
        (!self.head.is_empty()).then(|| Head {
            name: &self.head_name,
            shape: &self.head_shape,
            data: &self.head,
            range: self.head_range.clone(),
        })
    }
}

/// Runs (or, with `resume`, continues) `task` into `cfg.out`.
pub fn run_task(cfg: &TrainConfig, resume: bool, task: &dyn Task, obs: &mut dyn TrainObserver) -> Result<TrainSummary> {
    let t_start = Instant::now();
    cfg.validate()?;
    let run_dir = &cfg.out;
    std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
    let data = task.data();
    // best/ rebuilt from the checkpoint of its step, as it was written then
    let rebuild = |src: &Path, dst: &Path| -> Result<()> {
        let (tr, state) = open_trainee(cfg, task, Some(src))?;
        let head = tr.head_ref();
        let ckpt = |d: &Path| checkpoint::write_contents(d, &tr.model, head.as_ref(), &tr.opt, &state, &data.palette);
        task.write_best(dst, &tr.model, &tr.head, &state, &ckpt)
    };
    check_folder(run_dir, resume)?;
    for msg in checkpoint::repair(run_dir, &rebuild)? {
        obs.note(&msg);
    }
    let start = checkpoint::list(run_dir).pop().map(|(_, d)| d);
    let (mut tr, mut state) = open_trainee(cfg, task, start.as_deref())?;
    let per_step = (cfg.batch * cfg.grad_accum) as u64;
    let mut total = schedule_length(cfg, data.train_images, per_step, &state)?;
    write_train_json(cfg, &tr.model, total)?;
    let metrics = run_dir.join("metrics.jsonl");
    if start.is_some() {
        super::truncate_metrics(&metrics, state.step)?;
    } else if metrics.exists() {
        std::fs::remove_file(&metrics).map_err(|e| Error::io(&metrics, e))?;
    }
    let (decayed, not_decayed) = tr.opt.decay_counts();
    obs.start(&RunInfo {
        n_params: tr.model.params.len() + tr.head.len(),
        decayed,
        not_decayed,
        total_steps: total,
        start_step: state.step,
        train_images: data.train_images,
        val_images: data.val_images,
        model: tr.model.config.clone(),
    });

    let t = data.seq_len;
    let mut acts = TrainActs::new();
    let mut grads = vec![0f32; tr.model.params.len()];
    let mut dhead = vec![0f32; tr.head.len()];
    let mut sum = TrainSummary::empty(run_dir.join("best"));
    let mut window = (Instant::now(), 0u64);
    // a run that early stopping ended stays ended on --resume
    sum.stopped_early = cfg.patience.is_some_and(|p| state.evals_since_best >= p) && state.step < total;
    let start_step = state.step;
    while !sum.stopped_early && state.step < total && cfg.stop_after.is_none_or(|s| state.step < s) {
        let step = state.step;
        let lr = lr_at(step, cfg.lr, cfg.min_lr, cfg.warmup, total);
        let (loss, parts) = gradients(cfg, task, &tr, &mut acts, (&mut grads, &mut dhead), &mut state)?;
        if !loss.is_finite() {
            return Err(diverged(run_dir, loss, step));
        }
        let be = *tr.opt.backend();
        let norm = clip_grad_norm_groups(&be, &mut [&mut grads, &mut dhead], cfg.clip);
        tr.opt.update_groups(&mut [&mut tr.model.params, &mut tr.head], &[&grads, &dhead], lr);
        state.step += 1;
        state.adam_step = tr.opt.step;
        if total == u64::MAX && state.step - start_step >= CALIBRATION.min(cfg.warmup.max(1)) {
            total = steps_for_budget(cfg, &state, state.step - start_step, t_start.elapsed().as_secs_f64());
            state.total_steps = Some(total);
            write_train_json(cfg, &tr.model, total)?;
            obs.note(&format!("--minutes {}: {total} steps at the measured speed", cfg.minutes.unwrap_or(0.0)));
        }
        state.tokens_seen += per_step * t as u64;
        window.1 += per_step * t as u64;
        sum.final_train_loss = loss;
        sum.losses.push((state.step, loss));
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
            let mut line = json!({"kind": "train", "step": log.step, "tokens": state.tokens_seen, "loss": log.loss, "lr": log.lr, "grad_norm": log.grad_norm, "tok_s": log.tok_s, "elapsed_s": log.elapsed_s});
            line.as_object_mut().expect("an object").extend(parts);
            append_line(&metrics, &line)?;
            obs.log(&log);
            window = (Instant::now(), 0);
        }
        if state.step % cfg.eval_every.max(1) == 0 || state.step == total {
            let stop = evaluate_and_save(cfg, task, &mut tr, &mut state, &mut acts, &mut sum, obs)?;
            task.plot(run_dir, (per_step as usize * t) as f64)?;
            if stop {
                sum.stopped_early = true;
                break;
            }
        }
    }
    sum.steps = state.step;
    sum.best_val_loss = state.best_val_loss;
    sum.best_step = state.best_step;
    sum.seconds = t_start.elapsed().as_secs_f64();
    Ok(sum)
}

/// Refuses, before anything in the folder is touched, to start over a run's checkpoints
/// or to resume a folder without any.
fn check_folder(run_dir: &Path, resume: bool) -> Result<()> {
    match (checkpoint::list(run_dir).last(), resume) {
        (None, true) => Err(Error::Invalid(format!(
            "--resume: {} has no checkpoint to continue from; run without --resume to start training there",
            run_dir.display()
        ))),
        (Some(_), false) => Err(Error::Invalid(format!(
            "{}: the run folder already has checkpoints; pass --resume to continue it or choose another --out",
            run_dir.display()
        ))),
        _ => Ok(()),
    }
}

/// The schedule's length in steps. --minutes: u64::MAX until the first steps are timed
/// (in the loop), then the length kept in the state, so that a resumed run keeps it.
fn schedule_length(cfg: &TrainConfig, train_images: usize, per_step: u64, state: &TrainState) -> Result<u64> {
    let total = match (cfg.steps, cfg.epochs, cfg.minutes, state.total_steps) {
        (Some(s), ..) => s,
        (None, Some(e), ..) => ((e * train_images as f64) / per_step as f64).ceil() as u64,
        (None, None, Some(_), Some(t)) => t,
        (None, None, Some(_), None) => u64::MAX,
        (None, None, None, _) => return Err(Error::Invalid("give --steps, --epochs or --minutes".into())),
    };
    Ok(total.max(1)) // --epochs so small it rounds to no step still takes one
}

/// One step's gradients: `grad_accum` micro-batches into (model grads, head grads), their
/// mean; returns the mean loss and the mean of the task's other logged fields.
fn gradients(
    cfg: &TrainConfig,
    task: &dyn Task,
    tr: &Trainee,
    acts: &mut TrainActs,
    (grads, dhead): (&mut Vec<f32>, &mut Vec<f32>),
    state: &mut TrainState,
) -> Result<(f64, serde_json::Map<String, Value>)> {
    let (step, k) = (state.step, cfg.grad_accum);
    grads.fill(0.0);
    dhead.fill(0.0);
    let (mut loss, mut parts) = (0.0, serde_json::Map::new());
    for micro in 0..k {
        acts.set_dropout(dropout_of(&tr.model.config, cfg.seed, step, micro));
        let l = task.micro_batch(&tr.model, &tr.head, acts, grads, dhead, state, cfg)?;
        loss += l.loss / k as f64;
        for (name, v) in l.fields {
            let acc = parts.get(&name).and_then(Value::as_f64).unwrap_or(0.0);
            parts.insert(name, json!(acc + v.as_f64().unwrap_or(0.0) / k as f64));
        }
    }
    if k > 1 {
        let be = tr.opt.backend();
        be.scale(grads, 1.0 / k as f32);
        be.scale(dhead, 1.0 / k as f32);
    }
    Ok((loss, parts))
}

/// The error of a loss that is no longer finite, naming the last good checkpoint.
fn diverged(run_dir: &Path, loss: f64, step: u64) -> Error {
    let last =
        checkpoint::list(run_dir).pop().map_or("none was written yet".to_string(), |(_, p)| p.display().to_string());
    Error::Invalid(format!(
        "the loss is {loss} at step {step}: training stopped (lower --lr or raise --warmup); the last good checkpoint is {last}"
    ))
}

/// RUN/train.json: what runs (the configuration, the model, the schedule's length).
fn write_train_json(cfg: &TrainConfig, model: &ImageGpt, total: u64) -> Result<()> {
    let total = (total != u64::MAX).then_some(total);
    let json = serde_json::to_string_pretty(&json!({"train": cfg, "model": model.config, "total_steps": total}))
        .map_err(|e| Error::Invalid(e.to_string()))?;
    crate::formats::write_atomic(&cfg.out.join("train.json"), json.as_bytes())
}

/// Steps timed before a --minutes run fixes its length (all within the warm-up, where the
/// learning rate does not depend on the length).
const CALIBRATION: u64 = 3;

/// The length of a --minutes run, from the time the `timed` steps of this process took
/// (evaluations, about a tenth of a run at the default cadence, included by a 10% margin).
fn steps_for_budget(cfg: &TrainConfig, state: &TrainState, timed: u64, elapsed: f64) -> u64 {
    let budget = cfg.minutes.unwrap_or(0.0) * 60.0;
    let per_step = elapsed / timed.max(1) as f64;
    let more = ((budget - elapsed).max(0.0) / (per_step * 1.1)).floor() as u64;
    state.step + more.max(1)
}

/// The model, head, optimizer and state of a run: from checkpoint `start`, else fresh.
fn open_trainee(cfg: &TrainConfig, task: &dyn Task, start: Option<&Path>) -> Result<(Trainee, TrainState)> {
    let mut model = match start {
        Some(dir) => load_model_as(dir, Some(ModelKind::CausalLm))?,
        None => task.initial_model(cfg)?,
    };
    // the saved model records what it was trained for (BERT: every later pass
    // bidirectional)
    model.config.objective = cfg.objective;
    task.check_model(&model, cfg)?;
    let mut opt = AdamW::new(cfg.adamw.clone(), &model.layout);
    let (head_name, head_shape) = task.head(&model).unwrap_or_default();
    let n: usize = if head_name.is_empty() { 0 } else { head_shape.iter().product() };
    let head_range = opt.add_group(n, false)?;
    let head = match start {
        Some(dir) if n > 0 => checkpoint::load_head(dir, &head_name, &head_shape)?,
        _ => vec![0.0; n], // zero-initialised (OpenAI's wclf)
    };
    let named = (n > 0).then(|| (head_name.as_str(), head_range.clone()));
    let mut state = match start {
        Some(dir) => checkpoint::load_state(dir, &model, named, &mut opt)?,
        None => TrainState::fresh(cfg.seed),
    };
    // and the dropout it is trained with; a run that trained without (an older igpt)
    // resumes without, unless flags say otherwise
    if !state.dropout_applied {
        let c = &mut model.config;
        (c.embd_pdrop, c.attn_pdrop, c.resid_pdrop) = (0.0, 0.0, 0.0);
    }
    apply_dropout(&mut model.config, cfg)?;
    state.dropout_applied = true;
    Ok((Trainee { model, head_name, head_shape, head, head_range, opt }, state))
}

/// One evaluation: the metrics line, best/ (first) when better, the step checkpoint,
/// rotation. Returns whether early stopping ends the run.
fn evaluate_and_save(
    cfg: &TrainConfig,
    task: &dyn Task,
    tr: &mut Trainee,
    state: &mut TrainState,
    acts: &mut TrainActs,
    sum: &mut TrainSummary,
    obs: &mut dyn TrainObserver,
) -> Result<bool> {
    let ev = task.evaluate(&tr.model, &tr.head, acts, cfg)?;
    let better = state.best_val_loss.is_none_or(|b| if task.higher_is_better() { ev.value > b } else { ev.value < b });
    if better {
        (state.best_val_loss, state.best_step, state.evals_since_best) = (Some(ev.value), Some(state.step), 0);
    } else {
        state.evals_since_best += 1;
    }
    sum.final_val_loss = Some(ev.value);
    sum.evals.push((state.step, ev.value));
    let mut line = json!({"kind": "eval", "step": state.step, "tokens": state.tokens_seen});
    line.as_object_mut().expect("an object").extend(ev.fields);
    append_line(&cfg.out.join("metrics.jsonl"), &line)?;
    obs.eval(&EvalLog { step: state.step, metric: task.metric().into(), value: ev.value, best: better });
    let palette = task.data().palette;
    let head = tr.head_ref();
    let ckpt = |dir: &Path| checkpoint::write_contents(dir, &tr.model, head.as_ref(), &tr.opt, state, &palette);
    // best/ first: once any step checkpoint exists, a complete best/ exists too
    if better {
        crate::formats::atomic::write_dir_atomic(&cfg.out.join("best"), |dir| {
            task.write_best(dir, &tr.model, &tr.head, state, &ckpt)
        })?;
    }
    let dir = cfg.out.join("checkpoints").join(format!("step-{}", state.step));
    crate::formats::atomic::write_dir_atomic(&dir, ckpt)?;
    checkpoint::prune(&cfg.out, cfg.keep)?;
    Ok(cfg.patience.is_some_and(|p| state.evals_since_best >= p))
}

impl TrainState {
    /// The state of a run that starts now.
    pub fn fresh(seed: u64) -> Self {
        TrainState {
            format_version: checkpoint::FORMAT_VERSION,
            step: 0,
            rng: Rng::new(seed ^ 0x7a11),
            cursor: Default::default(),
            best_val_loss: None,
            evals_since_best: 0,
            best_step: None,
            tokens_seen: 0,
            adam_step: 0,
            total_steps: None,
            dropout_applied: true,
        }
    }
}
