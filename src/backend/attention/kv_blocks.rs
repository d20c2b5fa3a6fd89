//! The keys and values one attention layer reads, laid out for its kernels, in f32, f16 or
//! int8: the full forward fills one per call, the KV cache keeps one per layer and appends
//! to it.

use rayon::prelude::*;

use super::kernels::KB;
use super::view::SeqView;
use crate::backend::isa::{self, KernelSet};

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
    /// 8-bit integers with one f32 scale per key or value vector of a head (absmax / 127,
    /// as llama.cpp's q8_0 cache): a quarter of the f32 bytes (plus 4 bytes per hs values);
    /// logits move by a few 1e-2 (about 1% of their range).
    Int8,
}

impl std::str::FromStr for KvPrecision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" | "fp32" | "float32" => Ok(KvPrecision::F32),
            "f16" | "fp16" | "float16" | "half" => Ok(KvPrecision::F16),
            "int8" | "i8" | "q8" => Ok(KvPrecision::Int8),
            other => Err(format!("unknown KV cache precision `{other}`: use f32, f16 or int8")),
        }
    }
}

/// The values of a [`KvBlocks`] in their storage precision.
#[derive(Clone, Debug)]
pub(crate) enum Store {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
    /// Values and one scale per (batch row, head, position): value = q * scale.
    Int8(Vec<i8>, Vec<f32>),
}

impl Store {
    /// Room for `len` values, `len / hs` vectors.
    fn new(prec: KvPrecision, len: usize, hs: usize) -> Self {
        match prec {
            KvPrecision::F32 => Store::F32(vec![0.0; len]),
            KvPrecision::F16 => Store::F16(vec![half::f16::ZERO; len]),
            KvPrecision::Int8 => Store::Int8(vec![0; len], vec![0.0; len / hs.max(1)]),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Store::F32(v) => 4 * v.len(),
            Store::F16(v) => 2 * v.len(),
            Store::Int8(q, sc) => q.len() + 4 * sc.len(),
        }
    }

    /// `len` values from `at` as f32: borrowed (f32) or converted into `buf`; `scale_of(i)`
    /// is the index of the scale of value `at + i` (8-bit stores only).
    #[inline]
    fn read<'a>(
        &'a self,
        at: usize,
        len: usize,
        buf: &'a mut Vec<f32>,
        scale_of: impl Fn(usize) -> usize,
    ) -> &'a [f32] {
        match self {
            Store::F32(v) => &v[at..at + len],
            Store::F16(v) => {
                buf.resize(len, 0.0);
                f16_to_f32(&v[at..at + len], buf);
                buf
            }
            Store::Int8(q, sc) => {
                buf.resize(len, 0.0);
                for (i, (d, &x)) in buf.iter_mut().zip(&q[at..at + len]).enumerate() {
                    *d = x as f32 * sc[scale_of(i)];
                }
                buf
            }
        }
    }
}

/// dst = src as f32 (exact), 8 or 16 values per instruction with AVX2 or AVX-512.
fn f16_to_f32(src: &[half::f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    let done = match isa::active() {
        // SAFETY: `active` returns only sets this CPU supports.
        #[cfg(target_arch = "x86_64")]
        KernelSet::Avx512 => unsafe { crate::backend::avx512::f16_to_f32(src, dst) },
        #[cfg(target_arch = "x86_64")]
        KernelSet::Avx2 => unsafe { crate::backend::avx2::f16_to_f32(src, dst) },
        _ => 0,
    };
    for (d, s) in dst[done..].iter_mut().zip(&src[done..]) {
        *d = s.to_f32();
    }
}

/// A mutable (batch row, head) part of a [`Store`]: values, and scales by position.
enum Part<'a> {
    F32(&'a mut [f32]),
    F16(&'a mut [half::f16]),
    Int8(&'a mut [i8], &'a mut [f32]),
}

impl Part<'_> {
    /// Stores the vector `x` of position `pos`, its element i at `at(i)`.
    #[inline]
    fn put(&mut self, pos: usize, x: &[f32], at: impl Fn(usize) -> usize) {
        match self {
            Part::F32(v) => x.iter().enumerate().for_each(|(i, &e)| v[at(i)] = e),
            Part::F16(v) => x.iter().enumerate().for_each(|(i, &e)| v[at(i)] = crate::backend::elem::to_f16(e)),
            Part::Int8(q, sc) => {
                let amax = x.iter().fold(0f32, |m, e| m.max(e.abs()));
                let scale = if amax > 0.0 && amax.is_finite() { amax / 127.0 } else { 1.0 };
                sc[pos] = scale;
                let inv = 1.0 / scale;
                x.iter().enumerate().for_each(|(i, &e)| q[at(i)] = (e * inv).round().clamp(-127.0, 127.0) as i8);
            }
        }
    }
}

/// A store cut into (batch row, head) parts of `chunk` values (`chunk / hs` scales) each.
fn parts(s: &mut Store, chunk: usize, hs: usize) -> Vec<Part<'_>> {
    match s {
        Store::F32(v) => v.chunks_mut(chunk).map(Part::F32).collect(),
        Store::F16(v) => v.chunks_mut(chunk).map(Part::F16).collect(),
        Store::Int8(q, sc) => {
            q.chunks_mut(chunk).zip(sc.chunks_mut(chunk / hs)).map(|(q, s)| Part::Int8(q, s)).collect()
        }
    }
}

