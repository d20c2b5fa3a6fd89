//! The CUDA engine (issue #16, the `cuda` cargo feature): the CPU engine's kernels as CUDA C
//! (`kernels.cu`, compiled at run time by NVRTC, [`module`]), matrix products through
//! cuBLAS (f32, no TF32), buffers in the GPU's memory ([`memory`]), all behind the same
//! `Backend` interface as the CPU engine ([`Cuda`]), so `ImageGpt<Cuda>` is the same model.
//!
//! Each kernel is the twin of the CPU kernel of the same name, to be tested against it on
//! the same inputs on a machine with a GPU; NVRTC checks the sources here
//! (`tests/cuda_kernels.rs`). Covered: every operation of dense and local_2d attention
//! models (training with dropout, the classifier head, KV-cached decoding with an f32
//! cache and f32 weights). Not yet: linear attention, f16 / int8 KV caches, f16 decoding
//! weights (each an error that says so), bf16 mixed precision, and a tiled flash kernel
//! (the attention here is one warp per query row: exact, not fast).

mod attention;
mod engine;
mod memory;
pub mod module;
mod ops;

pub use attention::{CudaKv, CudaSaved};
pub use engine::Cuda;
pub use memory::{CudaBuf, DView, DViewMut};
pub use ops::CudaPacked;
