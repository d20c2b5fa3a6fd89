//! `igpt prepare`: images -> R x R -> palette -> token files, plus a report and a preview.
//!
//! Writes into the output folder: `preprocessor_config.json` (the palette, as HF's image
//! processor reads it), `train.tokens`, `val.tokens` (carved from train, stratified by label,
//! seeded), `test.tokens` (the data set's own test split, when it has one), `labels.txt`,
//! `prepare.json` (counts, palette quality, timings) and `preview.png`.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use super::palette::{self, ColorCounts, KMeansConfig};
use super::spec::Source;
use super::{RawSplit, tokens};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tokenizer::{ImageProcessorConfig, RgbImage, resize_bilinear};

/// Settings of `prepare`.
#[derive(Clone, Debug)]
pub struct PrepareConfig {
    pub size: usize,
    pub colors: usize,
    /// Reuse this palette instead of fitting one.
    pub palette: Option<std::path::PathBuf>,
    pub val_fraction: f64,
    pub seed: u64,
    /// Pixels sampled from the training split for the k-means fit.
    pub palette_sample: usize,
    pub kmeans_max_iter: usize,
    /// Only the first N images of the training set and of the test set (stratified by label).
    pub limit: Option<usize>,
}

impl Default for PrepareConfig {
    fn default() -> Self {
        PrepareConfig {
            size: 32,
            colors: 512,
            palette: None,
            val_fraction: 0.1,
            seed: 0,
            palette_sample: 2_000_000,
            kmeans_max_iter: 100,
            limit: None,
        }
    }
}

/// The largest `--size` (a 1024x1024 image is a million tokens).
pub const MAX_SIZE: usize = 1024;
/// The most colours a palette may have: token ids are u16 and one id is the SOS token.
pub const MAX_COLORS: usize = 65_535;

impl PrepareConfig {
    /// Refuses values that cannot work, naming the flag.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Invalid(msg));
        if !(1..=MAX_SIZE).contains(&self.size) {
            return bad(format!("--size {}: give an image side from 1 to {MAX_SIZE}", self.size));
        }
        if !(1..=MAX_COLORS).contains(&self.colors) {
            return bad(format!(
                "--colors {}: give a palette size from 1 to {MAX_COLORS} (the paper uses 512)",
                self.colors
            ));
        }
        if !(self.val_fraction > 0.0 && self.val_fraction < 1.0) {
            return bad(format!(
                "--val-fraction {}: give a fraction between 0 and 1 (exclusive), e.g. 0.1",
                self.val_fraction
            ));
        }
        if self.limit == Some(0) {
            return bad("--limit 0: give at least 1 image".into());
        }
        if self.palette_sample == 0 || self.kmeans_max_iter == 0 {
            return bad("--palette-sample must be at least 1".into());
        }
        Ok(())
    }
}

/// Progress of the slow stages, drawn by the caller (the library prints nothing).
pub trait Progress: Sync {
    fn start(&self, stage: &str, total: u64);
    fn inc(&self, n: u64);
    fn message(&self, _msg: &str) {}
    fn finish(&self);
}

/// No progress display.
pub struct Quiet;
impl Progress for Quiet {
    fn start(&self, _: &str, _: u64) {}
    fn inc(&self, _: u64) {}
    fn finish(&self) {}
}

#[derive(Clone, Debug, Serialize)]
pub struct SplitCounts {
    pub train: usize,
    pub val: usize,
    pub test: usize,
}

/// What `prepare.json` records.
#[derive(Clone, Debug, Serialize)]
pub struct PrepareReport {
    pub data: String,
    pub size: usize,
    pub colors: usize,
    pub counts: SplitCounts,
    pub classes: Vec<String>,
    pub class_counts_train: Vec<usize>,
    pub palette_source: String,
    pub palette_fit_s: f64,
    pub palette_iterations: usize,
    pub palette_sample_pixels: usize,
    pub palette_distinct_colors: usize,
    /// Mean squared distance of every training pixel to its palette colour, in [-1, 1] space.
    pub palette_inertia_per_pixel: f64,
    /// PSNR (dB) of the quantised training images against the resized ones.
    pub psnr_db: f64,
    pub read_s: f64,
    pub resize_s: f64,
    pub tokenize_s: f64,
    pub total_s: f64,
    pub images_per_s: f64,
    pub seed: u64,
    pub val_fraction: f64,
}

/// Resized images of one split, (N, R, R, 3), with labels.
struct Split {
    pixels: Vec<u8>,
    labels: Vec<Option<u16>>,
}

