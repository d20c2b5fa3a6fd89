//! The CUDA engine's `Backend` operations: each launches the kernel of `kernels.cu` of the
//! same name (the twin of the CPU kernel), or cuBLAS for a matrix product; the attention
//! and decoding are in `cuda/attention.rs`.

use std::ops::Range;

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::driver::CudaSlice;

use super::attention::{CudaKv, CudaSaved};
use super::engine::{Cuda, blocks, elems, launch, warps};
use super::memory::{CudaBuf, DView, DViewMut};
use crate::backend::act::Activation;
use crate::backend::attention::{AttnDims, Form, KvPrecision, Mask, Seq};
use crate::backend::dropout::Dropout;
use crate::backend::embed::Axis;
use crate::backend::engine::Backend;
use crate::backend::matmul::WeightLayout;
use crate::backend::matmul_f16::PackAs;
use crate::backend::optim::AdamWStep;
use crate::backend::rope::Rope;
use crate::error::Result;

/// A matrix kept for decoding's products: a device copy in its layout (cuBLAS reads either).
#[derive(Clone, Debug)]
pub struct CudaPacked {
    w: CudaBuf,
    kn: (usize, usize),
    layout: WeightLayout,
}

fn act_code(a: Activation) -> i32 {
    match a {
        Activation::QuickGelu => 0,
        Activation::GeluTanh => 1,
        Activation::Relu => 2,
    }
}

fn axis_code(a: Axis) -> (i32, i32) {
    match a {
        Axis::Slot => (0, 0),
        Axis::Row(w) => (1, w as i32),
        Axis::Col(w) => (2, w as i32),
    }
}

impl Cuda {
    /// out (m, n) (+)= inp (m, k) @ W, by cuBLAS on row-major buffers (as the column-major
    /// out^T = W^T inp^T): W (k, n) for `InOut`, (n, k) for `OutIn`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemm(
        &self,
        out: u64,
        inp: u64,
        w: u64,
        (m, k, n): (usize, usize, usize),
        layout: WeightLayout,
        beta: f32,
    ) {
        let (op_w, ld_w) = match layout {
            WeightLayout::InOut => (cublasOperation_t::CUBLAS_OP_N, n),
            WeightLayout::OutIn => (cublasOperation_t::CUBLAS_OP_T, k),
        };
        self.sgemm((op_w, cublasOperation_t::CUBLAS_OP_N), (n, m, k), (w, ld_w), (inp, k), (out, n), beta);
    }

    /// cuBLAS's C (m, n) = op(A) op(B) + beta C, column-major, f32 (no TF32).
    fn sgemm(
        &self,
        (ta, tb): (cublasOperation_t, cublasOperation_t),
        (m, n, k): (usize, usize, usize),
        (a, lda): (u64, usize),
        (b, ldb): (u64, usize),
        (c, ldc): (u64, usize),
        beta: f32,
    ) {
        if m == 0 || n == 0 {
            return;
        }
        let alpha = 1.0f32;
        self.bind();
        // SAFETY: a, b, c address live device buffers of the shapes the caller states; the
        // handle is bound to this engine's stream.
        let r = unsafe {
            cudarc::cublas::result::sgemm(
                *self.inner.blas.handle(),
                ta,
                tb,
                m as i32,
                n as i32,
                k as i32,
                &alpha,
                a as *const f32,
                lda as i32,
                b as *const f32,
                ldb as i32,
                &beta,
                c as *mut f32,
                ldc as i32,
            )
        };
        self.note(r, "cublasSgemm");
    }
}

impl Cuda {
    /// Token ids and their embedding multipliers in device memory for one call: the buffers
    /// (to keep until the launch) and their addresses (0: no multipliers).
    #[allow(clippy::type_complexity)]
    fn stage_tokens(
        &self,
        tokens: &[u32],
        scale: Option<&[f32]>,
    ) -> Option<((CudaSlice<u32>, Option<CudaSlice<f32>>), (u64, u64))> {
        let tok = self.staged(tokens)?;
        let scale = scale.and_then(|s| self.staged(s));
        let addrs = (self.addr(&tok), scale.as_ref().map_or(0, |x| self.addr(x)));
        Some(((tok, scale), addrs))
    }
}

