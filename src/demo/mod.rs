//! `igpt demo`: the whole pipeline on the bundled emoji32 set, within a time budget, ending
//! in one HTML page: prepare (palette, tokens) -> train -> sample -> complete held-out
//! images -> probe every layer -> fine-tune -> report.html.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

mod report;

use crate::data::prepare::{PrepareConfig, PrepareReport, Quiet, prepare};
use crate::data::spec::DataSpec;
use crate::data::tokens::TokenFile;
use crate::error::{Error, Result};
use crate::finetune::{FinetuneConfig, FinetuneSummary, finetune};
use crate::model::train_graph::{Objective, TrainActs};
use crate::model::{ImageGpt, ModelKind, load_model};
use crate::probe::{NoProgress, ProbeOptions, ProbeReport, run_probe};
use crate::sample::{Prompt, Sampler, Sampling, generate};
use crate::tokenizer::{ImageProcessorConfig, RgbImage};
use crate::train::{TrainConfig, TrainObserver, TrainSummary};

#[derive(Clone, Debug)]
pub struct DemoConfig {
    pub out: PathBuf,
    pub minutes: f64,
    pub data: String,
    /// Use at most this many training images (and a quarter as many test images): for tests.
    pub max_images: Option<usize>,
    /// Image side the data are resized to. 16 by default: on 2 cores a 16x16 model sees
    /// about 5x more images in the budget than a 32x32 one, and its probe features are
    /// better for it (measured: docs in README).
    pub size: usize,
    pub colors: usize,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub seed: u64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            out: "runs/demo".into(),
            minutes: 15.0,
            data: "emoji32".into(),
            max_images: None,
            size: 16,
            colors: 512,
            n_layer: 4,
            n_embd: 128,
            n_head: 4,
            seed: 0,
        }
    }
}

/// What the demo reports back to its caller as it goes.
pub trait DemoObserver: TrainObserver {
    fn stage(&mut self, _name: &str, _detail: &str) {}
}

#[derive(Clone, Debug, Serialize)]
pub struct DemoSummary {
    pub report: PathBuf,
    pub timings: Vec<(String, f64)>,
    pub prepare: PrepareReport,
    pub train: TrainSummary,
    pub probe: ProbeReport,
    pub finetune: FinetuneSummary,
    pub test_nll_bits: f64,
}

/// Seconds per optimizer step of `cfg`'s model, measured on two steps.
fn time_step(cfg: &TrainConfig, data: &TokenFile) -> Result<f64> {
    let m = ImageGpt::init_random(crate::train::resolve_model(cfg, data)?, ModelKind::CausalLm, 0)?;
    let t = data.seq_len();
    let tokens: Vec<u32> = (0..cfg.batch).flat_map(|i| data.image(i % data.count).into_iter().map(u32::from)).collect();
    let (mut acts, mut grads) = (TrainActs::new(), vec![0f32; m.params.len()]);
    m.forward_backward(&mut acts, &mut grads, &tokens, cfg.batch, t, Objective::Gpt, None)?;
    let t0 = Instant::now();
    m.forward_backward(&mut acts, &mut grads, &tokens, cfg.batch, t, Objective::Gpt, None)?;
    // A real run also evaluates, writes checkpoints and shares the machine: measured runs
    // took 1.3-1.4x the bare step time.
    Ok(t0.elapsed().as_secs_f64() * 1.3)
}

/// Mean NLL (bits/token) of the first `n` images of a token file.
fn nll_bits(model: &ImageGpt, data: &TokenFile, n: usize) -> Result<f64> {
    let t = data.seq_len();
    let n = n.min(data.count);
    let mut acts = TrainActs::new();
    let mut sum = 0.0;
    for start in (0..n).step_by(16) {
        let b = 16.min(n - start);
        let toks: Vec<u32> = (start..start + b).flat_map(|i| data.image(i).into_iter().map(u32::from)).collect();
        sum += model.loss(&mut acts, &toks, b, t, Objective::Gpt, None)? * b as f64;
    }
    Ok(sum / n.max(1) as f64 / std::f64::consts::LN_2)
}

fn palette_image(proc: &ImageProcessorConfig) -> RgbImage {
    let k = proc.n_clusters();
    let cols = 32.min(k).max(1);
    let tiles: Vec<RgbImage> = (0..k).map(|i| RgbImage::new(1, 1, proc.decode(&[i as u32]))).collect();
    crate::viz::grid(&tiles, cols, 14, 1)
}

