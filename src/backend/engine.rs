//! The interface between the training code and an engine: buffers that live in the
//! engine's memory and the operations on them, so that the code above is written once and
//! a CUDA engine can sit beside the CPU one.
//!
//! Today the optimizer runs through it (AdamW's moments are engine buffers, and the update,
//! weight decay, the gradient norm and clipping are engine operations); the model's
//! parameters, gradients and activations are the CPU engine's buffers (`Vec<f32>`), and
//! its kernels join the interface next (issue #16).

use std::ops::Range;

use super::optim::{self, AdamWStep};
use crate::error::Result;

/// A compute engine: owns buffers of f32 and runs operations on them.
pub trait Backend: Clone + Send + Sync {
    /// A buffer of f32 in the engine's memory.
    type Buf: Send + Sync;

    /// The engine's name as `--device` spells it.
    fn name(&self) -> String;
    /// A buffer of `n` zeros.
    fn zeros(&self, n: usize) -> Result<Self::Buf>;
    /// A copy of host data in the engine's memory.
    fn upload(&self, host: &[f32]) -> Result<Self::Buf>;
    /// A host copy of `buf[r]`.
    fn download(&self, buf: &Self::Buf, r: Range<usize>) -> Result<Vec<f32>>;
    /// Number of elements of `buf`.
    fn size(&self, buf: &Self::Buf) -> usize;

    /// One AdamW update of all of `params` from `grads`, with the moments at
    /// `m[at..at + len]` and `v[at..at + len]` (the optimizer's buffers hold every group).
    fn adamw(
        &self,
        params: &mut Self::Buf,
        grads: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        at: usize,
        k: AdamWStep,
    );
    /// x *= f.
    fn scale(&self, x: &mut Self::Buf, f: f32);
    /// x[r] *= f.
    fn scale_range(&self, x: &mut Self::Buf, r: Range<usize>, f: f32);
    /// The sum of squares of x, in f64 (deterministic).
    fn sum_squares(&self, x: &Self::Buf) -> f64;
    /// x = 0.
    fn fill_zero(&self, x: &mut Self::Buf);
}

/// The CPU engine: buffers are `Vec<f32>`, operations the kernels of `backend/`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cpu;

impl Backend for Cpu {
    type Buf = Vec<f32>;

    fn name(&self) -> String {
        "cpu".into()
    }
    fn zeros(&self, n: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; n])
    }
    fn upload(&self, host: &[f32]) -> Result<Vec<f32>> {
        Ok(host.to_vec())
    }
    fn download(&self, buf: &Vec<f32>, r: Range<usize>) -> Result<Vec<f32>> {
        Ok(buf[r].to_vec())
    }
    fn size(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }
    fn adamw(
        &self,
        params: &mut Vec<f32>,
        grads: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
        at: usize,
        k: AdamWStep,
    ) {
        let n = params.len();
        assert!(grads.len() == n && m.len() >= at + n && v.len() >= at + n, "adamw: buffers of {n} parameters");
        optim::adamw_step(params, grads, &mut m[at..at + n], &mut v[at..at + n], k);
    }
    fn scale(&self, x: &mut Vec<f32>, f: f32) {
        optim::scale(x, f);
    }
    fn scale_range(&self, x: &mut Vec<f32>, r: Range<usize>, f: f32) {
        optim::scale(&mut x[r], f);
    }
    fn sum_squares(&self, x: &Vec<f32>) -> f64 {
        optim::sum_squares(x)
    }
    fn fill_zero(&self, x: &mut Vec<f32>) {
        x.fill(0.0);
    }
}
