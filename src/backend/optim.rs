//! The optimizer's kernels: AdamW's moment and parameter update (PyTorch's
//! `torch.optim.AdamW`, single-tensor path, operation for operation), and the sums and
//! scalings of gradient clipping.
//!
//! Per element, with k = [beta1, beta2, eps, sqrt(1 - beta2^t), lr / (1 - beta1^t)]:
//!
//! ```text
//! m += (g - m) (1 - beta1)                 exp_avg.lerp_(grad, 1 - beta1)
//! v  = v beta2 + (1 - beta2) g^2           exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)
//! p -= step_size m / (sqrt(v) / bc2_sqrt + eps)
//! ```
//! (weight decay, p *= 1 - lr wd, is applied before, by [`scale`] on the decayed ranges).

use rayon::prelude::*;

use super::isa::multiversion;

/// AdamW's per-step constants, as its kernel reads them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// sqrt(1 - beta2^t)
    pub bc2_sqrt: f32,
    /// lr / (1 - beta1^t)
    pub step_size: f32,
}

/// Elements per parallel task.
const CHUNK: usize = 4096;

multiversion! {
/// One AdamW update of `params` from `grads`, moments `m` and `v` (all the same length).
pub fn adamw_step(params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32], k: AdamWStep) {
    let AdamWStep { beta1: b1, beta2: b2, eps, bc2_sqrt, step_size } = k;
    params.par_chunks_mut(CHUNK).zip(grads.par_chunks(CHUNK)).zip(m.par_chunks_mut(CHUNK)).zip(v.par_chunks_mut(CHUNK)).for_each(
        |(((p, g), m), v)| {
            for i in 0..p.len() {
                let gi = g[i];
                m[i] += (gi - m[i]) * (1.0 - b1); // exp_avg.lerp_(grad, 1 - beta1)
                v[i] = v[i] * b2 + (1.0 - b2) * gi * gi;
                let denom = v[i].sqrt() / bc2_sqrt + eps;
                p[i] -= step_size * m[i] / denom;
            }
        },
    );
}
}

/// Sum of squares (in f64, over fixed chunks added in order: deterministic).
pub fn sum_squares(x: &[f32]) -> f64 {
    let parts: Vec<f64> =
        x.par_chunks(1 << 16).map(|c| c.iter().map(|&g| (g as f64) * (g as f64)).sum::<f64>()).collect();
    parts.iter().sum::<f64>()
}

/// x *= f, element-wise.
pub fn scale(x: &mut [f32], f: f32) {
    x.par_chunks_mut(1 << 16).for_each(|c| c.iter_mut().for_each(|v| *v *= f));
}