/// Keys and values of one layer laid out for the attention kernel: K transposed per head and
/// key block, (B, nh, cap/KB, hs, KB), each block contiguous (no 4 KiB-strided rows fighting
/// over L1 sets), and V per head, (B, nh, cap, hs). The full forward fills one per call; the
/// KV cache keeps one per layer and appends to it.
#[derive(Clone, Debug)]
pub struct KvBlocks {
    pub(crate) b: usize,
    pub(crate) nh: usize,
    pub(crate) hs: usize,
    /// Capacity in positions, a multiple of KB (unused positions are zero).
    pub(crate) cap: usize,
    /// A ring: position p is stored at index p mod cap, so only the last `cap` positions
    /// are kept (local attention's decoding state); else position p at index p.
    pub(crate) ring: bool,
    pub(crate) kt: Store,
    pub(crate) v: Store,
}

impl KvBlocks {
    pub fn new(b: usize, nh: usize, hs: usize, positions: usize) -> Self {
        Self::with_precision(b, nh, hs, positions, KvPrecision::F32)
    }

    pub fn with_precision(b: usize, nh: usize, hs: usize, positions: usize, prec: KvPrecision) -> Self {
        let cap = positions.div_ceil(KB).max(1) * KB;
        let len = b * nh * hs * cap;
        KvBlocks { b, nh, hs, cap, ring: false, kt: Store::new(prec, len, hs), v: Store::new(prec, len, hs) }
    }

    /// A ring that keeps the last `window` positions (at least; rounded up to a block).
    pub fn ring(b: usize, nh: usize, hs: usize, window: usize, prec: KvPrecision) -> Self {
        KvBlocks { ring: true, ..Self::with_precision(b, nh, hs, window, prec) }
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn precision(&self) -> KvPrecision {
        match self.kt {
            Store::F32(_) => KvPrecision::F32,
            Store::F16(_) => KvPrecision::F16,
            Store::Int8(..) => KvPrecision::Int8,
        }
    }

    /// Bytes held (keys and values).
    pub fn bytes(&self) -> usize {
        self.kt.bytes() + self.v.bytes()
    }

    /// Keys of positions k_lo..k_lo+nk of (batch row, head) `bh` as f32, nk a multiple of
    /// KB and k_lo of KB: nk/KB transposed blocks (hs, KB).
    #[inline]
    pub(crate) fn keys<'a>(&'a self, bh: usize, k_lo: usize, nk: usize, buf: &'a mut Vec<f32>) -> &'a [f32] {
        let (hs, cap) = (self.hs, self.cap);
        // value i of the read is key k_lo + (i / (hs KB)) KB + i % KB
        let scale_of = |i: usize| bh * cap + k_lo + i / (hs * KB) * KB + i % KB;
        self.kt.read(bh * hs * cap + k_lo * hs, nk * hs, buf, scale_of)
    }

    /// Values of positions k_lo..k_lo+nk of `bh` as f32, (nk, hs).
    #[inline]
    pub(crate) fn values<'a>(&'a self, bh: usize, k_lo: usize, nk: usize, buf: &'a mut Vec<f32>) -> &'a [f32] {
        let (hs, cap) = (self.hs, self.cap);
        self.v.read((bh * cap + k_lo) * hs, nk * hs, buf, |i| bh * cap + k_lo + i / hs)
    }

    /// Writes positions pos0..pos0+n from (B, n, nh*hs) views of the new keys and values
    /// (a ring keeps the last `cap` of them).
    pub fn write(&mut self, k: SeqView, v: SeqView, pos0: usize, n: usize) {
        assert!(self.ring || pos0 + n <= self.cap, "KvBlocks: position {} beyond capacity {}", pos0 + n, self.cap);
        let (hs, nh, cap, ring) = (self.hs, self.nh, self.cap, self.ring);
        let first = if ring { n.saturating_sub(cap) } else { 0 };
        let kparts = parts(&mut self.kt, hs * cap, hs);
        let vparts = parts(&mut self.v, cap * hs, hs);
        kparts.into_par_iter().zip(vparts).enumerate().for_each(|(bh, (mut kt, mut vv))| {
            let (b, h) = (bh / nh, bh % nh);
            for j in first..n {
                let p = (pos0 + j) % cap;
                let blk = (p / KB) * hs * KB + p % KB;
                kt.put(p, k.row(b, j, h * hs, hs), |x| blk + x * KB);
                vv.put(p, v.row(b, j, h * hs, hs), |x| p * hs + x);
            }
        });
    }
}
