//! Scalar building blocks that vectorise well: a fast `exp` (Cephes' single-precision
//! polynomial, about 1 ulp on the range that matters) used by softmax and quick_gelu.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 * 2^23: adding it rounds a float to the nearest integer (|x| < 2^22).
const ROUND_MAGIC: f32 = 12_582_912.0;

/// Below this, exp returns exactly 0: e^-60 ~ 9e-27 is invisible next to any sum that
/// contains a 1 (softmax), and tinier values would turn into denormal floats in later
/// products, which cost ~100 cycles each on x86 and slow training down as attention sharpens.
const FLUSH: f32 = -60.0;

/// exp(x) for f32, branch-free so that loops over slices auto-vectorise.
/// Inputs above 88 are clamped; below -60 the result is 0.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let tiny = x < FLUSH;
    // max then min (not clamp): NaN becomes -87 here as in the SIMD versions' max/min
    #[allow(clippy::manual_clamp)]
    let x = x.max(-87.0).min(88.0);
    let t = x.mul_add(LOG2E, ROUND_MAGIC);
    let n = t - ROUND_MAGIC; // round(x / ln 2)
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x)); // |r| <= ln(2)/2
    let mut p = 1.987_569_1e-4_f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 5e-1);
    let y = (p * r).mul_add(r, r + 1.0);
    let ni = t.to_bits() as i32 - 0x4B40_0000; // the integer n
    let r = y * f32::from_bits(((ni + 127) << 23) as u32);
    if tiny { 0.0 } else { r }
}

/// Sets flush-to-zero and denormals-are-zero for the calling thread (x86-64): denormal
/// floats are ~100x slower to compute with and carry no useful precision here.
pub fn flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: only the FTZ (bit 15) and DAZ (bit 6) flags of MXCSR change.
    #[allow(deprecated)]
    unsafe {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        _mm_setcsr(_mm_getcsr() | 0x8040);
    }
}

/// x[i] = exp(x[i] - sub) for all i; returns the sum of the results.
#[inline(always)]
pub fn exp_sub_sum(x: &mut [f32], sub: f32) -> f32 {
    for v in x.iter_mut() {
        *v = exp(*v - sub);
    }
    sum(x)
}

/// Sum of a slice, in 16 interleaved partial sums (vectorises).
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for j in 0..16 {
            acc[j] += c[j];
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// Maximum of a non-empty slice.
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for j in 0..8 {
            acc[j] = acc[j].max(c[j]);
        }
    }
    let mut m = acc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for &v in chunks.remainder() {
        m = m.max(v);
    }
    m
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -59.0f32;
        while x < 80.0 {
            let got = super::exp(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 3e-7, "max relative error {worst}");
        assert_eq!(super::exp(0.0), 1.0);
        assert_eq!(super::exp(-61.0), 0.0);
        assert_eq!(super::exp(-1e30), 0.0);
        assert!(super::exp(-59.0) > 0.0);
    }
}
