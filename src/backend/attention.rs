//! Multi-head attention, block by block with an online softmax (flash-attention style):
//! a (T x T) score matrix is never stored, and key blocks that the causal mask hides
//! entirely are skipped. The log-sum-exp of every query row is saved, so the backward
//! pass (and `attention_probs`) can recompute any probability exactly.
//!
//! HF semantics (`modeling_imagegpt.py` `ImageGPTAttention._attn`): scores q.k are divided
//! by sqrt(hs) when `scale_attn_weights` and by (layer_idx + 1) when
//! `scale_attn_by_inverse_layer_idx`; query row r of a chunk that follows `past` cached
//! positions sees keys 0..=past + r.

use rayon::prelude::*;

use super::attn_kernels::{self, KB};
use super::math::{exp, exp_sub_sum, max};

/// Query rows per task.
pub const BQ: usize = 64;
/// Keys per online-softmax step: KC / KB score kernels fill a (BQ, KC) panel, then each
/// row's running max and sum are updated once.
pub const KC: usize = 4 * KB;

/// A (B, rows, cols) view into a flat buffer: element (b, r, c) is at
/// `offset + b * batch_stride + r * row_stride + c`. Heads are column blocks of width hs.
#[derive(Clone, Copy, Debug)]
pub struct SeqView<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub batch_stride: usize,
    pub row_stride: usize,
}

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
    pub causal: bool,
    /// Multiplier of q.k (1/sqrt(hs), times 1/(layer+1) when asked).
    pub scale: f32,
}

struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// How a KV cache stores keys and values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvPrecision {
    /// f32, exact: cached decoding gives the uncached forward's logits (to rounding).
    #[default]
    F32,
    /// IEEE half precision (values beyond +-65504 saturate): half the memory, for large
    /// batches (the f32 cache of E=256, 8 layers, batch 256 holds 4.3 GB); logits move
    /// by a few 1e-3 (keys and values keep 11 significant bits).
    F16,
}

impl std::str::FromStr for KvPrecision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" | "fp32" | "float32" => Ok(KvPrecision::F32),
            "f16" | "fp16" | "float16" | "half" => Ok(KvPrecision::F16),
            other => Err(format!("unknown KV cache precision `{other}`: use f32 or f16")),
        }
    }
}

/// The values of a [`KvBlocks`] in their storage precision.
#[derive(Clone, Debug)]
enum Store {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
}

impl Store {
    fn new(prec: KvPrecision, len: usize) -> Self {
        match prec {
            KvPrecision::F32 => Store::F32(vec![0.0; len]),
            KvPrecision::F16 => Store::F16(vec![half::f16::ZERO; len]),
        }
    }

    /// `len` values from `at` as f32: borrowed (f32) or converted into `buf` (f16).
    #[inline]
    fn read<'a>(&'a self, at: usize, len: usize, buf: &'a mut Vec<f32>) -> &'a [f32] {
        match self {
            Store::F32(v) => &v[at..at + len],
            Store::F16(v) => {
                buf.resize(len, 0.0);
                f16_to_f32(&v[at..at + len], buf);
                buf
            }
        }
    }
}

/// dst = src as f32 (exact), 16 values per instruction on AVX-512.
fn f16_to_f32(src: &[half::f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    let mut i = 0;
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    // SAFETY: i + 16 <= len for both slices; f16 is a 2-byte plain value.
    unsafe {
        use std::arch::x86_64::*;
        while i + 16 <= src.len() {
            let h = _mm256_loadu_si256(src.as_ptr().add(i) as *const __m256i);
            _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_cvtph_ps(h));
            i += 16;
        }
    }
    for (d, s) in dst[i..].iter_mut().zip(&src[i..]) {
        *d = s.to_f32();
    }
}

/// A mutable (batch row, head) part of a [`Store`].
enum Part<'a> {
    F32(&'a mut [f32]),
    F16(&'a mut [half::f16]),
}

impl Part<'_> {
    #[inline]
    fn set(&mut self, i: usize, x: f32) {
        match self {
            Part::F32(v) => v[i] = x,
            Part::F16(v) => v[i] = half::f16::from_f32(x.clamp(-65504.0, 65504.0)),
        }
    }
}