fn resize_split(raw: RawSplit, size: usize, progress: &dyn Progress) -> Split {
    let labels = raw.items.iter().map(|i| i.label).collect();
    let per: Vec<Vec<u8>> = raw
        .items
        .into_par_iter()
        .map(|it| {
            let out = if (it.image.width, it.image.height) == (size, size) {
                it.image.data
            } else {
                resize_bilinear(&it.image.data, (it.image.width, it.image.height), (size, size), 3)
            };
            progress.inc(1);
            out
        })
        .collect();
    Split { pixels: per.concat(), labels }
}

/// Stratified split of `labels` into (train, val) index lists, seeded.
pub fn stratified_split(labels: &[Option<u16>], val_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut groups: HashMap<Option<u16>, Vec<usize>> = HashMap::new();
    for (i, l) in labels.iter().enumerate() {
        groups.entry(*l).or_default().push(i);
    }
    let mut keys: Vec<Option<u16>> = groups.keys().copied().collect();
    keys.sort();
    let mut rng = Rng::new(seed ^ 0x5eed_5b11_u64);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for k in keys {
        let mut idx = groups.remove(&k).expect("key exists");
        for i in (1..idx.len()).rev() {
            idx.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let nv = (idx.len() as f64 * val_fraction).round() as usize;
        val.extend_from_slice(&idx[..nv]);
        train.extend_from_slice(&idx[nv..]);
    }
    train.sort_unstable();
    val.sort_unstable();
    (train, val)
}

fn rgb_key(p: &[u8]) -> u32 {
    u32::from_le_bytes([p[0], p[1], p[2], 0])
}

/// The files `prepare` writes: a folder holding only these (or nothing) may be replaced.
pub const OUTPUT_FILES: [&str; 7] = [
    "train.tokens",
    "val.tokens",
    "test.tokens",
    "preprocessor_config.json",
    "labels.txt",
    "preview.png",
    "prepare.json",
];

/// Keeps the first `n` items of a split, stratified by label (`--limit`).
fn limit_split(split: &mut RawSplit, n: usize) {
    if n >= split.items.len() {
        return;
    }
    let labels: Vec<Option<u16>> = split.items.iter().map(|i| i.label).collect();
    let keep: std::collections::HashSet<usize> = super::stratified_first(&labels, n).into_iter().collect();
    let mut i = 0;
    split.items.retain(|_| {
        i += 1;
        keep.contains(&(i - 1))
    });
}

/// Refuses an `--out` folder that holds files `prepare` did not write (they would be lost).
pub fn check_replaceable(out: &Path) -> Result<()> {
    let Ok(rd) = std::fs::read_dir(out) else {
        return if out.exists() {
            Err(Error::Invalid(format!("--out {}: not a folder; choose a new folder", out.display())))
        } else {
            Ok(())
        };
    };
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if !OUTPUT_FILES.contains(&name.as_str()) {
            return Err(Error::Invalid(format!(
                "--out {}: the folder holds `{name}`, which `igpt prepare` did not write; choose a new or empty folder (a prepared folder is replaced as a whole)",
                out.display()
            )));
        }
    }
    Ok(())
}

/// Runs the whole preparation into `out`, all or nothing: every file is written into a
/// hidden staging folder beside `out`, which then replaces `out` in one step (a kill at any
/// moment leaves either the previous folder or the new one, never a palette and tokens
/// that disagree).
pub fn prepare(source: Source, out: &Path, cfg: &PrepareConfig, progress: &dyn Progress) -> Result<PrepareReport> {
    cfg.validate()?;
    check_replaceable(out)?;
    let Some(name) = out.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Err(Error::Invalid(format!("--out {}: name the data folder (e.g. data/mine)", out.display())));
    };
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    crate::formats::atomic::clean_leftovers(parent, Some(&name))?;
    let stage = crate::formats::atomic::staging_dir(out)?;
    let mut source = source;
    if let Some(n) = cfg.limit {
        limit_split(&mut source.train, n);
        if let Some(t) = source.test.as_mut() {
            limit_split(t, n);
        }
    }
    let report = prepare_into(source, &stage, cfg, progress);
    if report.is_err() {
        let _ = std::fs::remove_dir_all(&stage);
    }
    let report = report?;
    crate::formats::atomic::replace_dir(&stage, out)?;
    Ok(report)
}