/// Runs the demo within `cfg.minutes` (the whole pipeline, not only training): training gets
/// 55% of the budget, sampling, completion and the probes run on their own, and fine-tuning
/// gets what remains (at least 4 steps), less a few seconds for the report.
pub fn run_demo(cfg: &DemoConfig, obs: &mut dyn DemoObserver) -> Result<DemoSummary> {
    let t_all = Instant::now();
    let out = &cfg.out;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut timings = Vec::new();
    let budget = cfg.minutes * 60.0;
    let left = |share: f64| (share * budget - t_all.elapsed().as_secs_f64()).max(0.0);

    obs.stage("prepare", &format!("--data {} -> {}/data", cfg.data, out.display()));
    let (prep, proc) = clock(&mut timings, "prepare", || prepare_stage(cfg))?;
    let data = out.join("data");
    let (train, step_s) = clock(&mut timings, "train", || train_stage(cfg, &data, left(0.55), obs))?;
    let model_dir = out.join("train").join("best");
    let model = load_model(&model_dir)?;
    let test_split = if data.join("test.tokens").exists() { "test" } else { "val" };
    let test_file = TokenFile::open(&data.join(format!("{test_split}.tokens")))?;
    let test_nll_bits = nll_bits(&model, &test_file, 256)?;

    let mut sampler = Sampler::new(cfg.seed, Sampling::default());
    obs.stage("sample", "16 images from [SOS]");
    clock(&mut timings, "sample", || sample_stage(&model, &proc, &mut sampler, &out.join("samples.png")))?;
    obs.stage("complete", "8 test images, top half kept, 3 completions each");
    let completions = out.join("completions.png");
    clock(&mut timings, "complete", || complete_stage(&model, &proc, &test_file, &mut sampler, &completions))?;
    obs.stage("probe", "logistic regression on every layer's pooled features");
    let probe = clock(&mut timings, "probe", || {
        run_probe(&model, &data, &ProbeOptions::default(), &out.join("probe"), &mut NoProgress)
    })?;
    // what is left of the budget, less the report and the fine-tune's evaluations
    let ft_steps = (((left(1.0) - 3.0).max(0.0) * 0.8 / (step_s * 1.1)) as u64).max(4);
    obs.stage("finetune", &format!("{ft_steps} steps"));
    let ft = clock(&mut timings, "finetune", || finetune_stage(cfg, &data, &model_dir, ft_steps))?;

    let report = out.join("report.html");
    let summary =
        DemoSummary { report: report.clone(), timings, prepare: prep, train, probe, finetune: ft, test_nll_bits };
    report::write_report(&report, cfg, &summary, &model)?;
    let json = serde_json::to_string_pretty(&summary).map_err(|e| Error::Invalid(e.to_string()))?;
    crate::formats::write_atomic(&out.join("demo.json"), json.as_bytes())?;
    Ok(summary)
}

/// Runs `f`, recording its seconds under `name`.
fn clock<T>(timings: &mut Vec<(String, f64)>, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let t0 = Instant::now();
    let r = f()?;
    timings.push((name.to_string(), t0.elapsed().as_secs_f64()));
    Ok(r)
}

/// Stage 1: the data set into OUT/data (palette, tokens) and OUT/palette.png.
fn prepare_stage(cfg: &DemoConfig) -> Result<(PrepareReport, ImageProcessorConfig)> {
    let spec: DataSpec = cfg.data.parse()?;
    let mut src = spec.load_at(Some(cfg.size), &|| {})?;
    if let Some(m) = cfg.max_images {
        src.train.items.truncate(m);
        if let Some(t) = src.test.as_mut() {
            t.items.truncate((m / 4).max(4));
        }
    }
    let data = cfg.out.join("data");
    let pcfg = PrepareConfig { size: cfg.size, colors: cfg.colors, seed: cfg.seed, ..Default::default() };
    let prep = prepare(src, &data, &pcfg, &Quiet)?;
    let proc = ImageProcessorConfig::from_file(&data.join("preprocessor_config.json"))?;
    palette_image(&proc).save_png(&cfg.out.join("palette.png"))?;
    Ok((prep, proc))
}

