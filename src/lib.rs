//! # igpt — ImageGPT in Rust
//!
//! "Generative Pretraining from Pixels" (Chen, Radford et al., ICML 2020), weight- and
//! logit-compatible with Hugging Face transformers' ImageGPT, computed by its own CPU engine.
//!
//! - [`config`]: `ImageGptConfig`, HF's `config.json` with its defaults and presets.
//! - [`model`]: the transformer and its heads, HF checkpoints in and out.
//! - [`tokenizer`]: HF's image processor (Pillow-exact resize, palette quantisation).
//! - [`backend`]: the numeric kernels (gemm, flash-style attention, norms, activations).
//!
//! ```no_run
//! use igpt::model::{load_model, Logits, Workspace};
//! let model = load_model(std::path::Path::new("tests/fixtures/hf-imagegpt/tiny"))?;
//! let mut ws = Workspace::new();
//! let tokens = vec![16u32; 64]; // [SOS] + ...
//! model.forward(&mut ws, &tokens, 1, 64, Logits::All, false)?;
//! # Ok::<(), igpt::Error>(())
//! ```

pub mod backend;
pub mod config;
pub mod data;
pub mod demo;
pub mod error;
pub mod finetune;
pub mod formats;
pub mod generate;
pub mod logreg;
pub mod model;
pub mod plot;
pub mod probe;
pub mod rng;
pub mod sample;
pub mod study;
pub mod tokenizer;
pub mod train;
pub mod viz;

pub use config::ImageGptConfig;
pub use error::{Error, Result};
