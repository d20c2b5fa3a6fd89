//! The ImageGPT model: parameter layout under HF key names, the forward pass, and
//! checkpoint I/O (`weights`, on the readers and writers of `crate::formats`).
//!
//! Key tree of an `ImageGPTForCausalImageModeling` checkpoint:
//! `transformer.{wte,wpe}.weight`, `transformer.h.{i}.{ln_1,ln_2}.weight`,
//! `transformer.h.{i}.attn.{c_attn,c_proj}.{weight,bias}`,
//! `transformer.h.{i}.mlp.{c_fc,c_proj}.{weight,bias}`, `transformer.ln_f.weight`,
//! `lm_head.weight`; classifiers have `score.weight`; bare models drop `transformer.`.

pub mod decode_matrices;
pub mod decode_weights;
pub mod gpt;
pub mod kv_cache;
pub mod params;
pub mod train_graph;
pub mod variant;
pub mod weights;

pub use crate::backend::attention::KvPrecision;
pub use crate::backend::loss::cross_entropy;
pub use decode_matrices::WeightPrecision;
pub use gpt::{ImageGpt, Logits, Workspace};
pub use kv_cache::KvCache;
pub use params::{ModelKind, ParamLayout};
pub use weights::{load_model, load_model_as, save_model};
