//! A per-kernel wall-clock profile: each kernel call adds its time to a counter when
//! profiling is on (`igpt bench ... --profile`). Off, it costs one relaxed atomic load.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// The kernels that are timed.
#[derive(Clone, Copy, Debug)]
pub enum Kernel {
    Embed,
    Norm,
    Matmul,
    Attention,
    Act,
    Head,
    Other,
}

const NAMES: [&str; 7] = ["embed", "norm", "matmul", "attention", "activation", "lm_head", "other"];
static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];
static CALLS: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];

pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

pub fn reset() {
    for i in 0..NAMES.len() {
        NANOS[i].store(0, Ordering::Relaxed);
        CALLS[i].store(0, Ordering::Relaxed);
    }
}

/// Runs `f`, charging its time to `k` when profiling is on.
#[inline]
pub fn timed<R>(k: Kernel, f: impl FnOnce() -> R) -> R {
    if !ENABLED.load(Ordering::Relaxed) {
        return f();
    }
    let t0 = Instant::now();
    let r = f();
    NANOS[k as usize].fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
    CALLS[k as usize].fetch_add(1, Ordering::Relaxed);
    r
}

/// (kernel name, seconds, calls) for every kernel that ran.
pub fn report() -> Vec<(&'static str, f64, u64)> {
    (0..NAMES.len())
        .filter(|&i| CALLS[i].load(Ordering::Relaxed) > 0)
        .map(|i| (NAMES[i], NANOS[i].load(Ordering::Relaxed) as f64 * 1e-9, CALLS[i].load(Ordering::Relaxed)))
        .collect()
}
