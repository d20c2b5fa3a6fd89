//! One module per subcommand; each has an `Args` struct (its doc comments are the help)
//! and a `run` function.

/// Calls the function `$f`, generic over the engine, with the engine `$engine` (an
/// [`Engine`]) first and then the other arguments.
macro_rules! on_engine {
    ($engine:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $engine {
            $crate::cli::Engine::Cpu(be) => $f(be, $($arg),*),
            #[cfg(feature = "cuda")]
            $crate::cli::Engine::Cuda(be) => $f(be, $($arg),*),
        }
    };
}

/// Calls `$f` with `$model` (an `ImageGpt` on the CPU) in the engine `$engine` (an
/// [`Engine`]: the CPU's model itself, else a copy in the GPU's memory) and the other
/// arguments.
macro_rules! with_model {
    ($engine:expr, $model:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $engine {
            $crate::cli::Engine::Cpu(_) => $f($model, $($arg),*),
            #[cfg(feature = "cuda")]
            $crate::cli::Engine::Cuda(be) => $f($model.to_engine(be)?, $($arg),*),
        }
    };
}

pub mod bench;
pub mod complete;
pub mod convert;
pub mod demo;
pub mod encode;
pub mod eval;
pub mod finetune;
pub mod info;
pub mod prepare;
pub mod probe;
pub mod sample;
pub mod study;
pub mod train;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use igpt::model::{ImageGpt, load_model};
use igpt::tokenizer::{ImageProcessorConfig, RgbImage};

/// `--device`: where a command runs.
#[derive(clap::Args, Clone, Debug)]
pub struct DeviceArgs {
    /// Where to run: cpu, or cuda[:N] (the N-th NVIDIA GPU, 0 first; needs a build with
    /// `--features cuda` and the NVIDIA driver; `igpt info --device cuda` says what is there).
    #[arg(long, default_value = "cpu")]
    pub device: igpt::backend::Device,
}

impl DeviceArgs {
    /// Refuses a device `command` cannot run on here, saying what to change.
    pub fn check(&self, command: &str) -> Result<()> {
        Ok(self.device.check(command)?)
    }

    /// The engine of `--device`, started, for a command that runs on every engine.
    pub fn engine(&self, command: &str) -> Result<Engine> {
        match self.device {
            igpt::backend::Device::Cpu => Ok(Engine::Cpu(igpt::backend::Cpu)),
            #[cfg(feature = "cuda")]
            igpt::backend::Device::Cuda(n) => {
                Ok(Engine::Cuda(igpt::backend::cuda::Cuda::new(n).with_context(|| format!("`{command}`"))?))
            }
            #[cfg(not(feature = "cuda"))]
            igpt::backend::Device::Cuda(_) => {
                self.check(command)?;
                anyhow::bail!("{}: not an engine of this build", self.device)
            }
        }
    }
}

/// A started engine (`--device`).
pub enum Engine {
    Cpu(igpt::backend::Cpu),
    #[cfg(feature = "cuda")]
    Cuda(igpt::backend::cuda::Cuda),
}

/// Loads a model directory with a readable error.
pub fn open_model(dir: &Path) -> Result<ImageGpt> {
    load_model(dir).with_context(|| format!("loading model from {}", dir.display()))
}

/// Opens a token file made with `proc`'s palette (same size and colour count), or says
/// which file does not match.
pub fn open_tokens_for(path: &Path, proc: &ImageProcessorConfig) -> Result<igpt::data::tokens::TokenFile> {
    let f = igpt::data::tokens::TokenFile::open(path)?;
    let (h, w) = proc.hw();
    if (f.height, f.width, f.colors) != (h, w, proc.n_clusters()) {
        anyhow::bail!(
            "{}: {}x{} images of {} colours, the model's palette is {h}x{w} with {}; prepare the data with the model's palette",
            path.display(),
            f.height,
            f.width,
            f.colors,
            proc.n_clusters()
        );
    }
    Ok(f)
}

/// Loads `DIR/preprocessor_config.json` (the palette).
pub fn open_processor(dir: &Path) -> Result<ImageProcessorConfig> {
    let p = dir.join("preprocessor_config.json");
    if !p.exists() {
        anyhow::bail!(
            "{}: no preprocessor_config.json (the palette); copy the one the model was trained with into the model directory",
            dir.display()
        );
    }
    Ok(ImageProcessorConfig::from_file(&p)?)
}

/// Decodes every image, with the path in the error.
pub fn open_images(paths: &[PathBuf]) -> Result<Vec<RgbImage>> {
    if paths.is_empty() {
        anyhow::bail!("no images given");
    }
    paths.iter().map(|p| RgbImage::open(p).map_err(anyhow::Error::from)).collect()
}

/// Reads and tokenises images with the model's processor, naming the file that fails.
pub fn encode_images(paths: &[PathBuf], proc: &ImageProcessorConfig) -> Result<Vec<Vec<u32>>> {
    let imgs = open_images(paths)?;
    paths.iter().zip(&imgs).map(|(p, im)| proc.encode(im).with_context(|| p.display().to_string())).collect()
}

/// Sets up the rayon pool once for the whole command (0 = all cores).
/// Every worker flushes denormal floats to zero (see `backend::math::flush_denormals`).
pub fn init_threads(threads: usize) {
    igpt::backend::math::flush_denormals();
    // A second call fails harmlessly (the pool already exists).
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .start_handler(|_| igpt::backend::math::flush_denormals())
        .build_global();
}

/// Peak resident memory of this process in MiB (Linux VmHWM), 0 where unknown.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

pub fn print_json(v: &serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
