//! `igpt bench`: engine throughput on random weights, with the same flags and defaults as
//! `torch_ref.py`, so the two compare directly.

use std::time::Instant;

use anyhow::Result;
use clap::{Args, Subcommand};
use igpt::ImageGptConfig;
use igpt::backend::Backend;
use igpt::model::{ImageGpt, KvCache, Logits, ModelKind, Workspace};
use igpt::rng::Rng;
use igpt::sample::{Sampler, Sampling};
use serde_json::json;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Forward passes over full sequences (no gradients).
    Forward(BenchArgs),
    /// Training steps: forward, backward, AdamW (default batch 4).
    Train(BenchArgs),
    /// KV-cached sampling of full images from [SOS] (default batch 8).
    Sample(BenchArgs),
    /// The k-means palette fit on emoji32's training pixels (as sklearn_kmeans.py).
    Palette(PaletteArgs),
}

#[derive(Args, Clone)]
pub struct PaletteArgs {
    /// Palette size (clusters).
    #[arg(long, default_value_t = 512)]
    k: usize,
    /// k-means iterations at most.
    #[arg(long, default_value_t = 50)]
    max_iter: usize,
    /// Fit on this many pixels drawn with the seed (0 = all 2,818,048).
    #[arg(long, default_value_t = 0)]
    sample: usize,
    /// Seed of the pixel sample and the k-means start.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Print JSON on stdout: {"mode","k","pixels","fit_s","inertia_per_pixel","peak_rss_mb",...}.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
pub struct BenchArgs {
    #[command(flatten)]
    device: super::DeviceArgs,
    /// Width of the random model.
    #[arg(long, default_value_t = 256)]
    n_embd: usize,
    /// Transformer blocks.
    #[arg(long, default_value_t = 8)]
    n_layer: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 8)]
    n_head: usize,
    /// Image side: sequences of side^2 tokens.
    #[arg(long, default_value_t = 32)]
    side: usize,
    /// Palette size (the vocabulary is colours + 1).
    #[arg(long, default_value_t = 512)]
    colors: usize,
    /// Batch size (default 4 for forward/train, 8 for sample, as torch_ref.py).
    #[arg(long)]
    batch: Option<usize>,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Time every kernel and print where the time goes.
    #[arg(long)]
    profile: bool,
    /// Print JSON on stdout: {"mode","tok_s","step_s","peak_rss_mb",...}.
    #[arg(long)]
    json: bool,
    /// KV cache precision of `bench sample`: f32, f16 or int8.
    #[arg(long, default_value = "f32")]
    kv_cache: igpt::model::KvPrecision,
    /// Weights of the decoding steps of `bench sample`: f32 (packed copy), f32-unpacked or f16.
    #[arg(long, default_value = "f32")]
    weights: igpt::model::WeightPrecision,
    /// Attention: dense | local_2d (as torch_ref.py --attention).
    #[arg(long, default_value = "dense")]
    attention: igpt::config::AttentionKind,
    /// Position code: learned_1d | learned_2d | rope_2d.
    #[arg(long, default_value = "learned_1d")]
    position_embedding: igpt::config::PositionEmbedding,
    /// local_2d: rows above the query's row that stay visible.
    #[arg(long, default_value_t = 8)]
    local_rows: i64,
    /// local_2d: columns either side of the query's column that stay visible.
    #[arg(long, default_value_t = 8)]
    local_cols: i64,
    /// Base of the rope_2d frequencies.
    #[arg(long, default_value_t = 100.0)]
    rope_theta: f64,
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Forward(a) => on_engine!(a.device.engine("bench forward")?, forward(a)),
        BenchCommand::Train(a) => on_engine!(a.device.engine("bench train")?, train(a)),
        BenchCommand::Sample(a) => on_engine!(a.device.engine("bench sample")?, sample(a)),
        BenchCommand::Palette(a) => palette(a),
    }
}

/// The benchmark model: GPT-2 initialisation of the requested shape, in engine `be`.
fn random_model<B: Backend>(be: B, a: &BenchArgs) -> Result<ImageGpt<B>> {
    let mut cfg = ImageGptConfig::with_shape(a.n_layer, a.n_embd, a.n_head).with_image(a.side, a.colors);
    (cfg.attention, cfg.position_embedding, cfg.rope_theta) = (a.attention, a.position_embedding, a.rope_theta);
    (cfg.local_rows, cfg.local_cols) = (a.local_rows, a.local_cols);
    Ok(ImageGpt::init_random(cfg, ModelKind::CausalLm, 0)?.to_engine(be)?)
}