/// The palette's cluster centres in model space: read from `cfg.palette`, or fitted by
/// k-means on a seeded sample of the training pixels (all of them when fewer than
/// `cfg.palette_sample`). Returns (centres, where they came from, k-means iterations,
/// pixels sampled).
fn fit_palette(
    pixels: &[u8],
    train_counts: &ColorCounts,
    base: &ImageProcessorConfig,
    cfg: &PrepareConfig,
    progress: &dyn Progress,
) -> Result<(Vec<[f64; 3]>, String, usize, usize)> {
    let to_space = |c: [u8; 3]| palette::to_model_space(base, c);
    Ok(match &cfg.palette {
        Some(p) => (palette::read_palette(p)?, p.display().to_string(), 0, 0),
        None => {
            let n_px = pixels.len() / 3;
            let sample_n = cfg.palette_sample.min(n_px);
            let sample = if sample_n == n_px {
                train_counts.clone()
            } else {
                let mut rng = Rng::new(cfg.seed);
                let picked: Vec<u8> = (0..sample_n)
                    .flat_map(|_| {
                        let i = rng.below(n_px as u64) as usize;
                        pixels[i * 3..i * 3 + 3].to_vec()
                    })
                    .collect();
                ColorCounts::from_pixels(&picked)
            };
            let pts: Vec<[f32; 3]> = sample.colors.iter().map(|&c| to_space(c)).collect();
            let w: Vec<f64> = sample.counts.iter().map(|&n| n as f64).collect();
            let kcfg = KMeansConfig { k: cfg.colors, max_iter: cfg.kmeans_max_iter, tol: 1e-5, seed: cfg.seed };
            progress.start("k-means", kcfg.max_iter as u64);
            let fit = palette::kmeans(&pts, &w, &kcfg, |_, inertia| {
                progress.inc(1);
                progress.message(&format!("inertia/pixel {:.6}", inertia / sample_n as f64));
            })?;
            progress.finish();
            let clusters = fit.centers.iter().map(|c| [c[0] as f64, c[1] as f64, c[2] as f64]).collect();
            (
                clusters,
                format!("k-means (k = {}, {} distinct colours)", fit.centers.len(), sample.colors.len()),
                fit.iterations,
                sample_n,
            )
        }
    })
}

/// The token of every distinct 8-bit colour of the splits (the nearest palette colour,
/// exactly as HF's processor), keyed by `rgb_key`.
fn token_table(
    proc: &ImageProcessorConfig,
    train_counts: &ColorCounts,
    others: [Option<&Split>; 2],
    progress: &dyn Progress,
) -> HashMap<u32, u16> {
    let mut distinct: Vec<u32> = train_counts.colors.iter().map(|c| rgb_key(c)).collect();
    for s in others.into_iter().flatten() {
        distinct.extend(s.pixels.chunks_exact(3).map(rgb_key));
    }
    distinct.sort_unstable();
    distinct.dedup();
    progress.start("tokenize", distinct.len() as u64);
    let lut = distinct
        .par_iter()
        .map(|&k| {
            let b = k.to_le_bytes();
            let t = proc.nearest(proc.normalize_pixel([b[0], b[1], b[2]])) as u16;
            progress.inc(1);
            (k, t)
        })
        .collect();
    progress.finish();
    lut
}

/// preview.png: the first `n` training images (R x R each) beside their palette decodings.
fn save_preview(path: &Path, pixels: &[u8], decoded: &[u8], r: usize, n: usize) -> Result<()> {
    let img = |px: &[u8], i: usize| RgbImage::new(r, r, px[i * r * r * 3..(i + 1) * r * r * 3].to_vec());
    let tiles: Vec<RgbImage> = (0..n).flat_map(|i| [img(pixels, i), img(decoded, i)]).collect();
    crate::viz::save_grid(path, &tiles, 8, (128 / r).max(1))
}

