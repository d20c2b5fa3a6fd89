//! The keys and values one attention layer reads, laid out for its kernels, in f32 or f16:
//! the full forward fills one per call, the KV cache keeps one per layer and appends to it.

use rayon::prelude::*;

use super::attention::SeqView;
use super::attn_kernels::KB;

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
pub(crate) enum Store {
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
    pub(crate) fn read<'a>(&'a self, at: usize, len: usize, buf: &'a mut Vec<f32>) -> &'a [f32] {
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
            Part::F16(v) => v[i] = super::elem::to_f16(x),
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
    pub(crate) b: usize,
    pub(crate) nh: usize,
    pub(crate) hs: usize,
    /// Capacity in positions, a multiple of KB (unused positions are zero).
    pub(crate) cap: usize,
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
