//! The interface between the training code and an engine: buffers that live in the
//! engine's memory and the operations on them, so that the code above is written once and
//! a CUDA engine can sit beside the CPU one.
//!
//! The model is written once against it: `ImageGpt<B>` keeps its parameters in a buffer of
//! engine `B`, a `Workspace<B>` and `TrainActs<B>` hold the activations, gradients are an
//! engine buffer in the parameters' layout, and AdamW's moments, its update, the gradient
//! norm and clipping are engine buffers and operations. The attention's saved state
//! (`Saved`), each layer's decoding state (`Decode`, held by a `KvCache<B>`) and decoding's
//! packed matrices (`Packed`) are the engine's types, and its sequence views
//! (`attention::Seq`) are views of the engine's buffers. What crosses to the host: token
//! ids and loss weights (host slices the engine reads), `download` (logits to sample from,
//! hidden states to probe) and `upload` (parameters loaded from a file).
//!
//! Each kernel's shapes and backward math are documented at its CPU version in `backend/`
//! (`norm`, `act`, `matmul`, `loss`, `attention`, `embed`, `rope`, `dropout`); a second
//! engine implements the same operations on the same layouts, to be tested against them.

use std::ops::Range;

use super::act::Activation;
use super::attention::{AttnDims, DecodeInfo, Form, KvPrecision, Mask, Seq};
use super::dropout::Dropout;
use super::embed::Axis;
use super::matmul::WeightLayout;
use super::matmul_f16::PackAs;
use super::optim::AdamWStep;
use super::rope::Rope;
use crate::error::Result;