fn parts(s: &mut Store, chunk: usize) -> Vec<Part<'_>> {
    match s {
        Store::F32(v) => v.chunks_mut(chunk).map(Part::F32).collect(),
        Store::F16(v) => v.chunks_mut(chunk).map(Part::F16).collect(),
    }
}

/// Keys and values of one layer laid out for the attention kernel: K transposed per head and
/// key block, (B, nh, cap/KB, hs, KB), each block contiguous (no 4 KiB-strided rows fighting
/// over L1 sets), and V per head, (B, nh, cap, hs). The full forward fills one per call; the
/// KV cache keeps one per layer and appends to it.
#[derive(Clone, Debug)]
pub struct KvBlocks {
    b: usize,
    nh: usize,
    hs: usize,
    /// Capacity in positions, a multiple of KB (unused positions are zero).
    cap: usize,
    kt: Store,
    v: Store,
}

impl KvBlocks {
    pub fn new(b: usize, nh: usize, hs: usize, positions: usize) -> Self {
        Self::with_precision(b, nh, hs, positions, KvPrecision::F32)
    }

    pub fn with_precision(b: usize, nh: usize, hs: usize, positions: usize, prec: KvPrecision) -> Self {
        let cap = positions.div_ceil(KB).max(1) * KB;
        let len = b * nh * hs * cap;
        KvBlocks { b, nh, hs, cap, kt: Store::new(prec, len), v: Store::new(prec, len) }
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn precision(&self) -> KvPrecision {
        match self.kt {
            Store::F32(_) => KvPrecision::F32,
            Store::F16(_) => KvPrecision::F16,
        }
    }

    /// Bytes held (keys and values).
    pub fn bytes(&self) -> usize {
        let per = match self.kt {
            Store::F32(_) => 4,
            Store::F16(_) => 2,
        };
        2 * self.b * self.nh * self.hs * self.cap * per
    }

    /// Writes positions pos0..pos0+n from (B, n, nh*hs) views of the new keys and values.
    pub fn write(&mut self, k: SeqView, v: SeqView, pos0: usize, n: usize) {
        assert!(pos0 + n <= self.cap, "KvBlocks: position {} beyond capacity {}", pos0 + n, self.cap);
        let (hs, nh, cap) = (self.hs, self.nh, self.cap);
        let kparts = parts(&mut self.kt, hs * cap);
        let vparts = parts(&mut self.v, cap * hs);
        kparts.into_par_iter().zip(vparts).enumerate().for_each(|(bh, (mut kt, mut vv))| {
            let (b, h) = (bh / nh, bh % nh);
            for j in 0..n {
                let p = pos0 + j;
                let blk = (p / KB) * hs * KB + p % KB;
                for (x, &kv) in k.row(b, j, h * hs, hs).iter().enumerate() {
                    kt.set(blk + x * KB, kv);
                }
                for (x, &vv_) in v.row(b, j, h * hs, hs).iter().enumerate() {
                    vv.set(p * hs + x, vv_);
                }
            }
        });
    }
}

/// out = softmax(q k^T * scale, masked) v, for every batch row and head.
///
/// # Shapes
/// q: (B, T, nh*hs) view; k, v: (B, Tk, nh*hs) views; out: (B, T, nh*hs) contiguous;
/// lse: (B, nh, T) receives max + ln(sum exp) of each query row's scaled scores.
pub fn attention_forward(out: &mut [f32], lse: &mut [f32], q: SeqView, k: SeqView, v: SeqView, d: AttnDims) {
    // The packed keys and values are reused between calls of the same shape (every layer of
    // every step): stale positions past d.tk are never read unmasked.
    thread_local! {
        static KV: std::cell::RefCell<Option<KvBlocks>> = const { std::cell::RefCell::new(None) };
    }
    let cap = d.tk.div_ceil(KB).max(1) * KB;
    let mut kv = KV
        .with(|c| c.borrow_mut().take())
        .filter(|kv| (kv.b, kv.nh, kv.hs, kv.cap) == (d.b, d.nh, d.hs, cap))
        .unwrap_or_else(|| KvBlocks::new(d.b, d.nh, d.hs, d.tk));
    kv.write(k, v, 0, d.tk);
    attention_with_kv(out, lse, q, &kv, d);
    KV.with(|c| *c.borrow_mut() = Some(kv));
}

/// Attention of T new query rows over the first d.tk positions of `kv` (which already holds
/// the new rows' keys and values at positions d.tk - T..d.tk).
pub fn attention_with_kv(out: &mut [f32], lse: &mut [f32], q: SeqView, kv: &KvBlocks, d: AttnDims) {
    let c = d.nh * d.hs;
    assert!(out.len() >= d.b * d.t * c && lse.len() >= d.b * d.nh * d.t);
    assert!(d.tk >= d.t && d.tk <= kv.cap && kv.b == d.b && kv.nh == d.nh && kv.hs == d.hs);
    let past = d.tk - d.t;
    let nqb = d.t.div_ceil(BQ);
    let tkp = kv.cap;
    let (kt_all, v_all) = (&kv.kt, &kv.v);
    let hs = d.hs;
    let out_ptr = SendPtr(out.as_mut_ptr());
    let lse_ptr = SendPtr(lse.as_mut_ptr());
    let (out_ptr, lse_ptr) = (&out_ptr, &lse_ptr);
    (0..d.b * d.nh * nqb).into_par_iter().for_each_init(
        || Scratch::new(d.hs, BQ.min(d.t)),
        |sc, task| {
            let (bh, qb) = (task / nqb, task % nqb);
            let (b, h) = (bh / d.nh, bh % d.nh);
            let q_lo = qb * BQ;
            let nq = BQ.min(d.t - q_lo);
            let kmax = if d.causal { past + q_lo + nq } else { d.tk };
            // Q block (nq, hs), contiguous and pre-multiplied by the score scale.
            for r in 0..nq {
                let src = q.row(b, q_lo + r, h * hs, hs);
                sc.q[r * hs..(r + 1) * hs].iter_mut().zip(src).for_each(|(a, &x)| *a = x * d.scale);
            }
            sc.o[..nq * hs].fill(0.0);
            sc.m[..nq].fill(f32::NEG_INFINITY);
            sc.l[..nq].fill(0.0);
            let mut k_lo = 0;
            while k_lo < kmax {
                let nk = KC.min(kmax - k_lo);
                // S (nq, nk) panel, KB columns at a time (the last block padded with zero keys)
                let kt = kt_all.read(bh * hs * tkp + k_lo * hs, nk.next_multiple_of(KB) * hs, &mut sc.kbuf);
                for kb in (0..nk).step_by(KB) {
                    attn_kernels::scores(&mut sc.s[kb..], KC, &sc.q, &kt[kb * hs..], KB, nq, hs);
                }
                for r in 0..nq {
                    let row = &mut sc.s[r * KC..r * KC + nk];
                    let valid = if d.causal { (past + q_lo + r + 1).saturating_sub(k_lo).min(nk) } else { nk };
                    if valid == 0 {
                        row.fill(0.0);
                        continue;
                    }
                    let m_new = sc.m[r].max(max(&row[..valid]));
                    let corr = exp(sc.m[r] - m_new);
                    let sum = exp_sub_sum(&mut row[..valid], m_new);
                    row[valid..].fill(0.0);
                    sc.l[r] = sc.l[r] * corr + sum;
                    sc.m[r] = m_new;
                    if corr != 1.0 {
                        sc.o[r * hs..(r + 1) * hs].iter_mut().for_each(|x| *x *= corr);
                    }
                }
                let vb = v_all.read((bh * tkp + k_lo) * hs, nk * hs, &mut sc.vbuf);
                attn_kernels::accumulate_pv_any(&mut sc.o, &sc.s, KC, vb, nq, nk, hs); // O += P V
                k_lo += nk;
            }
            for r in 0..nq {
                let inv = 1.0 / sc.l[r];
                // SAFETY: task (b, h, qb) owns rows q_lo..q_lo+nq, columns h*hs..(h+1)*hs of
                // `out` and entries (b, h, q_lo..q_lo+nq) of `lse`; no other task writes there.
                unsafe {
                    let dst = out_ptr.0.add((b * d.t + q_lo + r) * c + h * hs);
                    for j in 0..hs {
                        *dst.add(j) = sc.o[r * hs + j] * inv;
                    }
                    *lse_ptr.0.add((b * d.nh + h) * d.t + q_lo + r) = sc.m[r] + sc.l[r].ln();
                }
            }
        },
    );
}

/// Per-thread buffers of one attention task.
struct Scratch {
    q: Vec<f32>,
    s: Vec<f32>,
    o: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
    /// Keys and values of one chunk converted to f32 (half-precision caches only).
    kbuf: Vec<f32>,
    vbuf: Vec<f32>,
}

impl Scratch {
    fn new(hs: usize, rows: usize) -> Self {
        Scratch {
            q: vec![0.0; rows * hs],
            s: vec![0.0; rows * KC],
            o: vec![0.0; rows * hs],
            m: vec![0.0; rows],
            l: vec![0.0; rows],
            kbuf: Vec::new(),
            vbuf: Vec::new(),
        }
    }
}

/// Recomputes the attention probabilities of one (batch row, head) from q, k and the saved
/// log-sum-exp: p[r, j] = exp(q_r . k_j * scale - lse_r), 0 where masked. For inspection
/// (HF's `output_attentions`) and tests; O(T * Tk) memory.
pub fn attention_probs(q: SeqView, k: SeqView, lse: &[f32], d: AttnDims, b: usize, h: usize) -> Vec<f32> {
    let past = d.tk - d.t.min(d.tk);
    let mut p = vec![0f32; d.t * d.tk];
    for r in 0..d.t {
        let valid = if d.causal { past + r + 1 } else { d.tk };
        let row_lse = lse[(b * d.nh + h) * d.t + r];
        for j in 0..valid {
            let mut dot = 0f32;
            for x in 0..d.hs {
                // SAFETY: in-bounds by the view's construction (debug-checked).
                unsafe { dot += *q.ptr(b, r, h * d.hs + x) * *k.ptr(b, j, h * d.hs + x) };
            }
            p[r * d.tk + j] = exp(dot * d.scale - row_lse);
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive float64 reference: full score matrix, masked, softmax.
    fn naive(qkv: &[f32], d: AttnDims) -> Vec<f32> {
        let c = d.nh * d.hs;
        let mut out = vec![0f32; d.b * d.t * c];
        for b in 0..d.b {
            for h in 0..d.nh {
                for r in 0..d.t {
                    let at = |row: usize, part: usize, x: usize| {
                        qkv[(b * d.t + row) * 3 * c + part * c + h * d.hs + x] as f64
                    };
                    let n = if d.causal { r + 1 } else { d.t };
                    let s: Vec<f64> = (0..n)
                        .map(|j| (0..d.hs).map(|x| at(r, 0, x) * at(j, 1, x)).sum::<f64>() * d.scale as f64)
                        .collect();
                    let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|v| (v - mx).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for x in 0..d.hs {
                        let v: f64 = (0..n).map(|j| e[j] / z * at(j, 2, x)).sum();
                        out[(b * d.t + r) * c + h * d.hs + x] = v as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn blockwise_matches_naive_causal_and_bidirectional() {
        // T = 300 spans several query and key blocks, with a ragged last block.
        let (b, t, nh, hs) = (2, 300, 3, 8);
        let c = nh * hs;
        let mut rng = crate::rng::Rng::new(3);
        let qkv: Vec<f32> = (0..b * t * 3 * c).map(|_| rng.normal() as f32).collect();
        for causal in [true, false] {
            let d = AttnDims { b, t, tk: t, nh, hs, causal, scale: 1.0 / (hs as f32).sqrt() };
            let view =
                |part: usize| SeqView { data: &qkv, offset: part * c, batch_stride: t * 3 * c, row_stride: 3 * c };
            let mut out = vec![0f32; b * t * c];
            let mut lse = vec![0f32; b * nh * t];
            attention_forward(&mut out, &mut lse, view(0), view(1), view(2), d);
            let want = naive(&qkv, d);
            let worst = out.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 2e-5, "causal={causal}: max diff {worst}");
            // probabilities recomputed from lse sum to one
            let p = attention_probs(view(0), view(1), &lse, d, 1, 2);
            for r in [0, 77, 299] {
                let z: f32 = p[r * t..(r + 1) * t].iter().sum();
                assert!((z - 1.0).abs() < 1e-5, "row {r} sums to {z}");
            }
        }
    }
}