fn prepare_into(source: Source, out: &Path, cfg: &PrepareConfig, progress: &dyn Progress) -> Result<PrepareReport> {
    let t_start = Instant::now();
    let r = cfg.size;
    let classes = source.train.classes.clone();
    let n_images = source.train.items.len() + source.test.as_ref().map_or(0, |t| t.items.len());
    if source.train.items.is_empty() {
        return Err(Error::Invalid(format!("data set {} has no training images", source.name)));
    }
    let read_s = t_start.elapsed().as_secs_f64();

    // 1. Resize every image to R x R (Pillow-exact bilinear).
    let t0 = Instant::now();
    progress.start("resize", n_images as u64);
    let full = resize_split(source.train, r, progress);
    let test = source.test.map(|t| resize_split(t, r, progress));
    progress.finish();
    let resize_s = t0.elapsed().as_secs_f64();

    // 2. Train / val split (stratified by label, seeded).
    let (tr_idx, va_idx) = stratified_split(&full.labels, cfg.val_fraction, cfg.seed);
    let take = |idx: &[usize]| Split {
        pixels: idx.iter().flat_map(|&i| full.pixels[i * r * r * 3..(i + 1) * r * r * 3].iter().copied()).collect(),
        labels: idx.iter().map(|&i| full.labels[i]).collect(),
    };
    let (train, val) = (take(&tr_idx), take(&va_idx));
    drop(full);
    if train.labels.is_empty() || val.labels.is_empty() {
        return Err(Error::Invalid(format!(
            "--val-fraction {} of {} images leaves the {} split empty; give more images (--limit) or another --val-fraction",
            cfg.val_fraction,
            train.labels.len() + val.labels.len(),
            if val.labels.is_empty() { "validation" } else { "training" }
        )));
    }

    // 3. Palette: fitted on a seeded pixel sample of the training split, or read.
    let train_counts = ColorCounts::from_pixels(&train.pixels);
    let base = ImageProcessorConfig::new(vec![], r, r);
    let to_space = |c: [u8; 3]| palette::to_model_space(&base, c);
    let t0 = Instant::now();
    let (clusters, palette_source, iterations, sample_n) =
        fit_palette(&train.pixels, &train_counts, &base, cfg, progress)?;
    let palette_fit_s = t0.elapsed().as_secs_f64();
    let proc = ImageProcessorConfig::new(clusters, r, r);
    proc.save(&out.join("preprocessor_config.json"))?;

    // 4. Tokens: the nearest colour of each distinct 8-bit colour, exactly as HF's processor.
    let t0 = Instant::now();
    let lut = token_table(&proc, &train_counts, [Some(&val), test.as_ref()], progress);
    let tokenize = |s: &Split| -> Vec<u16> { s.pixels.chunks_exact(3).map(|p| lut[&rgb_key(p)]).collect() };
    let labels_of = |s: &Split| -> Option<Vec<u16>> { s.labels.iter().copied().collect::<Option<Vec<u16>>>() };
    let train_tok = tokenize(&train);
    let k = proc.n_clusters();
    tokens::write(&out.join("train.tokens"), &train_tok, labels_of(&train).as_deref(), (r, r), k)?;
    tokens::write(&out.join("val.tokens"), &tokenize(&val), labels_of(&val).as_deref(), (r, r), k)?;
    if let Some(t) = &test {
        tokens::write(&out.join("test.tokens"), &tokenize(t), labels_of(t).as_deref(), (r, r), k)?;
    }
    let tokenize_s = t0.elapsed().as_secs_f64();

    // 5. Quality of the palette over every training pixel.
    let pts: Vec<[f32; 3]> = train_counts.colors.iter().map(|&c| to_space(c)).collect();
    let w: Vec<f64> = train_counts.counts.iter().map(|&n| n as f64).collect();
    let centers: Vec<[f32; 3]> = proc.clusters.iter().map(|c| [c[0] as f32, c[1] as f32, c[2] as f32]).collect();
    let (inertia, _) = palette::assign(&pts, &w, &centers);
    let n_px = train_counts.total() as f64;
    let decoded = proc.decode(&train_tok.iter().map(|&t| t as u32).collect::<Vec<_>>());
    let mse = decoded.iter().zip(&train.pixels).map(|(&a, &b)| ((a as f64) - (b as f64)).powi(2)).sum::<f64>()
        / decoded.len() as f64;
    let psnr_db = if mse > 0.0 { 10.0 * (255.0f64 * 255.0 / mse).log10() } else { f64::INFINITY };

    // 6. labels.txt, preview.png, prepare.json.
    crate::formats::write_atomic(&out.join("labels.txt"), (classes.join("\n") + "\n").as_bytes())?;
    save_preview(&out.join("preview.png"), &train.pixels, &decoded, r, 16.min(train.labels.len()))?;
    let mut class_counts_train = vec![0; classes.len()];
    for l in train.labels.iter().flatten() {
        if let Some(c) = class_counts_train.get_mut(*l as usize) {
            *c += 1;
        }
    }
    let total_s = t_start.elapsed().as_secs_f64();
    let report = PrepareReport {
        data: source.name,
        size: r,
        colors: k,
        counts: SplitCounts {
            train: train.labels.len(),
            val: val.labels.len(),
            test: test.as_ref().map_or(0, |t| t.labels.len()),
        },
        classes,
        class_counts_train,
        palette_source,
        palette_fit_s,
        palette_iterations: iterations,
        palette_sample_pixels: sample_n,
        palette_distinct_colors: train_counts.colors.len(),
        palette_inertia_per_pixel: inertia / n_px,
        psnr_db,
        read_s,
        resize_s,
        tokenize_s,
        total_s,
        images_per_s: n_images as f64 / total_s,
        seed: cfg.seed,
        val_fraction: cfg.val_fraction,
    };
    let json = serde_json::to_string_pretty(&report).map_err(|e| Error::Invalid(e.to_string()))?;
    crate::formats::write_atomic(&out.join("prepare.json"), json.as_bytes())?;
    Ok(report)
}
