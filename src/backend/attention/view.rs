//! The shapes attention calls share: views into the model's buffers, the sizes of a call and
//! what a forward keeps for its backward.

use super::mask::Mask;
use crate::backend::dropout::Dropout;

/// A (B, rows, cols) view into a flat buffer `data` (an engine's view of its buffer):
/// element (b, r, c) is at `offset + b * batch_stride + r * row_stride + c`. Heads are
/// column blocks of width hs.
#[derive(Clone, Copy, Debug)]
pub struct Seq<D> {
    pub data: D,
    pub offset: usize,
    pub batch_stride: usize,
    pub row_stride: usize,
}

/// A sequence view into host memory (the CPU engine's).
pub type SeqView<'a> = Seq<&'a [f32]>;

impl<'a> SeqView<'a> {
    /// `len` values of row `row` of batch `b` from column `col`.
    #[inline]
    pub fn row(&self, b: usize, row: usize, col: usize, len: usize) -> &'a [f32] {
        let i = self.offset + b * self.batch_stride + row * self.row_stride + col;
        &self.data[i..i + len]
    }

    #[inline]
    pub(crate) fn ptr(&self, b: usize, row: usize, col: usize) -> *const f32 {
        let i = self.offset + b * self.batch_stride + row * self.row_stride + col;
        debug_assert!(i < self.data.len());
        self.data[i..].as_ptr()
    }
}

/// Sizes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    pub b: usize,
    /// Query rows (new positions).
    pub t: usize,
    /// Key rows (past + new).
    pub tk: usize,
    pub nh: usize,
    pub hs: usize,
    /// Which keys each query sees (slots: query row r is slot tk - t + r).
    pub mask: Mask,
    /// How the visible keys are weighed: softmax of the scores, or linear feature maps.
    pub form: Form,
    /// Multiplier of q.k (1/sqrt(hs), times 1/(layer+1) when asked).
    pub scale: f32,
    /// Training only: dropout of the probabilities (after the softmax, HF's `attn_dropout`);
    /// the mask of (b, h, query slot p, key slot s) is element ((b nh + h) tk + p) tk + s.
    pub dropout: Option<Dropout>,
}

/// The form of attention over the keys a [`Mask`] shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Form {
    /// softmax(q . k * scale) (HF; dense and local_2d).
    #[default]
    Softmax,
    /// phi(q) . phi(k) normalised, phi = elu + 1 (the `linear` module); causal or full masks.
    Linear,
}

/// What an attention forward keeps for the backward and for inspection, owned by the
/// attention variant (softmax: the log-sum-exp of every query row, (B, nh, T)); the model
/// only holds it between the two passes.
#[derive(Clone, Debug, Default)]
pub struct Saved {
    pub(super) lse: Vec<f32>,
}

impl Saved {
    pub fn new() -> Self {
        Self::default()
    }

    /// What a forward of another engine kept: the log-sum-exp of every query row (B, nh, T).
    pub fn from_lse(lse: Vec<f32>) -> Self {
        Saved { lse }
    }

    /// Room for a call of sizes `d`.
    pub(crate) fn sized(&mut self, d: &AttnDims) -> &mut [f32] {
        let n = d.b * d.nh * d.t;
        if self.lse.len() < n {
            self.lse.resize(n, 0.0);
        }
        &mut self.lse[..n]
    }
}

/// A pointer that parallel tasks write through, each to its own disjoint part.
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: every user writes a range no other task touches (documented at each use).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
