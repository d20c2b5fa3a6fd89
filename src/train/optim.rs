//! AdamW (PyTorch's `torch.optim.AdamW`, single-tensor path; its kernel in
//! `backend::optim`), global gradient-norm clipping, and the learning-rate schedule, over
//! the buffers of an engine ([`Backend`]).
//!
//! Weight decay, when > 0, applies to matrices only (dim >= 2: attention/MLP weights,
//! `wte`, `wpe`, `lm_head`), never to norm gains or biases (nanoGPT's rule).

use serde::{Deserialize, Serialize};

use crate::backend::optim::AdamWStep;
use crate::backend::{Backend, Cpu};
use crate::error::Result;
use crate::model::ParamLayout;

/// AdamW hyper-parameters (defaults: the paper's betas 0.9 / 0.95, eps 1e-8, no decay).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// Optimizer state: first and second moments of every parameter group, one after the
/// other (the model's arena first, in its layout; then, e.g., a classification head), in
/// buffers of the engine `B`, and the step count. One optimizer serves every group
/// (PyTorch's parameter groups).
#[derive(Clone, Debug)]
pub struct AdamW<B: Backend = Cpu> {
    pub cfg: AdamWConfig,
    pub m: B::Buf,
    pub v: B::Buf,
    pub step: u64,
    /// Ranges (in m and v) that weight decay applies to (matrices only).
    decay_ranges: Vec<std::ops::Range<usize>>,
    /// The length of each group.
    groups: Vec<usize>,
    backend: B,
}

impl AdamW<Cpu> {
    /// An optimizer for a model's parameters (one group in the arena's layout), on the CPU.
    pub fn new(cfg: AdamWConfig, layout: &ParamLayout) -> Self {
        Self::on(Cpu, cfg, layout).expect("CPU buffers")
    }
}

impl<B: Backend> AdamW<B> {
    /// [`AdamW::new`] with its moments on the engine `backend`.
    pub fn on(backend: B, cfg: AdamWConfig, layout: &ParamLayout) -> Result<Self> {
        let decay_ranges = layout.entries.iter().filter(|e| e.is_matrix()).map(|e| e.range.clone()).collect();
        let n = layout.total;
        let (m, v) = (backend.zeros(n)?, backend.zeros(n)?);
        Ok(AdamW { cfg, m, v, step: 0, decay_ranges, groups: vec![n], backend })
    }

    /// Adds a group of `n` parameters (decayed or not); returns its range in `m` and `v`.
    pub fn add_group(&mut self, n: usize, decay: bool) -> Result<std::ops::Range<usize>> {
        let start: usize = self.groups.iter().sum();
        let grow = |b: &B::Buf| -> Result<B::Buf> {
            let mut host = self.backend.download(b, 0..start)?;
            host.resize(start + n, 0.0);
            self.backend.upload(&host)
        };
        (self.m, self.v) = (grow(&self.m)?, grow(&self.v)?);
        if decay {
            self.decay_ranges.push(start..start + n);
        }
        self.groups.push(n);
        Ok(start..start + n)
    }

    /// The engine that holds the moments.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Numbers of decayed and non-decayed parameters (printed at start, as nanoGPT).
    pub fn decay_counts(&self) -> (usize, usize) {
        let d: usize = self.decay_ranges.iter().map(|r| r.len()).sum();
        (d, self.groups.iter().sum::<usize>() - d)
    }

    /// One update of a single-group optimizer with learning rate `lr`.
    pub fn update(&mut self, params: &mut B::Buf, grads: &B::Buf, lr: f64) {
        self.update_groups(&mut [params], &[grads], lr);
    }

    /// One update of every group (the buffers in the order the groups were made).
    pub fn update_groups(&mut self, params: &mut [&mut B::Buf], grads: &[&B::Buf], lr: f64) {
        assert!(params.len() == self.groups.len() && grads.len() == self.groups.len(), "one buffer per group");
        self.step += 1;
        let c = &self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2_sqrt = (1.0 - c.beta2.powi(self.step as i32)).sqrt();
        let k = AdamWStep {
            beta1: c.beta1 as f32,
            beta2: c.beta2 as f32,
            eps: c.eps as f32,
            bc2_sqrt: bc2_sqrt as f32,
            step_size: (lr / bc1) as f32,
        };
        let f = (1.0 - lr * c.weight_decay) as f32;
        let (be, mut start) = (&self.backend, 0);
        for ((p, g), &n) in params.iter_mut().zip(grads).zip(&self.groups) {
            assert!(be.size(p) == n && be.size(g) == n, "group of {n} parameters");
            if c.weight_decay > 0.0 {
                for r in self.decay_ranges.iter().filter(|r| r.start >= start && r.end <= start + n) {
                    be.scale_range(p, r.start - start..r.end - start, f);
                }
            }
            be.adamw(p, g, &mut self.m, &mut self.v, start, k);
            start += n;
        }
    }
}

/// Global L2 norm of the gradients (computed in f64, in a fixed order).
pub fn grad_norm(grads: &[f32]) -> f64 {
    crate::backend::optim::sum_squares(grads).sqrt()
}

/// Clips the gradients to a global norm of `max_norm` (torch `clip_grad_norm_`); returns the
/// norm before clipping.
pub fn clip_grad_norm(grads: &mut Vec<f32>, max_norm: f64) -> f64 {
    clip_grad_norm_groups(&Cpu, &mut [grads], max_norm)
}

/// The same over several parameter groups at once (one global norm, nothing copied), on
/// the engine that holds them.
pub fn clip_grad_norm_groups<B: Backend>(be: &B, groups: &mut [&mut B::Buf], max_norm: f64) -> f64 {
    let norm = groups.iter().map(|g| be.sum_squares(g)).sum::<f64>().sqrt();
    let coef = max_norm / (norm + 1e-6);
    if max_norm > 0.0 && coef < 1.0 {
        for g in groups.iter_mut() {
            be.scale(g, coef as f32);
        }
    }
    norm
}

/// Linear warmup from 0 to `lr` over `warmup` steps, then cosine decay to `min_lr` at
/// `total` steps (nanoGPT `get_lr`). `step` counts from 0.
pub fn lr_at(step: u64, lr: f64, min_lr: f64, warmup: u64, total: u64) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    if step >= total || total <= warmup {
        return min_lr;
    }
    let ratio = (step - warmup) as f64 / (total - warmup) as f64;
    min_lr + 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos()) * (lr - min_lr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_shape() {
        assert!((lr_at(0, 1e-3, 1e-4, 10, 100) - 1e-4).abs() < 1e-12);
        assert!((lr_at(9, 1e-3, 1e-4, 10, 100) - 1e-3).abs() < 1e-12);
        assert!((lr_at(55, 1e-3, 1e-4, 10, 100) - 5.5e-4).abs() < 1e-12); // halfway: mean of lr and min_lr
        assert!((lr_at(100, 1e-3, 1e-4, 10, 100) - 1e-4).abs() < 1e-12);
        assert!((lr_at(0, 1e-3, 0.0, 0, 100) - 1e-3).abs() < 1e-12);
    }

    #[test]
    fn clipping() {
        let mut g = vec![3.0f32, 4.0];
        assert_eq!(clip_grad_norm(&mut g, 1.0), 5.0);
        assert!((g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6);
        let mut g = vec![0.3f32, 0.4];
        clip_grad_norm(&mut g, 1.0);
        assert_eq!(g, vec![0.3, 0.4]);
    }
}
