//! The CPU engine: buffers are `Vec<f32>`, views are slices, and every operation is the
//! kernel of `backend/` of the same name (kernel sets chosen at run time, `isa`).

use std::ops::Range;

use super::act::{self, Activation};
use super::attention::{self, AttnDims, DecodeState, Form, KvPrecision, Mask, Saved, SeqView};
use super::dropout::Dropout;
use super::embed::{self, Axis};
use super::engine::Backend;
use super::matmul::{self, WeightLayout};
use super::matmul_f16::{PackAs, PackedMatrix};
use super::optim::{self, AdamWStep};
use super::rope::Rope;
use super::{elem, loss, norm, pool};
use crate::error::Result;

/// The CPU engine: buffers are `Vec<f32>`, operations the kernels of `backend/`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cpu;

impl Backend for Cpu {
    type Buf = Vec<f32>;
    type Saved = Saved;
    type Decode = Box<dyn DecodeState>;
    type Packed = PackedMatrix;

    fn name(&self) -> String {
        super::isa::active().name().to_string()
    }

    fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        super::on_pool(f)
    }

    fn decode_state(
        &self,
        spec: (Mask, Form),
        batch: usize,
        (nh, hs): (usize, usize),
        positions: usize,
        prec: KvPrecision,
    ) -> Box<dyn DecodeState> {
        attention::new_state(spec, batch, nh, hs, positions, prec)
    }

    fn zeros(&self, n: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; n])
    }
    fn resize(&self, buf: &mut Vec<f32>, n: usize) -> Result<()> {
        buf.resize(n, 0.0);
        Ok(())
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

    type View<'a> = &'a [f32];
    type ViewMut<'a> = &'a mut [f32];

    fn view<'a>(&self, buf: &'a Vec<f32>, r: Range<usize>) -> &'a [f32] {
        &buf[r]
    }
    fn view_mut<'a>(&self, buf: &'a mut Vec<f32>, r: Range<usize>) -> &'a mut [f32] {
        &mut buf[r]
    }
    fn reborrow<'b>(&self, v: &'b mut &mut [f32]) -> &'b mut [f32] {
        v
    }
    fn read<'b>(&self, v: &'b &mut [f32]) -> &'b [f32] {
        v
    }
    fn view_len(&self, v: &[f32]) -> usize {
        v.len()
    }
    fn to_host(&self, v: &[f32]) -> Vec<f32> {
        v.to_vec()
    }
    fn copy(&self, dst: &mut [f32], src: &[f32]) {
        dst.copy_from_slice(src)
    }
    fn fill(&self, dst: &mut [f32], value: f32) {
        dst.fill(value)
    }

    fn rmsnorm_forward(&self, out: &mut [f32], rstd: &mut [f32], inp: &[f32], w: &[f32], eps: f64) {
        norm::rmsnorm_forward(out, rstd, inp, w, eps)
    }
    fn rmsnorm_backward(&self, dinp: &mut [f32], dw: &mut [f32], dout: &[f32], inp: &[f32], rstd: &[f32], w: &[f32]) {
        norm::rmsnorm_backward(dinp, dw, dout, inp, rstd, w)
    }
    fn act_forward(&self, a: Activation, out: &mut [f32], inp: &[f32]) {
        act::act_forward(a, out, inp)
    }
    fn act_inplace(&self, a: Activation, x: &mut [f32]) {
        act::act_inplace(a, x)
    }
    fn act_backward(&self, a: Activation, dinp: &mut [f32], dout: &[f32], inp: &[f32]) {
        act::act_backward(a, dinp, dout, inp)
    }
    fn matmul_forward(
        &self,
        out: &mut [f32],
        inp: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        mkn: (usize, usize, usize),
        layout: WeightLayout,
        accumulate: bool,
    ) {
        matmul::matmul_forward(out, inp, w, bias, mkn, layout, accumulate)
    }
    fn matmul_backward_weight(&self, dw: &mut [f32], x: &[f32], dy: &[f32], mkn: (usize, usize, usize)) {
        matmul::matmul_backward_weight(dw, x, dy, mkn)
    }
    fn bias_backward(&self, db: &mut [f32], dy: &[f32], n: usize) {
        matmul::bias_backward(db, dy, n)
    }
    fn add_inplace(&self, x: &mut [f32], y: &[f32]) {
        elem::add_inplace(x, y)
    }
    fn dropout(&self, d: Dropout, x: &mut [f32]) {
        d.apply(x)
    }
    fn cross_entropy_fused(&self, logits: &mut [f32], targets: &[u32], weights: &[f32], v: usize) -> f64 {
        loss::cross_entropy_fused(logits, targets, weights, v)
    }
    fn embed_forward(
        &self,
        out: &mut [f32],
        tokens: &[u32],
        wte: &[f32],
        token_scale: Option<&[f32]>,
        tables: &[(&[f32], Axis)],
        t: usize,
        pos0: usize,
        c: usize,
    ) {
        embed::embed_forward(out, tokens, wte, token_scale, tables, t, pos0, c)
    }
    fn embed_backward(
        &self,
        grads: &mut [f32],
        wte: Range<usize>,
        tables: &[(Range<usize>, Axis)],
        dout: &[f32],
        tokens: &[u32],
        token_scale: Option<&[f32]>,
        t: usize,
        c: usize,
    ) {
        embed::embed_backward(grads, wte, tables, dout, tokens, token_scale, t, c)
    }
    fn rope(&self, rope: &Rope, qkv: &mut [f32], t: usize, pos0: usize, inverse: bool) {
        rope.apply(qkv, t, pos0, inverse)
    }
    fn pack(&self, w: &[f32], (k, n): (usize, usize), layout: WeightLayout, elem: PackAs) -> Result<PackedMatrix> {
        Ok(match layout {
            WeightLayout::InOut => PackedMatrix::pack(w, k, n, elem),
            WeightLayout::OutIn => {
                // w is (n, k) (nn.Linear): packed as its (k, n) transpose
                let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
                PackedMatrix::pack(&wt, k, n, elem)
            }
        })
    }
    fn matmul_packed(
        &self,
        out: &mut [f32],
        inp: &[f32],
        w: &PackedMatrix,
        bias: Option<&[f32]>,
        m: usize,
        accumulate: bool,
    ) {
        w.product(out, inp, bias, m, accumulate)
    }
    fn attend_cached(
        &self,
        cache: &mut Box<dyn DecodeState>,
        out: &mut [f32],
        saved: &mut Saved,
        q: SeqView,
        k: SeqView,
        v: SeqView,
        past: usize,
        d: AttnDims,
    ) {
        cache.attend(out, saved, q, k, v, past, d)
    }
    fn mean_over_positions(&self, x: &[f32], b: usize, t: usize, c: usize) -> Vec<f32> {
        pool::mean_over_positions(x, b, t, c)
    }
    fn mean_over_positions_backward(&self, dx: &mut [f32], dmean: &[f32], b: usize, t: usize, c: usize) {
        pool::mean_over_positions_backward(dx, dmean, b, t, c)
    }
    fn attention_probs(&self, saved: &Saved, q: SeqView, k: SeqView, d: AttnDims) -> Vec<f32> {
        let mut probs = Vec::with_capacity(d.b * d.nh * d.t * d.tk);
        for b in 0..d.b {
            for h in 0..d.nh {
                probs.extend(attention::probs(q, k, saved, d, b, h));
            }
        }
        probs
    }
    fn attention_forward(&self, out: &mut [f32], saved: &mut Saved, q: SeqView, k: SeqView, v: SeqView, d: AttnDims) {
        attention::forward(out, saved, q, k, v, d)
    }
    fn attention_backward(
        &self,
        dqkv: &mut [f32],
        dout: &[f32],
        out: &[f32],
        saved: &Saved,
        q: SeqView,
        k: SeqView,
        v: SeqView,
        d: AttnDims,
    ) {
        attention::backward(dqkv, dout, out, saved, q, k, v, d)
    }
}
