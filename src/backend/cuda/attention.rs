//! The CUDA engine's attention: the softmax form over any mask (causal, full, local_2d)
//! with dropout of the probabilities, its backward, and decoding over a KV cache in device
//! memory. Linear attention and f16 / int8 caches are the CPU's only for now: asking for
//! them here is an error that says so.

use cudarc::driver::DeviceRepr;

use super::engine::{Cuda, launch, warps};
use super::memory::{CudaBuf, DView, DViewMut};
use crate::backend::Cpu;
use crate::backend::attention::{self, AttnDims, DecodeInfo, Form, KvPrecision, Mask, Seq};
use crate::backend::engine::Backend;

/// kernels.cu's `struct Mask`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct MaskArg {
    kind: i32,
    rows: i32,
    cols: i32,
    width: i32,
    causal: i32,
}

// SAFETY: plain i32 fields, laid out as the C struct.
unsafe impl DeviceRepr for MaskArg {}

impl From<Mask> for MaskArg {
    fn from(m: Mask) -> Self {
        match m {
            Mask::Causal => MaskArg { kind: 0, rows: 0, cols: 0, width: 1, causal: 1 },
            Mask::Full => MaskArg { kind: 1, rows: 0, cols: 0, width: 1, causal: 0 },
            Mask::Local2d { rows, cols, width, causal } => {
                MaskArg { kind: 2, rows: rows as i32, cols: cols as i32, width: width as i32, causal: causal as i32 }
            }
        }
    }
}

/// What the forward keeps for the backward: each query row's log-sum-exp (B, nh, T).
#[derive(Debug, Default)]
pub struct CudaSaved {
    lse: CudaBuf,
}

/// The dropout arguments of the kernels: (on, key, threshold, scale).
fn drop_args(d: &AttnDims) -> (i32, u64, u32, f32) {
    d.dropout.map_or((0, 0, 0, 1.0), |dp| {
        let (key, threshold, scale) = dp.parts();
        (1, key, threshold, scale)
    })
}

/// The engine refuses what its kernels do not compute (recorded; reported by the next
/// fallible operation). True when the call can run.
fn supported(be: &Cuda, d: &AttnDims) -> bool {
    if d.form == Form::Linear {
        be.note(Err::<(), _>("linear attention runs on the CPU engine only for now (--device cpu)"), "attention");
        return false;
    }
    if d.hs > 128 {
        be.note(Err::<(), _>(format!("heads of {} values (at most 128 on the GPU)", d.hs)), "attention");
        return false;
    }
    true
}

/// out (B, T, C) = softmax attention of q over k, v (views with their strides); lse into `saved`.
pub(super) fn forward(
    be: &Cuda,
    out: DViewMut<'_>,
    saved: &mut CudaSaved,
    (q, k, v): (Seq<DView<'_>>, Seq<DView<'_>>, Seq<DView<'_>>),
    d: AttnDims,
) {
    if !supported(be, &d) {
        return;
    }
    let (rows, c) = (d.b * d.nh * d.t, d.nh * d.hs);
    assert!(out.len >= d.b * d.t * c, "attention_forward: an output of {} x {} x {c}", d.b, d.t);
    for (x, n) in [(&q, d.t), (&k, d.tk), (&v, d.tk)] {
        let reach = x.offset + (d.b - 1) * x.batch_stride + (n - 1) * x.row_stride + c;
        assert!(x.data.len >= reach, "attention_forward: a sequence view reaching {reach} of {}", x.data.len);
    }
    if !be.resize_quietly(&mut saved.lse, rows) {
        return;
    }
    let lse = be.view_mut(&mut saved.lse, 0..rows).ptr;
    let (on, key, threshold, scale) = drop_args(&d);
    let s = |x: &Seq<DView<'_>>| (x.data.ptr, x.offset as i64, x.batch_stride as i64, x.row_stride as i64);
    let ((qp, qo, qb, qr), (kp, ko, kb, kr), (vp, vo, vb, vr)) = (s(&q), s(&k), s(&v));
    launch!(be, "attention_forward", warps(rows);
        out.ptr, lse, qp, qo, qb, qr, kp, ko, kb, kr, vp, vo, vb, vr,
        d.b as i32, d.t as i32, d.tk as i32, d.nh as i32, d.hs as i32, MaskArg::from(d.mask), d.scale,
        on, key, threshold, scale);
}

/// dqkv (B, T, 3C) of a training forward (q, k, v the parts of one qkv buffer, tk = t).
pub(super) fn backward(
    be: &Cuda,
    dqkv: DViewMut<'_>,
    (dout, out): (DView<'_>, DView<'_>),
    saved: &CudaSaved,
    (q, k, v): (Seq<DView<'_>>, Seq<DView<'_>>, Seq<DView<'_>>),
    d: AttnDims,
) {
    if !supported(be, &d) {
        return;
    }
    let c = d.nh * d.hs;
    let parts = |x: &Seq<DView<'_>>, at| {
        x.data.ptr == q.data.ptr && x.offset == at && x.row_stride == 3 * c && x.batch_stride == d.t * 3 * c
    };
    assert!(
        parts(&q, 0) && parts(&k, c) && parts(&v, 2 * c) && d.tk == d.t,
        "attention_backward: q, k, v of one qkv buffer"
    );
    let rows = d.b * d.nh * d.t;
    assert!(be.size(&saved.lse) >= rows && dqkv.len >= d.b * d.t * 3 * c && q.data.len >= d.b * d.t * 3 * c);
    // D (B, nh, T) = rowsum(dout * out), in a scratch of this call
    let Some(delta) = be.scratch::<f32>(rows) else { return };
    let dp = be.addr(&delta);
    launch!(be, "attention_backward_delta", warps(rows);
        dp, dout.ptr, out.ptr, d.b as i32, d.t as i32, d.nh as i32, d.hs as i32);
    let lse = saved.lse.ptr(be.stream(), 0);
    let (on, key, threshold, scale) = drop_args(&d);
    for kernel in ["attention_backward_dq", "attention_backward_dkdv"] {
        launch!(be, kernel, warps(rows);
            dqkv.ptr, dout.ptr, lse, dp, q.data.ptr, d.b as i32, d.t as i32, d.nh as i32, d.hs as i32,
            MaskArg::from(d.mask), d.scale, on, key, threshold, scale);
    }
    drop(delta);
}

/// The probabilities (B, nh, T, Tk) of the last forward, computed on the host from copies
/// of q, k and the saved log-sum-exp (for inspection only).
pub(super) fn probs(be: &Cuda, saved: &CudaSaved, q: Seq<DView<'_>>, k: Seq<DView<'_>>, d: AttnDims) -> Vec<f32> {
    let (hq, hk) = (be.to_host(q.data), be.to_host(k.data));
    let rows = d.b * d.nh * d.t;
    let lse = be.fetch(saved.lse.ptr(be.stream(), 0), rows).unwrap_or_else(|| vec![0.0; rows]);
    let host = |s: &Seq<DView<'_>>, data| Seq {
        data,
        offset: s.offset,
        batch_stride: s.batch_stride,
        row_stride: s.row_stride,
    };
    Cpu.attention_probs(&attention::Saved::from_lse(lse), host(&q, &hq[..]), host(&k, &hk[..]), d)
}