/// Runs `warmup` untimed then `steps` timed calls of `step` (profiling only the timed ones)
/// and returns the median seconds per call (each call waits for the engine to finish).
fn median_step(a: &BenchArgs, mut step: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut times = Vec::new();
    for i in 0..a.warmup + a.steps.max(1) {
        if i == a.warmup {
            igpt::backend::profile::reset();
            igpt::backend::profile::enable(a.profile);
        }
        let t0 = Instant::now();
        step()?;
        if i >= a.warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok(median(times))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn forward<B: Backend>(be: B, mut a: BenchArgs) -> Result<()> {
    a.batch = Some(a.batch.unwrap_or(4));
    let batch = a.batch.unwrap_or(4);
    super::init_threads(a.threads);
    let model = random_model(be, &a)?;
    let t = a.side * a.side;
    let mut rng = Rng::new(1);
    let sos = model.config.sos_token();
    let tokens: Vec<u32> = (0..batch)
        .flat_map(|_| std::iter::once(sos).chain((1..t).map(|_| rng.below(a.colors as u64) as u32)).collect::<Vec<_>>())
        .collect();
    let mut ws = Workspace::<B>::new();
    let step_s = median_step(&a, || {
        model.forward(&mut ws, &tokens, batch, t, Logits::All, false)?;
        std::hint::black_box(&ws.logits);
        Ok(model.be.synchronize()?)
    })?;
    let tok_s = (batch * t) as f64 / step_s;
    report("forward", &model.be, &a, tok_s, step_s)
}

/// Like torch_ref.py `train`: GPT loss, backward, AdamW (lr 1e-3, betas 0.9/0.95), median step.
fn train<B: Backend>(be: B, mut a: BenchArgs) -> Result<()> {
    use igpt::model::train_graph::{Objective, TrainActs};
    use igpt::train::optim::{AdamW, AdamWConfig};
    let batch = a.batch.unwrap_or(4);
    a.batch = Some(batch);
    super::init_threads(a.threads);
    let mut model = random_model(be.clone(), &a)?;
    let t = a.side * a.side;
    let mut rng = Rng::new(1);
    let tokens: Vec<u32> = (0..batch * t).map(|_| rng.below(a.colors as u64) as u32).collect();
    let mut opt = AdamW::on(be.clone(), AdamWConfig::default(), &model.layout)?;
    let mut acts = TrainActs::<B>::new();
    let mut grads = be.zeros(be.size(&model.params))?;
    let step_s = median_step(&a, || {
        be.fill(be.whole_mut(&mut grads), 0.0);
        let loss = model.forward_backward(&mut acts, &mut grads, &tokens, batch, t, Objective::Gpt, None)?;
        opt.update(&mut model.params, &grads, 1e-3);
        std::hint::black_box(loss);
        Ok(be.synchronize()?)
    })?;
    report("train", &be, &a, (batch * t) as f64 / step_s, step_s)
}

/// Like sklearn_kmeans.py: fit on (a sample of) all emoji32 training pixels; inertia per
/// pixel over all of them, in HF's [-1, 1] space.
fn palette(a: PaletteArgs) -> Result<()> {
    use igpt::data::palette::{ColorCounts, KMeansConfig, assign, kmeans};
    super::init_threads(a.threads);
    let src = igpt::data::spec::DataSpec::Emoji32.load(&|| {})?;
    let pixels: Vec<u8> = src.train.items.iter().flat_map(|i| i.image.data.iter().copied()).collect();
    let n_px = pixels.len() / 3;
    let all = ColorCounts::from_pixels(&pixels);
    let fit_on = if a.sample == 0 || a.sample >= n_px {
        all.clone()
    } else {
        let mut rng = Rng::new(a.seed);
        ColorCounts::from_pixels(
            &(0..a.sample)
                .flat_map(|_| {
                    let i = rng.below(n_px as u64) as usize;
                    pixels[i * 3..i * 3 + 3].to_vec()
                })
                .collect::<Vec<_>>(),
        )
    };
    // x / 127.5 - 1 as the reference script (equal to HF's normalisation up to 1 ulp).
    let space = |c: &[u8; 3]| c.map(|v| v as f32 / 127.5 - 1.0);
    let t0 = Instant::now();
    let pts: Vec<[f32; 3]> = fit_on.colors.iter().map(space).collect();
    let w: Vec<f64> = fit_on.counts.iter().map(|&n| n as f64).collect();
    let fit = kmeans(&pts, &w, &KMeansConfig { k: a.k, max_iter: a.max_iter, tol: 1e-5, seed: a.seed }, |_, _| {})?;
    let fit_s = t0.elapsed().as_secs_f64();
    let all_pts: Vec<[f32; 3]> = all.colors.iter().map(space).collect();
    let all_w: Vec<f64> = all.counts.iter().map(|&n| n as f64).collect();
    let (inertia, _) = assign(&all_pts, &all_w, &fit.centers);
    let per_px = inertia / n_px as f64;
    if a.json {
        return super::print_json(
            &json!({"mode": "palette", "k": a.k, "pixels": fit_on.total(), "distinct_colors": fit_on.colors.len(), "iters": fit.iterations, "fit_s": fit_s, "inertia_per_pixel": per_px, "peak_rss_mb": super::peak_rss_mb()}),
        );
    }
    println!(
        "RESULT kmeans kernels={} k={} pixels={} distinct={} iters={} fit_s={fit_s:.2} inertia_per_pixel={per_px:.6}",
        igpt::backend::isa::active(),
        a.k,
        fit_on.total(),
        fit_on.colors.len(),
        fit.iterations
    );
    Ok(())
}

/// Like torch_ref.py `sample`: a 32-token warm-up, then one timed run of full images.
fn sample<B: Backend>(be: B, mut a: BenchArgs) -> Result<()> {
    let batch = a.batch.unwrap_or(8);
    a.batch = Some(batch);
    super::init_threads(a.threads);
    let mut model = random_model(be.clone(), &a)?;
    model.set_decode_weights(a.weights)?;
    let t = a.side * a.side;
    let mut sampler = Sampler::new(2, Sampling::default());
    let mut ws = Workspace::<B>::new();
    if a.attention == igpt::config::AttentionKind::Linear && a.kv_cache != igpt::model::KvPrecision::F32 {
        anyhow::bail!(
            "--kv-cache does not apply to --attention linear (its decoding state S, z is f32 and constant in size); use --kv-cache f32"
        );
    }
    let mut cache = KvCache::on(&be, &model.config, batch, a.kv_cache);
    let v = model.config.n_colors();
    let mut dt = 0.0;
    for (round, n) in [32.min(t), t].into_iter().enumerate() {
        if round == 1 {
            igpt::backend::profile::reset();
            igpt::backend::profile::enable(a.profile);
        }
        cache.reset();
        let mut tok = vec![model.config.sos_token(); batch];
        let t0 = Instant::now();
        for _ in 0..n {
            model.forward_cached(&mut ws, &mut cache, &tok, 1, Logits::Last)?;
            let logits = be.download(&ws.logits, 0..batch * v)?;
            for (r, x) in tok.iter_mut().enumerate() {
                *x = sampler.sample(&logits[r * v..(r + 1) * v]);
            }
            if cache.len() == t {
                break;
            }
        }
        dt = t0.elapsed().as_secs_f64();
    }
    report("sample", &be, &a, (batch * t) as f64 / dt, dt)
}

fn report<B: Backend>(mode: &str, be: &B, a: &BenchArgs, tok_s: f64, step_s: f64) -> Result<()> {
    let rss = super::peak_rss_mb();
    let prof = igpt::backend::profile::report();
    let profile: serde_json::Map<String, serde_json::Value> =
        prof.iter().map(|(n, s, _)| (n.to_string(), json!(s))).collect();
    if a.json {
        return super::print_json(&json!({
            "mode": mode, "kernels": be.name(), "tok_s": tok_s, "step_s": step_s, "peak_rss_mb": rss,
            "n_embd": a.n_embd, "n_layer": a.n_layer, "n_head": a.n_head, "side": a.side,
            "colors": a.colors, "batch": a.batch.unwrap_or(0), "threads": a.threads, "steps": a.steps,
            "kv_cache": format!("{:?}", a.kv_cache).to_lowercase(),
            "weights": a.weights.name(),
            "attention": a.attention.name(), "position_embedding": a.position_embedding.name(),
            "local_rows": a.local_rows, "local_cols": a.local_cols,
            "profile_s": profile,
        }));
    }
    println!(
        "RESULT {mode} kernels={} attention={} pos={} E={} L={} H={} T={} V={} B={} tok_s={tok_s:.1} step_s={step_s:.4} peak_rss_mb={rss:.0}",
        be.name(),
        a.attention.name(),
        a.position_embedding.name(),
        a.n_embd,
        a.n_layer,
        a.n_head,
        a.side * a.side,
        a.colors,
        a.batch.unwrap_or(0)
    );
    if a.profile {
        let total: f64 = prof.iter().map(|p| p.1).sum();
        println!("where the time goes ({} timed steps):", a.steps);
        for (name, secs, calls) in &prof {
            println!("  {name:<12} {:>8.3} s  {:>5.1}%  {calls} calls", secs, 100.0 * secs / total);
        }
    }
    Ok(())
}