/// A compute engine: owns buffers of f32 and runs operations on them.
pub trait Backend: Clone + Send + Sync + std::fmt::Debug + 'static {
    /// A buffer of f32 in the engine's memory (`Default`: an empty one).
    type Buf: Default + Clone + Send + Sync + std::fmt::Debug;

    /// What an attention forward keeps for its backward (the CPU: each query row's
    /// log-sum-exp), held by the model between the two passes.
    type Saved: Default + Send + Sync;
    /// One layer's decoding state: the keys and values so far (a ring of the rows a local
    /// window reaches), or a linear attention's running sums.
    type Decode: DecodeInfo + Clone + Send + Sync + std::fmt::Debug;

    /// A decoding state for `batch` sequences of up to `positions` slots of a layer whose
    /// attention has this mask and form and `heads` = (n_head, head size), its keys and
    /// values kept in `prec`.
    fn decode_state(
        &self,
        spec: (Mask, Form),
        batch: usize,
        heads: (usize, usize),
        positions: usize,
        prec: KvPrecision,
    ) -> Self::Decode;

    /// A matrix packed for decoding's products (the CPU: 32-column panels of f32 or f16).
    type Packed: Clone + Send + Sync + std::fmt::Debug;

    /// The engine in words (the CPU: its kernel set; a GPU: its device and name).
    fn name(&self) -> String;
    /// Waits for every operation queued so far (a GPU's are asynchronous; the CPU's are
    /// done when they return) and reports a failure recorded meanwhile.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    /// Runs `f`, a whole pass of kernels, where the engine runs them best (the CPU: on a
    /// thread of its pool, so that each kernel forks from inside it).
    fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        f()
    }

    /// A buffer of `n` zeros.
    fn zeros(&self, n: usize) -> Result<Self::Buf>;
    /// Makes `buf` hold `n` values: the first min(n, old size) are kept, new ones are zero
    /// (as `Vec::resize`).
    fn resize(&self, buf: &mut Self::Buf, n: usize) -> Result<()>;
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

    /// A read-only view of part of a buffer (the CPU: a slice; a GPU engine: its own
    /// (buffer, offset, length), as cudarc's `CudaView` is not `Copy`).
    type View<'a>: Copy
    where
        Self: 'a;
    /// A writable view of part of a buffer (the CPU: a mutable slice).
    type ViewMut<'a>
    where
        Self: 'a;

    /// The view of `buf[r]`.
    fn view<'a>(&self, buf: &'a Self::Buf, r: Range<usize>) -> Self::View<'a>;
    /// The writable view of `buf[r]`.
    fn view_mut<'a>(&self, buf: &'a mut Self::Buf, r: Range<usize>) -> Self::ViewMut<'a>;
    /// The view of all of `buf`.
    fn whole<'a>(&self, buf: &'a Self::Buf) -> Self::View<'a> {
        self.view(buf, 0..self.size(buf))
    }
    /// The writable view of all of `buf`.
    fn whole_mut<'a>(&self, buf: &'a mut Self::Buf) -> Self::ViewMut<'a> {
        let n = self.size(buf);
        self.view_mut(buf, 0..n)
    }
    /// A shorter-lived writable view of the same values (what `&mut *v` does to a slice).
    fn reborrow<'b>(&self, v: &'b mut Self::ViewMut<'_>) -> Self::ViewMut<'b>;
    /// A read-only view of the values of a writable one.
    fn read<'b>(&self, v: &'b Self::ViewMut<'_>) -> Self::View<'b>;
    /// The number of values a view shows.
    fn view_len(&self, v: Self::View<'_>) -> usize;
    /// A host copy of the values of a view.
    fn to_host(&self, v: Self::View<'_>) -> Vec<f32>;

    /// dst = src (the same length).
    fn copy(&self, dst: Self::ViewMut<'_>, src: Self::View<'_>);
    /// dst = value.
    fn fill(&self, dst: Self::ViewMut<'_>, value: f32);

    /// out (N, C) = x / rms(x) * w, rstd (N) = 1 / rms(x).
    fn rmsnorm_forward(
        &self,
        out: Self::ViewMut<'_>,
        rstd: Self::ViewMut<'_>,
        inp: Self::View<'_>,
        w: Self::View<'_>,
        eps: f64,
    );
    /// dinp += d(out)/d(inp)^T dout, dw += ...
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_backward(
        &self,
        dinp: Self::ViewMut<'_>,
        dw: Self::ViewMut<'_>,
        dout: Self::View<'_>,
        inp: Self::View<'_>,
        rstd: Self::View<'_>,
        w: Self::View<'_>,
    );
    /// out = act(inp).
    fn act_forward(&self, act: Activation, out: Self::ViewMut<'_>, inp: Self::View<'_>);
    /// x = act(x).
    fn act_inplace(&self, act: Activation, x: Self::ViewMut<'_>);
    /// dinp = act'(inp) dout.
    fn act_backward(&self, act: Activation, dinp: Self::ViewMut<'_>, dout: Self::View<'_>, inp: Self::View<'_>);
    /// out (m, n) (+)= inp (m, k) @ W (+ bias).
    #[allow(clippy::too_many_arguments)]
    fn matmul_forward(
        &self,
        out: Self::ViewMut<'_>,
        inp: Self::View<'_>,
        w: Self::View<'_>,
        bias: Option<Self::View<'_>>,
        mkn: (usize, usize, usize),
        layout: WeightLayout,
        accumulate: bool,
    );
    /// dW (k, n) += x^T (k, m) @ dy (m, n).
    fn matmul_backward_weight(
        &self,
        dw: Self::ViewMut<'_>,
        x: Self::View<'_>,
        dy: Self::View<'_>,
        mkn: (usize, usize, usize),
    );
    /// db (n) += the column sums of dy (m, n).
    fn bias_backward(&self, db: Self::ViewMut<'_>, dy: Self::View<'_>, n: usize);
    /// x += y.
    fn add_inplace(&self, x: Self::ViewMut<'_>, y: Self::View<'_>);
    /// x = x * mask / (1 - p), the mask of `d`.
    fn dropout(&self, d: Dropout, x: Self::ViewMut<'_>);
    /// The weighted cross-entropy of logits (N, V) against targets; logits become its
    /// gradient.
    fn cross_entropy_fused(&self, logits: Self::ViewMut<'_>, targets: &[u32], weights: &[f32], v: usize) -> f64;
    /// out (B*T, C) = s_i wte[tokens_i] + the rows of each position table for slots
    /// pos0..pos0+T.
    #[allow(clippy::too_many_arguments)]
    fn embed_forward(
        &self,
        out: Self::ViewMut<'_>,
        tokens: &[u32],
        wte: Self::View<'_>,
        token_scale: Option<&[f32]>,
        tables: &[(Self::View<'_>, Axis)],
        t: usize,
        pos0: usize,
        c: usize,
    );
    /// Adds the embedding's gradients to the arena `grads` (wte and each table at their
    /// ranges) for dout (B*T, C).
    #[allow(clippy::too_many_arguments)]
    fn embed_backward(
        &self,
        grads: Self::ViewMut<'_>,
        wte: Range<usize>,
        tables: &[(Range<usize>, Axis)],
        dout: Self::View<'_>,
        tokens: &[u32],
        token_scale: Option<&[f32]>,
        t: usize,
        c: usize,
    );
    /// rope_2d: rotates q and k of qkv (B, T, 3C) for slots pos0..pos0+T (`inverse`: the
    /// transpose).
    fn rope(&self, rope: &Rope, qkv: Self::ViewMut<'_>, t: usize, pos0: usize, inverse: bool);
    /// W packed for decoding's products: the (k, n) matrix `w` (`WeightLayout::InOut`; or
    /// its (n, k) transpose, `OutIn`), its values as `elem`.
    fn pack(&self, w: Self::View<'_>, kn: (usize, usize), layout: WeightLayout, elem: PackAs) -> Result<Self::Packed>;
    /// Decoding's matrix product out (m, n) (+)= inp (m, k) @ W (+ bias) against a weight
    /// packed for it.
    fn matmul_packed(
        &self,
        out: Self::ViewMut<'_>,
        inp: Self::View<'_>,
        w: &Self::Packed,
        bias: Option<Self::View<'_>>,
        m: usize,
        accumulate: bool,
    );
    /// Decoding's attention: the new slots' keys and values join the KV state `cache`, and
    /// their queries attend to every slot so far.
    #[allow(clippy::too_many_arguments)]
    fn attend_cached(
        &self,
        cache: &mut Self::Decode,
        out: Self::ViewMut<'_>,
        saved: &mut Self::Saved,
        q: Seq<Self::View<'_>>,
        k: Seq<Self::View<'_>>,
        v: Seq<Self::View<'_>>,
        past: usize,
        d: AttnDims,
    );
    /// The mean over positions of x (B, T, C): (B, C) on the host (probe features, the
    /// classifier's pooling).
    fn mean_over_positions(&self, x: Self::View<'_>, b: usize, t: usize, c: usize) -> Vec<f32>;
    /// The backward of the mean over positions: dx (B, T, C) += dmean (B, C) / T at every
    /// position.
    fn mean_over_positions_backward(&self, dx: Self::ViewMut<'_>, dmean: Self::View<'_>, b: usize, t: usize, c: usize);
    /// Attention of q, k, v (views of qkv) into out (B, T, C), keeping what its backward needs.
    #[allow(clippy::too_many_arguments)]
    fn attention_forward(
        &self,
        out: Self::ViewMut<'_>,
        saved: &mut Self::Saved,
        q: Seq<Self::View<'_>>,
        k: Seq<Self::View<'_>>,
        v: Seq<Self::View<'_>>,
        d: AttnDims,
    );
    /// The attention probabilities (B, nh, T, Tk) of the last `attention_forward` (HF's
    /// `output_attentions`, for inspection), on the host.
    fn attention_probs(
        &self,
        saved: &Self::Saved,
        q: Seq<Self::View<'_>>,
        k: Seq<Self::View<'_>>,
        d: AttnDims,
    ) -> Vec<f32>;
    /// dqkv (B, T, 3C) from dout, the forward's out and saved state.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        dqkv: Self::ViewMut<'_>,
        dout: Self::View<'_>,
        out: Self::View<'_>,
        saved: &Self::Saved,
        q: Seq<Self::View<'_>>,
        k: Seq<Self::View<'_>>,
        v: Seq<Self::View<'_>>,
        d: AttnDims,
    );
}
