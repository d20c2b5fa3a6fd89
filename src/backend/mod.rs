//! The compute engine: every numeric kernel of ImageGPT, written out over flat `f32`
//! slices in the manner of llm.c (one function per kernel, shapes in the doc comment).
//!
//! This module is the only place that knows about threads (rayon), SIMD (kernel sets chosen
//! at run time, [`isa`]) and the `gemm` crate, so a CUDA backend can sit beside it later without touching `model/`.
//! Shape alphabet used throughout the crate: B batch, T time (pixels), C = n_embd,
//! nh heads, hs head size, V colours, I MLP width.

pub mod act;
pub mod attention;
pub(crate) mod avx2;
pub(crate) mod avx512;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
pub mod dropout;
pub mod elem;
pub mod embed;
pub mod engine;
pub mod isa;
pub mod loss;
pub mod math;
pub mod matmul;
pub mod matmul_f16;
pub mod norm;
pub mod optim;
pub mod pool;
pub mod profile;
pub mod rope;

pub use act::Activation;
pub use cpu::Cpu;
pub use device::Device;
pub use elem::add_inplace;
pub use engine::Backend;
pub use matmul::WeightLayout;

/// Runs `f` on a rayon pool with `threads` workers (0 = rayon's default, all cores).
pub fn with_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    if threads == 0 {
        return f();
    }
    match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(pool) => pool.install(f),
        Err(_) => f(),
    }
}

/// Runs `f` on a thread of the current rayon pool (at once when already on one), so that
/// the parallel kernels `f` calls fork from inside the pool.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    rayon::scope(|_| f())
}