/// One layer's decoding state in device memory: the keys and values of every slot so far,
/// (B, positions, C) each.
#[derive(Clone, Debug)]
pub struct CudaKv {
    k: CudaBuf,
    v: CudaBuf,
    batch: usize,
    positions: usize,
    c: usize,
}

impl CudaKv {
    pub(super) fn new(
        be: &Cuda,
        (_, form): (Mask, Form),
        batch: usize,
        (nh, hs): (usize, usize),
        positions: usize,
        prec: KvPrecision,
    ) -> Self {
        let c = nh * hs;
        if prec != KvPrecision::F32 {
            be.note(
                Err::<(), _>("f16 and int8 KV caches are on the CPU engine only for now: give --kv-cache f32"),
                "KV cache",
            );
        }
        if form == Form::Linear {
            be.note(Err::<(), _>("linear attention runs on the CPU engine only for now (--device cpu)"), "KV cache");
        }
        let n = batch * positions * c;
        let (k, v) = match (be.zeros(n), be.zeros(n)) {
            (Ok(k), Ok(v)) => (k, v),
            (Err(e), _) | (_, Err(e)) => {
                be.note(Err::<(), _>(e), "KV cache");
                (CudaBuf::default(), CudaBuf::default())
            }
        };
        CudaKv { k, v, batch, positions, c }
    }

    /// The new slots' keys and values join the cache; their queries attend to every slot.
    pub(super) fn attend(
        &mut self,
        be: &Cuda,
        out: DViewMut<'_>,
        saved: &mut CudaSaved,
        (q, k, v): (Seq<DView<'_>>, Seq<DView<'_>>, Seq<DView<'_>>),
        past: usize,
        d: AttnDims,
    ) {
        if past + d.t > self.positions || be.size(&self.k) == 0 {
            be.note(
                Err::<(), _>(format!("{} positions do not fit a cache of {}", past + d.t, self.positions)),
                "KV cache",
            );
            return;
        }
        let (b, t, tmax, c) = (self.batch as i32, d.t as i32, self.positions as i32, self.c as i32);
        for src in [&k, &v] {
            let reach = src.offset + (self.batch - 1) * src.batch_stride + (d.t - 1) * src.row_stride + self.c;
            assert!(
                d.b == self.batch && src.data.len >= reach,
                "attend_cached: new keys and values of {} rows",
                self.batch
            );
        }
        for (cache, src) in [(&mut self.k, &k), (&mut self.v, &v)] {
            let dst = cache.ptr(be.stream(), 0);
            launch!(be, "kv_append", super::engine::elems(self.batch * d.t * self.c);
                dst, src.data.ptr, src.offset as i64, src.batch_stride as i64, src.row_stride as i64, b, t, tmax, past as i64, c);
        }
        let n = self.batch * self.positions * self.c;
        let (bs, rs) = (self.positions * self.c, self.c);
        let kc = Seq { data: be.view(&self.k, 0..n), offset: 0, batch_stride: bs, row_stride: rs };
        let vc = Seq { data: be.view(&self.v, 0..n), offset: 0, batch_stride: bs, row_stride: rs };
        forward(be, out, saved, (q, kc, vc), AttnDims { tk: past + d.t, ..d });
    }
}

impl DecodeInfo for CudaKv {
    fn bytes(&self) -> usize {
        8 * self.batch * self.positions * self.c
    }
    fn precision(&self) -> KvPrecision {
        KvPrecision::F32
    }
}
