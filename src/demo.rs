//! `igpt demo`: the whole pipeline on the bundled emoji32 set, within a time budget, ending
//! in one HTML page: prepare (palette, tokens) -> train -> sample -> complete held-out
//! images -> probe every layer -> fine-tune -> report.html.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

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

    // 1. prepare
    obs.stage("prepare", &format!("--data {} -> {}/data", cfg.data, out.display()));
    let t0 = Instant::now();
    let spec: DataSpec = cfg.data.parse()?;
    let mut src = spec.load_at(Some(cfg.size), &|| {})?;
    if let Some(m) = cfg.max_images {
        src.train.items.truncate(m);
        if let Some(t) = src.test.as_mut() {
            t.items.truncate((m / 4).max(4));
        }
    }
    let data = out.join("data");
    let prep = prepare(
        src,
        &data,
        &PrepareConfig { size: cfg.size, colors: cfg.colors, seed: cfg.seed, ..Default::default() },
        &Quiet,
    )?;
    let proc = ImageProcessorConfig::from_file(&data.join("preprocessor_config.json"))?;
    palette_image(&proc).save_png(&out.join("palette.png"))?;
    timings.push(("prepare".to_string(), t0.elapsed().as_secs_f64()));

    // 2. train, with as many steps as the budget allows
    let t0 = Instant::now();
    let train_file = TokenFile::open(&data.join("train.tokens"))?;
    let mut tcfg = TrainConfig {
        data: data.clone(),
        out: out.join("train"),
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
    let train_budget = (0.55 * budget - t_all.elapsed().as_secs_f64()).max(0.0);
    let steps = ((train_budget / step_s) as u64).max(4);
    tcfg.steps = Some(steps);
    tcfg.warmup = (steps / 20).clamp(1, 200);
    tcfg.eval_every = (steps / 10).max(1);
    tcfg.log_every = (steps / 50).max(1);
    tcfg.eval_batches = 8;
    if tcfg.out.exists() {
        std::fs::remove_dir_all(&tcfg.out).map_err(|e| Error::io(&tcfg.out, e))?;
    }
    obs.stage("train", &format!("{steps} steps of {:.2} s", step_s));
    let train = crate::train::run(&tcfg, false, obs)?;
    timings.push(("train".to_string(), t0.elapsed().as_secs_f64()));
    let model_dir = out.join("train").join("best");
    let model = load_model(&model_dir)?;
    let test_file = if data.join("test.tokens").exists() {
        TokenFile::open(&data.join("test.tokens"))?
    } else {
        TokenFile::open(&data.join("val.tokens"))?
    };
    let test_nll_bits = nll_bits(&model, &test_file, 256)?;

    // 3. sample
    obs.stage("sample", "16 images from [SOS]");
    let t0 = Instant::now();
    let (h, w) = proc.hw();
    let n = h * w;
    let mut sampler = Sampler::new(cfg.seed, Sampling::default());
    let samples = generate(&model, &Prompt::empty(16, n), &mut sampler, |_, _| {})?;
    let tiles: Vec<RgbImage> = samples.iter().map(|s| RgbImage::new(w, h, proc.decode(s))).collect();
    crate::viz::save_grid(&out.join("samples.png"), &tiles, 8, 4)?;
    timings.push(("sample".to_string(), t0.elapsed().as_secs_f64()));

    // 4. complete held-out images (top half kept, 3 completions each)
    obs.stage("complete", "8 test images, top half kept, 3 completions each");
    let t0 = Instant::now();
    let originals: Vec<Vec<u32>> =
        (0..8.min(test_file.count)).map(|i| test_file.image(i).into_iter().map(u32::from).collect()).collect();
    let keep = (h / 2) * w;
    let rows: Vec<Vec<u32>> = originals.iter().flat_map(|o| std::iter::repeat_n(o.clone(), 3)).collect();
    let done = generate(&model, &Prompt::prefix(&rows, keep), &mut sampler, |_, _| {})?;
    let mask: Vec<bool> = (0..n).map(|i| i < keep).collect();
    let mut tiles = Vec::new();
    for (i, o) in originals.iter().enumerate() {
        let orig = RgbImage::new(w, h, proc.decode(o));
        tiles.push(crate::viz::masked(&orig, &mask));
        tiles.extend(done[i * 3..(i + 1) * 3].iter().map(|c| RgbImage::new(w, h, proc.decode(c))));
        tiles.push(orig);
    }
    crate::viz::save_grid(&out.join("completions.png"), &tiles, 5, 4)?;
    timings.push(("complete".to_string(), t0.elapsed().as_secs_f64()));

    // 5. probe every layer
    obs.stage("probe", "logistic regression on every layer's pooled features");
    let t0 = Instant::now();
    let opts = ProbeOptions::default();
    let probe = run_probe(&model, &data, &opts, &out.join("probe"), &mut NoProgress)?;
    timings.push(("probe".to_string(), t0.elapsed().as_secs_f64()));

    // 6. fine-tune briefly
    let t0 = Instant::now();
    // what is left of the budget, less the report and the fine-tune's evaluations
    let ft_budget = (budget - t_all.elapsed().as_secs_f64() - 3.0).max(0.0) * 0.8;
    let ft_steps = ((ft_budget / (step_s * 1.1)) as u64).max(4);
    obs.stage("finetune", &format!("{ft_steps} steps"));
    let fcfg = FinetuneConfig {
        data: data.clone(),
        model: model_dir.clone(),
        out: out.join("finetune"),
        steps: ft_steps,
        batch: 8,
        lr: 1e-3,
        warmup: (ft_steps / 10).max(1),
        min_lr: 1e-4,
        eval_every: (ft_steps / 4).max(1),
        patience: 4,
        seed: cfg.seed,
        ..Default::default()
    };
    if fcfg.out.exists() {
        std::fs::remove_dir_all(&fcfg.out).map_err(|e| Error::io(&fcfg.out, e))?;
    }
    let ft = finetune(&fcfg, false, &mut crate::train::NoObserver)?;
    timings.push(("finetune".to_string(), t0.elapsed().as_secs_f64()));

    let report = out.join("report.html");
    let summary =
        DemoSummary { report: report.clone(), timings, prepare: prep, train, probe, finetune: ft, test_nll_bits };
    write_report(&report, cfg, &summary, &model)?;
    let json = serde_json::to_string_pretty(&summary).map_err(|e| Error::Invalid(e.to_string()))?;
    crate::formats::write_atomic(&out.join("demo.json"), json.as_bytes())?;
    Ok(summary)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn write_report(path: &Path, cfg: &DemoConfig, s: &DemoSummary, model: &ImageGpt) -> Result<()> {
    // absolute paths, so that every command runs from any folder
    let out = std::fs::canonicalize(&cfg.out).unwrap_or_else(|_| cfg.out.clone());
    let o = esc(&out.display().to_string());
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{:.1}%", 100.0 * x));
    let p = &s.prepare;
    let mut probe_rows = String::new();
    for r in &s.probe.layers {
        let best = if r.layer == Some(s.probe.best_layer) { " class=\"best\"" } else { "" };
        probe_rows += &format!(
            "<tr{best}><td>{}</td><td>{:.0e}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            r.layer.unwrap_or(0),
            r.lambda,
            pct(Some(r.train_acc)),
            pct(Some(r.val_acc)),
            pct(r.test_acc)
        );
    }
    let b = &s.probe.baseline;
    probe_rows += &format!(
        "<tr class=\"base\"><td>raw pixels</td><td>{:.0e}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
        b.lambda,
        pct(Some(b.train_acc)),
        pct(Some(b.val_acc)),
        pct(b.test_acc)
    );
    let timings: String = s.timings.iter().map(|(n, t)| format!("<tr><td>{n}</td><td>{t:.1} s</td></tr>")).collect();
    let m = &model.config;
    let t = &s.train;
    // the layer is chosen on val, so the claim is made on val; test is shown beside it
    let beats = s.probe.best_val_acc > b.val_acc;
    let headline = format!(
        "The best probe layer (layer {}, chosen on validation) {} the raw-pixel baseline on validation ({} vs {}); on test: {} vs {}.",
        s.probe.best_layer,
        if beats { "beats" } else { "does not beat" },
        pct(Some(s.probe.best_val_acc)),
        pct(Some(b.val_acc)),
        pct(s.probe.best_test_acc),
        pct(b.test_acc)
    );
    let bits = |nats: f64| nats / std::f64::consts::LN_2;
    let html = format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>igpt demo report</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}} img{{image-rendering:pixelated;max-width:100%;border:1px solid #ddd}}
table{{border-collapse:collapse}} td,th{{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}} tr.best{{background:#e8f0ff;font-weight:bold}} tr.base{{color:#666}}
code,pre{{background:#f5f5f5;padding:2px 4px}} h2{{margin-top:1.6em}}</style></head><body>
<h1>igpt demo: ImageGPT on {data}</h1>
<p>A {nl}-layer, {ne}-wide, {nh}-head ImageGPT ({np} parameters) trained from scratch for {steps} steps on {ntr} images of {data}
({h}x{w} pixels, {k} colours), on this machine's CPU. Best validation loss {bv} bits/token; test NLL {tn:.3} bits/token.
{headline}</p>
<h2>1. Palette and tokens</h2>
<p>k-means in [-1, 1] RGB space: {k} colours fitted in {pfs:.1} s ({pit} iterations); inertia {pin:.6} per pixel; PSNR of quantised images {psnr:.2} dB.
Images: {ntr} train / {nva} val / {nte} test.</p>
<img src="palette.png" alt="palette"><p>Originals (left of each pair) and their quantised versions:</p><img src="data/preview.png" alt="preview">
<pre>igpt prepare --data {data} --out {o}/data --size {h} --colors {k} --seed {seed}</pre>
<h2>2. Training</h2>
<p>GPT objective, AdamW (0.9, 0.95), lr 3e-3 with warm-up and cosine decay, batch 8. Final train loss {ftl:.3} bits/token; best val {bv} bits/token (bits = nats / ln 2).
Train (blue, raw and smoothed) and validation (orange) loss in bits/token:</p><img src="train/loss.png" alt="loss curves">
<pre>igpt train --data {o}/data --out {o}/train --n-layer {nl} --n-embd {ne} --n-head {nh} --steps {steps} --batch 8 --lr 3e-3 --min-lr 3e-4 --warmup {wu} --eval-every {ee} --log-every {le} --eval-batches 8 --keep 1 --seed {seed}</pre>
<h2>3. Samples</h2><img src="samples.png" alt="samples">
<pre>igpt sample --model {o}/train/best --num 16 --seed {seed} --out {o}/samples.png</pre>
<h2>4. Completions of held-out test images</h2><p>Per row: the kept top half (rest greyed), three completions, the original.</p><img src="completions.png" alt="completions">
<pre>igpt complete --model {o}/train/best --data {o}/data --count 8 --samples 3 --seed {seed} --out {o}/completions.png</pre>
<h2>5. Linear probes</h2><p>Logistic regression on each layer's mean-pooled, normalised features ({norm}). Accuracy per layer: validation (blue; the layer and &lambda; are chosen on it), test (green), the raw-pixel baseline's validation and test accuracy (dashed).</p>
<table><tr><th>layer</th><th>&lambda;</th><th>train</th><th>val</th><th>test</th></tr>
{probe_rows}</table><img src="probe/probe.png" alt="probe accuracy per layer">
<pre>igpt probe --model {o}/train/best --data {o}/data --out {o}/probe</pre>
<h2>6. Fine-tuning</h2><p>Generative + classification loss, {fts} steps: best validation accuracy {fva}, test accuracy {fta}.</p>
<pre>igpt finetune --model {o}/train/best --data {o}/data --out {o}/finetune --steps {fts} --batch 8 --lr 1e-3 --min-lr 1e-4 --warmup {fwu} --eval-every {fee} --patience 4 --seed {seed}
igpt eval-cls --model {o}/finetune/best --data {o}/data</pre>
<h2>Timings</h2><table>{timings}</table>
<p>Everything above: <code>igpt demo --out {o} --minutes {min}</code> (the budget covers the whole run: {total:.0} s here)</p>
</body></html>"#,
        data = esc(&p.data),
        nl = m.n_layer,
        ne = m.n_embd,
        nh = m.n_head,
        np = model.params.len(),
        steps = t.steps,
        wu = (t.steps / 20).clamp(1, 200),
        ee = (t.steps / 10).max(1),
        le = (t.steps / 50).max(1),
        fwu = (s.finetune.steps / 10).max(1),
        fee = (s.finetune.steps / 4).max(1),
        ntr = p.counts.train,
        nva = p.counts.val,
        nte = p.counts.test,
        h = p.size,
        w = p.size,
        k = p.colors,
        bv = t.best_val_loss.map_or("-".into(), |v| format!("{:.3}", v / std::f64::consts::LN_2)),
        tn = s.test_nll_bits,
        headline = esc(&headline),
        pfs = p.palette_fit_s,
        pit = p.palette_iterations,
        pin = p.palette_inertia_per_pixel,
        psnr = p.psnr_db,
        seed = cfg.seed,
        ftl = bits(t.final_train_loss),
        norm = esc(&s.probe.norm),
        fts = s.finetune.steps,
        fva = pct(Some(s.finetune.best_val_acc)),
        fta = pct(s.finetune.test_acc),
        min = cfg.minutes,
        total = s.timings.iter().map(|t| t.1).sum::<f64>(),
    );
    crate::formats::write_atomic(path, html.as_bytes())
}
