use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use igpt::data::prepare::{PrepareConfig, Progress, prepare};
use igpt::data::spec::DataSpec;

#[derive(Args)]
pub struct PrepareArgs {
    /// emoji32 | fashion-mnist | mnist | cifar10 | cifar100 | folder:DIR | cifar:FILE[,FILE..] | idx:IMAGES,LABELS | parquet:FILE[,FILE..]
    #[arg(long, default_value = "emoji32")]
    data: String,
    /// Download a named set (mnist, fashion-mnist, cifar10, cifar100) into the cache folder
    /// when it is not on this machine; SHA-256-checked.
    #[arg(long)]
    download: bool,
    /// parquet: the image column ({bytes, path} structs or binary) [default: image, img, ...].
    #[arg(long)]
    image_column: Option<String>,
    /// parquet: the integer label column [default: label, labels, fine_label, ...].
    #[arg(long)]
    label_column: Option<String>,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Image side after resizing.
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// Palette size (capped at the number of distinct colours).
    #[arg(long, default_value_t = 512)]
    colors: usize,
    /// Reuse a palette: an HF preprocessor_config.json or a (k, 3) .npy.
    #[arg(long)]
    palette: Option<PathBuf>,
    /// Pixels sampled from the training split for the k-means fit.
    #[arg(long, default_value_t = 2_000_000)]
    palette_sample: usize,
    /// Fraction of the training split held out for validation (stratified by label).
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// Seed of the palette sample, the k-means start and the train/val split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Only the first N training images and N test images, stratified by label (a quick
    /// experiment).
    #[arg(long)]
    limit: Option<usize>,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Print prepare.json on stdout.
    #[arg(long)]
    json: bool,
}

/// An indicatif bar per stage, on stderr.
pub struct Bars(std::sync::Mutex<Option<indicatif::ProgressBar>>);

impl Bars {
    pub fn new() -> Self {
        Bars(std::sync::Mutex::new(None))
    }
}

impl Progress for Bars {
    fn start(&self, stage: &str, total: u64) {
        let bar = indicatif::ProgressBar::new(total).with_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{stage:>9} {{bar:30}} {{pos}}/{{len}} [{{elapsed_precise}}<{{eta_precise}}, {{per_sec}}] {{msg}}"
            ))
            .expect("valid template"),
        );
        *self.0.lock().expect("progress lock") = Some(bar);
    }
    fn inc(&self, n: u64) {
        if let Some(b) = &*self.0.lock().expect("progress lock") {
            b.inc(n);
        }
    }
    fn message(&self, msg: &str) {
        if let Some(b) = &*self.0.lock().expect("progress lock") {
            b.set_message(msg.to_string());
        }
    }
    fn finish(&self) {
        if let Some(b) = self.0.lock().expect("progress lock").take() {
            b.finish_and_clear();
        }
    }
}

/// A byte bar (size, rate, ETA) per downloaded file, on stderr.
#[derive(Default)]
pub struct DownloadBar(std::sync::Mutex<Option<indicatif::ProgressBar>>);

impl igpt::data::download::Transfer for DownloadBar {
    fn start(&self, file: &str, url: &str, total: Option<u64>) {
        eprintln!("fetching {url}");
        let bar = indicatif::ProgressBar::new(total.unwrap_or(0)).with_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{file} {{bar:30}} {{bytes}}/{{total_bytes}} [{{elapsed_precise}}<{{eta_precise}}, {{bytes_per_sec}}]"
            ))
            .expect("valid template"),
        );
        *self.0.lock().expect("progress lock") = Some(bar);
    }
    fn advance(&self, bytes: u64) {
        if let Some(b) = &*self.0.lock().expect("progress lock") {
            b.inc(bytes);
        }
    }
    fn finish(&self) {
        if let Some(b) = self.0.lock().expect("progress lock").take() {
            b.finish_and_clear();
        }
    }
}

pub fn run(a: PrepareArgs) -> Result<()> {
    super::init_threads(a.threads);
    let mut spec: DataSpec = a.data.parse()?;
    if let DataSpec::Parquet(_, cols) = &mut spec {
        cols.image = a.image_column.clone();
        cols.label = a.label_column.clone();
    } else if a.image_column.is_some() || a.label_column.is_some() {
        anyhow::bail!("--image-column and --label-column apply to --data parquet:FILE[,FILE..] only");
    }
    let cfg = PrepareConfig {
        size: a.size,
        colors: a.colors,
        palette: a.palette.clone(),
        val_fraction: a.val_fraction,
        seed: a.seed,
        palette_sample: a.palette_sample,
        limit: a.limit,
        ..Default::default()
    };
    cfg.validate()?;
    igpt::data::prepare::check_replaceable(&a.out)?;
    if a.download {
        let fetched =
            spec.download(&DownloadBar::default()).with_context(|| format!("downloading --data {}", a.data))?;
        if fetched {
            eprintln!(
                "downloaded {} into {}",
                a.data,
                igpt::data::spec::cache_dir(spec.downloadable().unwrap_or("")).display()
            );
        }
    }
    let bars = Bars::new();
    bars.start("decode", 0);
    let source = spec.load_at(Some(a.size), &|| bars.inc(1)).with_context(|| format!("reading --data {}", a.data))?;
    bars.finish();
    let rep = prepare(source, &a.out, &cfg, &bars).with_context(|| format!("preparing into {}", a.out.display()))?;
    if a.json {
        return super::print_json(&serde_json::to_value(&rep)?);
    }
    println!("{} -> {}", rep.data, a.out.display());
    println!(
        "  images    train {} / val {} / test {} at {}x{}",
        rep.counts.train, rep.counts.val, rep.counts.test, rep.size, rep.size
    );
    println!(
        "  palette   {} colours from {} in {:.2} s ({} iterations), inertia/pixel {:.6}, PSNR {:.2} dB",
        rep.colors,
        rep.palette_source,
        rep.palette_fit_s,
        rep.palette_iterations,
        rep.palette_inertia_per_pixel,
        rep.psnr_db
    );
    println!("  time      {:.1} s total, {:.0} images/s", rep.total_s, rep.images_per_s);
    println!("  wrote     preprocessor_config.json, train/val/test.tokens, labels.txt, prepare.json, preview.png");
    Ok(())
}