impl Backend for Cuda {
    type Buf = CudaBuf;
    type Saved = CudaSaved;
    type Decode = CudaKv;
    type Packed = CudaPacked;

    fn decode_state(
        &self,
        spec: (Mask, Form),
        batch: usize,
        heads: (usize, usize),
        positions: usize,
        prec: KvPrecision,
    ) -> CudaKv {
        CudaKv::new(self, spec, batch, heads, positions, prec)
    }

    fn name(&self) -> String {
        self.inner.device.clone()
    }
    fn synchronize(&self) -> Result<()> {
        self.note(self.stream().synchronize(), "waiting for the GPU");
        self.check()
    }

    fn zeros(&self, n: usize) -> Result<CudaBuf> {
        Ok(CudaBuf { data: Some(self.alloc(n)?), len: n })
    }
    fn resize(&self, buf: &mut CudaBuf, n: usize) -> Result<()> {
        self.resize_quietly(buf, n);
        self.check()
    }
    fn upload(&self, host: &[f32]) -> Result<CudaBuf> {
        self.buf_of(host)
    }
    fn download(&self, buf: &CudaBuf, r: Range<usize>) -> Result<Vec<f32>> {
        assert!(r.start <= r.end && r.end <= buf.len, "download: {r:?} of a buffer of {}", buf.len);
        self.read_back(buf.ptr(self.stream(), r.start), r.len())
    }
    fn size(&self, buf: &CudaBuf) -> usize {
        buf.len
    }

    fn adamw(&self, params: &mut CudaBuf, grads: &CudaBuf, m: &mut CudaBuf, v: &mut CudaBuf, at: usize, k: AdamWStep) {
        let n = params.len;
        assert!(grads.len == n && m.len >= at + n && v.len >= at + n, "adamw: buffers of {n} parameters");
        let s = self.stream();
        let (p, g, mm, vv) = (params.ptr(s, 0), grads.ptr(s, 0), m.ptr(s, at), v.ptr(s, at));
        let AdamWStep { beta1, beta2, eps, bc2_sqrt, step_size } = k;
        launch!(self, "adamw", elems(n); p, g, mm, vv, n as i64, beta1, beta2, eps, bc2_sqrt, step_size);
    }
    fn scale(&self, x: &mut CudaBuf, f: f32) {
        let n = x.len;
        launch!(self, "scale_f32", elems(n); x.ptr(self.stream(), 0), f, n as i64);
    }
    fn scale_range(&self, x: &mut CudaBuf, r: Range<usize>, f: f32) {
        assert!(r.end <= x.len);
        launch!(self, "scale_f32", elems(r.len()); x.ptr(self.stream(), r.start), f, r.len() as i64);
    }
    fn sum_squares(&self, x: &CudaBuf) -> f64 {
        let parts = elems(x.len).grid_dim.0.min(1024);
        let Some(partial) = self.scratch::<f64>(parts as usize) else { return f64::NAN };
        let cfg = cudarc::driver::LaunchConfig { grid_dim: (parts, 1, 1), ..elems(x.len) };
        let (xp, pp) = (x.ptr(self.stream(), 0), self.addr(&partial));
        launch!(self, "sum_squares_partial", cfg; xp, x.len as i64, pp);
        // the partials in block order: deterministic
        self.fetch::<f64>(pp, parts as usize).map_or(f64::NAN, |p| p.iter().sum())
    }

    type View<'a> = DView<'a>;
    type ViewMut<'a> = DViewMut<'a>;