/// Stage 2: training into OUT/train with as many steps as `seconds` allow; returns the run and
/// the measured seconds per step.
fn train_stage(cfg: &DemoConfig, data: &Path, seconds: f64, obs: &mut dyn DemoObserver) -> Result<(TrainSummary, f64)> {
    let train_file = TokenFile::open(&data.join("train.tokens"))?;
    let mut tcfg = TrainConfig {
        data: data.to_path_buf(),
        out: cfg.out.join("train"),
        preset: "tiny".into(),
        n_layer: Some(cfg.n_layer),
        n_embd: Some(cfg.n_embd),
        n_head: Some(cfg.n_head),
        batch: 8,
        lr: 3e-3,
        min_lr: 3e-4,
        seed: cfg.seed,
        keep: 1,
        ..Default::default()
    };
    let step_s = time_step(&tcfg, &train_file)?;
    let steps = ((seconds / step_s) as u64).max(4);
    tcfg.steps = Some(steps);
    tcfg.warmup = (steps / 20).clamp(1, 200);
    tcfg.eval_every = (steps / 10).max(1);
    tcfg.log_every = (steps / 50).max(1);
    tcfg.eval_batches = 8;
    if tcfg.out.exists() {
        std::fs::remove_dir_all(&tcfg.out).map_err(|e| Error::io(&tcfg.out, e))?;
    }
    obs.stage("train", &format!("{steps} steps of {:.2} s", step_s));
    Ok((crate::train::run(&tcfg, false, obs)?, step_s))
}

/// Stage 3: 16 samples from [SOS] into `path`.
fn sample_stage(model: &ImageGpt, proc: &ImageProcessorConfig, sampler: &mut Sampler, path: &Path) -> Result<()> {
    let (h, w) = proc.hw();
    let samples = generate(model, &Prompt::empty(16, h * w), sampler, |_, _| {})?;
    let tiles: Vec<RgbImage> = samples.iter().map(|s| RgbImage::new(w, h, proc.decode(s))).collect();
    crate::viz::save_grid(path, &tiles, 8, 4)
}

/// Stage 4: completions of 8 held-out images (top half kept, 3 each) into `path`: per row the
/// kept half, the completions, the original.
fn complete_stage(
    model: &ImageGpt,
    proc: &ImageProcessorConfig,
    test: &TokenFile,
    sampler: &mut Sampler,
    path: &Path,
) -> Result<()> {
    let (h, w) = proc.hw();
    let n = h * w;
    let originals: Vec<Vec<u32>> =
        (0..8.min(test.count)).map(|i| test.image(i).into_iter().map(u32::from).collect()).collect();
    let keep = (h / 2) * w;
    let rows: Vec<Vec<u32>> = originals.iter().flat_map(|o| std::iter::repeat_n(o.clone(), 3)).collect();
    let done = generate(model, &Prompt::prefix(&rows, keep), sampler, |_, _| {})?;
    let mask: Vec<bool> = (0..n).map(|i| i < keep).collect();
    let mut tiles = Vec::new();
    for (i, o) in originals.iter().enumerate() {
        let orig = RgbImage::new(w, h, proc.decode(o));
        tiles.push(crate::viz::masked(&orig, &mask));
        tiles.extend(done[i * 3..(i + 1) * 3].iter().map(|c| RgbImage::new(w, h, proc.decode(c))));
        tiles.push(orig);
    }
    crate::viz::save_grid(path, &tiles, 5, 4)
}

/// Stage 6 (5 is the probe): a short fine-tune of the trained model into OUT/finetune.
fn finetune_stage(cfg: &DemoConfig, data: &Path, model_dir: &Path, steps: u64) -> Result<FinetuneSummary> {
    let fcfg = FinetuneConfig {
        data: data.to_path_buf(),
        model: model_dir.to_path_buf(),
        out: cfg.out.join("finetune"),
        steps,
        batch: 8,
        lr: 1e-3,
        warmup: (steps / 10).max(1),
        min_lr: 1e-4,
        eval_every: (steps / 4).max(1),
        patience: 4,
        seed: cfg.seed,
        ..Default::default()
    };
    if fcfg.out.exists() {
        std::fs::remove_dir_all(&fcfg.out).map_err(|e| Error::io(&fcfg.out, e))?;
    }
    finetune(&fcfg, false, &mut crate::train::NoObserver)
}
