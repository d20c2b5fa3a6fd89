//! The CUDA engine (issue #16, the `cuda` cargo feature): the CPU engine's kernels as CUDA C
//! (`kernels.cu`, compiled at run time by NVRTC, [`module`]), matrix products through
//! cuBLAS. Each kernel is the twin of the CPU kernel of the same name, to be tested against
//! it on the same inputs on a machine with a GPU.
//!
//! Built so far: the kernel sources below attention (elementwise, norms, activations,
//! dropout, the fused cross-entropy, embeddings, rope_2d, pooling, AdamW and the gradient
//! norm's reduction), checked by NVRTC here (`tests/cuda_kernels.rs`). Still to come: the
//! engine type with its buffers and the `Backend` implementation, the attention kernels,
//! decoding states, and their parity tests on a GPU.

pub mod module;
