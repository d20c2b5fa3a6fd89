use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use igpt::model::{ImageGpt, ModelKind};
use igpt::sample::{Prompt, Sampler, Sampling, generate};
use igpt::tokenizer::{ImageProcessorConfig, RgbImage};
use serde_json::json;

/// Flags shared by `sample` and `complete`.
#[derive(Args, Clone)]
pub struct SamplingArgs {
    #[command(flatten)]
    pub device: super::DeviceArgs,
    /// Random seed: the same seed gives the same images.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Softmax temperature (1 = the model's distribution).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Sample only among the k most likely colours (0 = all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling: the smallest set of colours with probability >= p.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Always take the most likely colour.
    #[arg(long)]
    pub greedy: bool,
    /// Images generated together (one KV cache).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Pixel scale of the PNG grid.
    #[arg(long, default_value_t = 4)]
    pub scale: usize,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// KV cache precision: f32 (exact), f16 (half the cache memory and faster decoding;
    /// logits move by a few 1e-3) or int8 (a quarter; logits move by a few 1e-2).
    #[arg(long, default_value = "f32")]
    pub kv_cache: igpt::model::KvPrecision,
    /// Weights of the decoding steps: f32 (exact; a copy of the block matrices packed for
    /// decoding, 4 bytes more per parameter), f32-unpacked (exact, no copy, slower) or f16 (a
    /// half copy: faster still, logits move by about 1e-3).
    #[arg(long, default_value = "f32")]
    pub weights: igpt::model::WeightPrecision,
}

/// The most images one `sample` or `complete` command makes.
pub const MAX_IMAGES: usize = 100_000;

impl SamplingArgs {
    /// Refuses values that cannot work, naming the flag.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            bail!(
                "--temperature {}: give a finite value > 0 (1 = the model's distribution; --greedy for the most likely colour)",
                self.temperature
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("--top-p {}: give a probability in (0, 1]", self.top_p);
        }
        if self.batch == 0 || self.batch > 4096 {
            bail!("--batch {}: give 1 to 4096 images generated together", self.batch);
        }
        if self.scale == 0 || self.scale > 64 {
            bail!("--scale {}: give a pixel scale from 1 to 64", self.scale);
        }
        Ok(())
    }

    pub fn sampling(&self) -> Sampling {
        Sampling {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            greedy: self.greedy,
            kv_cache: self.kv_cache,
        }
    }
}

#[derive(Args)]
pub struct SampleArgs {
    /// Model directory (weights + preprocessor_config.json).
    #[arg(long)]
    model: PathBuf,
    /// Number of images.
    #[arg(long, default_value_t = 16)]
    num: usize,
    #[command(flatten)]
    s: SamplingArgs,
    /// Output PNG grid.
    #[arg(long, default_value = "samples.png")]
    out: PathBuf,
    /// Also write the token ids as JSON: {"images":[[..]..]}.
    #[arg(long)]
    tokens_out: Option<PathBuf>,
    /// Also write each image as DIR/sample_NNNN.png.
    #[arg(long)]
    save_each: Option<PathBuf>,
    /// Print {"images","tokens","seconds","tokens_per_s","out"} on stdout.
    #[arg(long)]
    json: bool,
}

/// A pixel-step progress bar with tokens/s.
pub fn pixel_bar(total_tokens: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total_tokens);
    let style = indicatif::ProgressStyle::with_template(&format!(
        "{what} {{bar:30}} {{pos}}/{{len}} tokens [{{elapsed_precise}}<{{eta_precise}}, {{per_sec}}]"
    ))
    .expect("valid template");
    bar.set_style(style);
    bar
}

pub fn open_causal(dir: &std::path::Path) -> Result<(igpt::model::ImageGpt, ImageProcessorConfig)> {
    let model = super::open_model(dir)?;
    if model.kind != ModelKind::CausalLm {
        bail!(
            "{}: sampling needs a causal model (ImageGPTForCausalImageModeling), this is {}",
            dir.display(),
            model.kind.hf_architecture()
        );
    }
    if !model.config.is_causal() {
        bail!(
            "{}: this is a BERT model (objective \"bert\", bidirectional attention); sampling and completion \
             predict pixels in raster order and need a GPT model: train one with --objective gpt",
            dir.display()
        );
    }
    let proc = super::open_processor(dir)?;
    let (h, w) = proc.hw();
    if h * w != model.config.n_positions || proc.n_clusters() != model.config.n_colors() {
        bail!(
            "{}: palette ({} colours, {h}x{w}) does not match the model ({} colours, {} positions)",
            dir.display(),
            proc.n_clusters(),
            model.config.n_colors(),
            model.config.n_positions
        );
    }
    Ok((model, proc))
}

pub fn run(a: SampleArgs) -> Result<()> {
    let engine = a.s.device.engine("sample")?;
    a.s.validate()?;
    if a.num == 0 || a.num > MAX_IMAGES {
        bail!("--num {}: give 1 to {MAX_IMAGES} images", a.num);
    }
    super::init_threads(a.s.threads);
    let (model, proc) = open_causal(&a.model)?;
    let (h, w) = proc.hw();
    let n = model.config.n_positions;
    let mut sampler = Sampler::new(a.s.seed, a.s.sampling());
    let bar = pixel_bar((a.num * n) as u64, "sample");
    let t0 = std::time::Instant::now();
    let prompts: Vec<Prompt> =
        (0..a.num).step_by(a.s.batch.max(1)).map(|i| Prompt::empty(a.s.batch.max(1).min(a.num - i), n)).collect();
    let images = with_model!(engine, model, generate_all(a.s.weights, &prompts, &mut sampler, &bar))?;
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let tiles: Vec<RgbImage> = images.iter().map(|t| RgbImage::new(w, h, proc.decode(t))).collect();
    let cols = (a.num as f64).sqrt().ceil() as usize;
    igpt::viz::save_grid(&a.out, &tiles, cols, a.s.scale).with_context(|| format!("writing {}", a.out.display()))?;
    if let Some(p) = &a.tokens_out {
        std::fs::write(p, serde_json::to_string(&json!({ "images": images }))?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(dir) = &a.save_each {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (i, t) in tiles.iter().enumerate() {
            t.save_png(&dir.join(format!("sample_{i:04}.png")))?;
        }
    }
    let rate = (a.num * n) as f64 / secs;
    if a.json {
        let v = json!({"images": a.num, "tokens": a.num * n, "seconds": secs, "tokens_per_s": rate, "out": a.out, "tokens_out": a.tokens_out, "save_each": a.save_each});
        return super::print_json(&v);
    }
    println!("{} images in {:.1} s ({:.0} tokens/s) -> {}", a.num, secs, rate, a.out.display());
    Ok(())
}

/// Every prompt's images, batch by batch, on the model's engine (its decoding weights set
/// to `weights` first), with the bar counting pixels.
pub fn generate_all<B: igpt::backend::Backend>(
    mut model: ImageGpt<B>,
    weights: igpt::model::WeightPrecision,
    prompts: &[Prompt],
    sampler: &mut Sampler,
    bar: &indicatif::ProgressBar,
) -> Result<Vec<Vec<u32>>> {
    model.set_decode_weights(weights)?;
    let n = model.config.n_positions;
    let mut images: Vec<Vec<u32>> = Vec::new();
    for prompt in prompts {
        let (done, b) = (images.len(), prompt.known.len());
        images.extend(generate(&model, prompt, sampler, |i, _| bar.set_position((done * n + b * i) as u64))?);
    }
    Ok(images)
}