    fn view<'a>(&self, buf: &'a CudaBuf, r: Range<usize>) -> DView<'a> {
        assert!(r.start <= r.end && r.end <= buf.len, "view {r:?} of a buffer of {}", buf.len);
        DView::new(buf.ptr(self.stream(), r.start), r.len())
    }
    fn view_mut<'a>(&self, buf: &'a mut CudaBuf, r: Range<usize>) -> DViewMut<'a> {
        assert!(r.start <= r.end && r.end <= buf.len, "view {r:?} of a buffer of {}", buf.len);
        DViewMut::new(buf.ptr(self.stream(), r.start), r.len())
    }
    fn reborrow<'b>(&self, v: &'b mut DViewMut<'_>) -> DViewMut<'b> {
        DViewMut::new(v.ptr, v.len)
    }
    fn read<'b>(&self, v: &'b DViewMut<'_>) -> DView<'b> {
        DView::new(v.ptr, v.len)
    }
    fn view_len(&self, v: DView<'_>) -> usize {
        v.len
    }
    fn to_host(&self, v: DView<'_>) -> Vec<f32> {
        self.fetch(v.ptr, v.len).unwrap_or_else(|| vec![0.0; v.len])
    }
    fn copy(&self, dst: DViewMut<'_>, src: DView<'_>) {
        assert_eq!(dst.len, src.len, "copy between views of different lengths");
        self.copy_raw(dst.ptr, src.ptr, src.len);
    }
    fn fill(&self, dst: DViewMut<'_>, value: f32) {
        launch!(self, "fill_f32", elems(dst.len); dst.ptr, value, dst.len as i64);
    }

    fn rmsnorm_forward(&self, out: DViewMut<'_>, rstd: DViewMut<'_>, inp: DView<'_>, w: DView<'_>, eps: f64) {
        let (n, c) = (rstd.len, w.len);
        launch!(self, "rmsnorm_forward", warps(n); out.ptr, rstd.ptr, inp.ptr, w.ptr, n as i64, c as i32, eps);
    }
    fn rmsnorm_backward(
        &self,
        dinp: DViewMut<'_>,
        dw: DViewMut<'_>,
        dout: DView<'_>,
        inp: DView<'_>,
        rstd: DView<'_>,
        w: DView<'_>,
    ) {
        let (n, c) = (rstd.len, w.len);
        launch!(self, "rmsnorm_backward_dx", warps(n); dinp.ptr, dout.ptr, inp.ptr, rstd.ptr, w.ptr, n as i64, c as i32);
        let chunks = n.div_ceil(64);
        let Some(partial) = self.scratch::<f64>(chunks * c) else { return };
        let pp = self.addr(&partial);
        launch!(self, "rmsnorm_backward_dw_partial", elems(chunks * c); pp, dout.ptr, inp.ptr, rstd.ptr, n as i64, c as i32);
        launch!(self, "rmsnorm_backward_dw_finish", elems(c); dw.ptr, pp, chunks as i64, c as i32);
    }
    fn act_forward(&self, act: Activation, out: DViewMut<'_>, inp: DView<'_>) {
        launch!(self, "act_forward", elems(inp.len); act_code(act), out.ptr, inp.ptr, inp.len as i64);
    }
    fn act_inplace(&self, act: Activation, x: DViewMut<'_>) {
        launch!(self, "act_inplace", elems(x.len); act_code(act), x.ptr, x.len as i64);
    }
    fn act_backward(&self, act: Activation, dinp: DViewMut<'_>, dout: DView<'_>, inp: DView<'_>) {
        launch!(self, "act_backward", elems(inp.len); act_code(act), dinp.ptr, dout.ptr, inp.ptr, inp.len as i64);
    }
    fn matmul_forward(
        &self,
        out: DViewMut<'_>,
        inp: DView<'_>,
        w: DView<'_>,
        bias: Option<DView<'_>>,
        mkn: (usize, usize, usize),
        layout: WeightLayout,
        accumulate: bool,
    ) {
        let (m, k, n) = mkn;
        assert!(out.len >= m * n && inp.len >= m * k && w.len >= k * n, "matmul_forward: views of {mkn:?}");
        assert!(bias.is_none_or(|b| b.len == n), "matmul_forward: a bias of {n}");
        self.gemm(out.ptr, inp.ptr, w.ptr, mkn, layout, if accumulate { 1.0 } else { 0.0 });
        if let Some(b) = bias {
            launch!(self, "add_bias", elems(m * n); out.ptr, b.ptr, m as i64, n as i32);
        }
    }
    fn matmul_backward_weight(&self, dw: DViewMut<'_>, x: DView<'_>, dy: DView<'_>, (m, k, n): (usize, usize, usize)) {
        assert!(
            dw.len >= k * n && x.len >= m * k && dy.len >= m * n,
            "matmul_backward_weight: views of {:?}",
            (m, k, n)
        );
        // dW^T (n, k) += dy^T (n, m) x (m, k), column-major
        let ops = (cublasOperation_t::CUBLAS_OP_N, cublasOperation_t::CUBLAS_OP_T);
        self.sgemm(ops, (n, k, m), (dy.ptr, n), (x.ptr, k), (dw.ptr, n), 1.0);
    }
    fn bias_backward(&self, db: DViewMut<'_>, dy: DView<'_>, n: usize) {
        let m = dy.len / n.max(1);
        let chunks = m.div_ceil(64);
        let Some(partial) = self.scratch::<f32>(chunks * n) else { return };
        let pp = self.addr(&partial);
        launch!(self, "bias_backward_partial", elems(chunks * n); pp, dy.ptr, m as i64, n as i32);
        launch!(self, "bias_backward_finish", elems(n); db.ptr, pp, chunks as i64, n as i32);
    }
    fn add_inplace(&self, x: DViewMut<'_>, y: DView<'_>) {
        launch!(self, "add_inplace", elems(x.len); x.ptr, y.ptr, x.len as i64);
    }
    fn dropout(&self, d: Dropout, x: DViewMut<'_>) {
        let (key, threshold, scale) = d.parts();
        launch!(self, "dropout", elems(x.len); x.ptr, x.len as i64, key, threshold, scale);
    }
    fn cross_entropy_fused(&self, logits: DViewMut<'_>, targets: &[u32], weights: &[f32], v: usize) -> f64 {
        let n = targets.len();
        assert!(weights.len() == n && logits.len >= n * v, "cross_entropy_fused: {n} rows of {v}");
        if n == 0 {
            return 0.0;
        }
        let (Some(tg), Some(wt), Some(loss)) = (self.staged(targets), self.staged(weights), self.scratch::<f64>(n))
        else {
            return f64::NAN;
        };
        let (tp, wp, lp) = (self.addr(&tg), self.addr(&wt), self.addr(&loss));
        launch!(self, "cross_entropy_fused", blocks(n); logits.ptr, tp, wp, lp, v as i32);
        // the rows' losses summed on the host in row order, as the CPU
        self.fetch::<f64>(lp, n).map_or(f64::NAN, |l| l.iter().sum())
    }
    fn embed_forward(
        &self,
        out: DViewMut<'_>,
        tokens: &[u32],
        wte: DView<'_>,
        token_scale: Option<&[f32]>,
        tables: &[(DView<'_>, Axis)],
        t: usize,
        pos0: usize,
        c: usize,
    ) {
        assert!(tables.len() <= 2, "at most two position tables");
        assert!(out.len >= tokens.len() * c, "embed_forward: an output of {} rows", tokens.len());
        if tokens.is_empty() {
            return;
        }
        let Some(((_tok, _scale), (tp, sp))) = self.stage_tokens(tokens, token_scale) else { return };
        let table =
            |i: usize| tables.get(i).map_or((0u64, 0i32, 0i32), |(v, a)| (v.ptr, axis_code(*a).0, axis_code(*a).1));
        let ((t0, a0, w0), (t1, a1, w1)) = (table(0), table(1));
        let width = w0.max(w1);
        let n = tokens.len();
        launch!(self, "embed_forward", elems(n * c);
            out.ptr, tp, wte.ptr, sp, t0, a0, t1, a1, width, n as i64, t as i32, pos0 as i64, c as i32);
    }
    fn embed_backward(
        &self,
        grads: DViewMut<'_>,
        wte: Range<usize>,
        tables: &[(Range<usize>, Axis)],
        dout: DView<'_>,
        tokens: &[u32],
        token_scale: Option<&[f32]>,
        t: usize,
        c: usize,
    ) {
        assert!(dout.len >= tokens.len() * c, "embed_backward: a gradient of {} rows", tokens.len());
        if tokens.is_empty() {
            return;
        }
        let Some(((_tok, _scale), (tp, sp))) = self.stage_tokens(tokens, token_scale) else { return };
        let (n, g) = (tokens.len(), DView::new(grads.ptr, grads.len));
        launch!(self, "embed_backward_tokens", elems(n * c); g.at(wte.start), dout.ptr, tp, sp, n as i64, c as i32);
        for (range, axis) in tables {
            let (code, width) = axis_code(*axis);
            let rows = range.len() / c;
            launch!(self, "embed_backward_table", elems(rows * c);
                g.at(range.start), rows as i32, code, width, dout.ptr, n as i64, t as i32, c as i32);
        }
    }
    fn rope(&self, rope: &Rope, qkv: DViewMut<'_>, t: usize, pos0: usize, inverse: bool) {
        let c = rope.nh * rope.hs;
        assert!(rope.hs.is_multiple_of(4) && qkv.len.is_multiple_of(3 * c), "rope: qkv rows of 3 x {c}, heads of 4k");
        let n = qkv.len / (3 * c);
        let work = n * 2 * rope.nh * 2 * (rope.hs / 4);
        let sign = if inverse { -1.0f64 } else { 1.0 };
        launch!(self, "rope", elems(work);
            qkv.ptr, n as i64, t as i32, pos0 as i64, rope.nh as i32, rope.hs as i32, rope.width as i32, rope.theta, sign);
    }
    fn pack(&self, w: DView<'_>, kn: (usize, usize), layout: WeightLayout, elem: PackAs) -> Result<CudaPacked> {
        if elem == PackAs::F16 {
            return Err(self.error("f16 decoding weights are not in the CUDA engine yet: give --weights f32".into()));
        }
        let mut copy = self.zeros(w.len)?;
        self.copy_raw(copy.ptr(self.stream(), 0), w.ptr, w.len);
        copy.len = w.len;
        Ok(CudaPacked { w: copy, kn, layout })
    }
    fn matmul_packed(
        &self,
        out: DViewMut<'_>,
        inp: DView<'_>,
        w: &CudaPacked,
        bias: Option<DView<'_>>,
        m: usize,
        accumulate: bool,
    ) {
        let (k, n) = w.kn;
        let wv = self.view(&w.w, 0..w.w.len);
        self.matmul_forward(out, inp, wv, bias, (m, k, n), w.layout, accumulate);
    }
    fn attend_cached(
        &self,
        cache: &mut CudaKv,
        out: DViewMut<'_>,
        saved: &mut CudaSaved,
        q: Seq<DView<'_>>,
        k: Seq<DView<'_>>,
        v: Seq<DView<'_>>,
        past: usize,
        d: AttnDims,
    ) {
        cache.attend(self, out, saved, (q, k, v), past, d)
    }
    fn mean_over_positions(&self, x: DView<'_>, b: usize, t: usize, c: usize) -> Vec<f32> {
        assert!(x.len >= b * t * c, "mean_over_positions: a view of {b} x {t} x {c}");
        let Some(out) = self.scratch::<f32>(b * c) else { return vec![0.0; b * c] };
        let op = self.addr(&out);
        launch!(self, "mean_over_positions", elems(b * c); op, x.ptr, b as i32, t as i32, c as i32);
        self.fetch(op, b * c).unwrap_or_else(|| vec![0.0; b * c])
    }
    fn mean_over_positions_backward(&self, dx: DViewMut<'_>, dmean: DView<'_>, b: usize, t: usize, c: usize) {
        launch!(self, "mean_over_positions_backward", elems(b * t * c); dx.ptr, dmean.ptr, b as i32, t as i32, c as i32);
    }
    fn attention_forward(
        &self,
        out: DViewMut<'_>,
        saved: &mut CudaSaved,
        q: Seq<DView<'_>>,
        k: Seq<DView<'_>>,
        v: Seq<DView<'_>>,
        d: AttnDims,
    ) {
        super::attention::forward(self, out, saved, (q, k, v), d)
    }
    fn attention_probs(&self, saved: &CudaSaved, q: Seq<DView<'_>>, k: Seq<DView<'_>>, d: AttnDims) -> Vec<f32> {
        super::attention::probs(self, saved, q, k, d)
    }
    fn attention_backward(
        &self,
        dqkv: DViewMut<'_>,
        dout: DView<'_>,
        out: DView<'_>,
        saved: &CudaSaved,
        q: Seq<DView<'_>>,
        k: Seq<DView<'_>>,
        v: Seq<DView<'_>>,
        d: AttnDims,
    ) {
        super::attention::backward(self, dqkv, (dout, out), saved, (q, k, v), d)
    }
}
