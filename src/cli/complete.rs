use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use igpt::sample::{Prompt, Sampler};
use igpt::tokenizer::RgbImage;

use super::sample::{SamplingArgs, generate_all, open_causal, pixel_bar};

#[derive(Args)]
pub struct CompleteArgs {
    /// Model directory (weights + preprocessor_config.json).
    #[arg(long)]
    model: PathBuf,
    /// Images to complete (resized and quantised with the model's palette).
    #[arg(long, num_args = 1.., required_unless_present = "data")]
    images: Vec<PathBuf>,
    /// Or: a prepared data folder; its held-out images are completed (test.tokens, else val.tokens).
    #[arg(long, conflicts_with = "images")]
    data: Option<PathBuf>,
    /// With --data: how many images.
    #[arg(long, default_value_t = 8)]
    count: usize,
    /// Rows kept from the top of each image (default: half).
    #[arg(long)]
    keep_rows: Option<usize>,
    /// Pixels kept in raster order (overrides --keep-rows).
    #[arg(long)]
    keep_tokens: Option<usize>,
    /// Keep the left half of every row and sample the right half (known pixels are forced
    /// as the raster scan reaches them).
    #[arg(long)]
    mask_right: bool,
    /// Completions per image.
    #[arg(long, default_value_t = 4)]
    samples: usize,
    #[command(flatten)]
    s: SamplingArgs,
    /// Output PNG grid: per image, the kept part (rest greyed), the completions, the original.
    #[arg(long, default_value = "completions.png")]
    out: PathBuf,
    /// Print {"images","completions","kept_tokens","out","tokens"} on stdout (tokens: per
    /// image, its completions' token ids).
    #[arg(long)]
    json: bool,
}

pub fn run(a: CompleteArgs) -> Result<()> {
    let engine = a.s.device.engine("complete")?;
    a.s.validate()?;
    for (flag, n) in [("--count", a.count), ("--samples", a.samples)] {
        if n == 0 || n > super::sample::MAX_IMAGES {
            anyhow::bail!("{flag} {n}: give 1 to {}", super::sample::MAX_IMAGES);
        }
    }
    super::init_threads(a.s.threads);
    let (model, proc) = open_causal(&a.model)?;
    let (h, w) = proc.hw();
    let n = h * w;
    let originals: Vec<Vec<u32>> = match &a.data {
        Some(d) => {
            let f = if d.join("test.tokens").exists() { d.join("test.tokens") } else { d.join("val.tokens") };
            let tf = super::open_tokens_for(&f, &proc)?;
            (0..a.count.min(tf.count)).map(|i| tf.image(i).into_iter().map(u32::from).collect()).collect()
        }
        None => super::encode_images(&a.images, &proc)?,
    };
    let keep = match (a.keep_tokens, a.keep_rows) {
        (Some(k), _) => k,
        (None, Some(r)) => r * w,
        (None, None) => (h / 2) * w,
    };
    if keep > n {
        bail!("--keep-tokens/--keep-rows keeps {keep} pixels but images have only {n}");
    }
    let known_mask: Vec<bool> = (0..n).map(|i| if a.mask_right { i % w < w / 2 } else { i < keep }).collect();
    // One prompt row per (image, sample).
    let rows: Vec<Vec<Option<u32>>> = originals
        .iter()
        .flat_map(|o| {
            let row: Vec<Option<u32>> = o.iter().zip(&known_mask).map(|(&t, &k)| k.then_some(t)).collect();
            std::iter::repeat_n(row, a.samples.max(1))
        })
        .collect();
    let mut sampler = Sampler::new(a.s.seed, a.s.sampling());
    let bar = pixel_bar((rows.len() * n) as u64, "complete");
    let prompts: Vec<Prompt> = rows.chunks(a.s.batch.max(1)).map(|c| Prompt { known: c.to_vec() }).collect();
    let completions = with_model!(engine, model, generate_all(a.s.weights, &prompts, &mut sampler, &bar))?;
    bar.finish_and_clear();
    let k = a.samples.max(1);
    let mut tiles = Vec::new();
    for (i, o) in originals.iter().enumerate() {
        let orig = RgbImage::new(w, h, proc.decode(o));
        tiles.push(igpt::viz::masked(&orig, &known_mask));
        for c in &completions[i * k..(i + 1) * k] {
            tiles.push(RgbImage::new(w, h, proc.decode(c)));
        }
        tiles.push(orig);
    }
    igpt::viz::save_grid(&a.out, &tiles, k + 2, a.s.scale).with_context(|| format!("writing {}", a.out.display()))?;
    if a.json {
        let tokens: Vec<&[Vec<u32>]> = completions.chunks(k).collect();
        let kept = known_mask.iter().filter(|&&x| x).count();
        let v = serde_json::json!({"images": originals.len(), "completions": k, "kept_tokens": kept, "out": a.out, "tokens": tokens});
        return super::print_json(&v);
    }
    println!("{} images x {} completions -> {}", originals.len(), k, a.out.display());
    Ok(())
}
