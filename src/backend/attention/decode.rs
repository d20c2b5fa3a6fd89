//! Attention of one new query row per sequence over a KV cache: the decoding step.
//!
//! A decoding step reads every cached key and value once and does two multiply-adds per
//! value read, so it is bound by memory bandwidth, and by the latency of dependent FMA
//! chains when the loops are written for the many-row case. Here each (batch row, head)
//! computes all its scores first (two key blocks at a time: 8 independent accumulators),
//! takes one softmax, then sums P V with four independent accumulator sets; f16 and int8
//! caches are widened in registers (no f32 copy), so they read a half or a quarter of the
//! bytes of f32 ones (int8 scales multiply the scores and the probabilities).
//!
//! The sums run in another order than the block-wise forward ([`super::attention`]): the
//! same results to rounding (relative 1e-7), not the same bits.

use rayon::prelude::*;

use super::kernels::KB;
use super::kv_blocks::{KvBlocks, Store};
use super::mask::Mask;
use super::view::{AttnDims, SeqView};
use crate::backend::elem::Elem;
use crate::backend::isa::{self, KernelSet, multiversion};
use crate::backend::math::{exp_sub_sum, max};

/// out = softmax(q k^T * scale) v for one query row per batch row (d.t == 1): query slot
/// d.tk - 1 over the keys of `kv` its mask shows (its own key included; a ring holds the
/// last `cap` positions).
///
/// # Shapes
/// q: (B, 1, nh*hs) view; out: (B, 1, nh*hs); lse: (B, nh, 1) receives max + ln(sum exp).
pub fn decode_attention(out: &mut [f32], lse: &mut [f32], q: SeqView, kv: &KvBlocks, d: AttnDims) {
    assert!(d.t == 1 && d.tk >= 1 && (kv.ring || d.tk <= kv.cap), "decode_attention: one query row over 1..=cap keys");
    assert!(!kv.ring || d.mask.window().is_some_and(|w| w <= kv.cap), "a ring needs a local causal mask it can hold");
    assert!(kv.b == d.b && kv.nh == d.nh && kv.hs == d.hs);
    assert!(out.len() >= d.b * d.nh * d.hs && lse.len() >= d.b * d.nh);
    match (&kv.kt, &kv.v) {
        (Store::F32(k), Store::F32(v)) => run(out, lse, q, (k, v), None, keys_of(kv, d), d),
        (Store::F16(k), Store::F16(v)) => run(out, lse, q, (k, v), None, keys_of(kv, d), d),
        (Store::Int8(k, ks), Store::Int8(v, vs)) => run(out, lse, q, (k, v), Some((ks, vs)), keys_of(kv, d), d),
        _ => unreachable!("keys and values of a KvBlocks share one precision"),
    }
}

/// Which stored keys one decoding step reads: indices k0..k1 of each (batch row, head) part
/// (k0 a multiple of KB), and for a full ring the position each index holds.
#[derive(Clone, Copy)]
struct Keys {
    cap: usize,
    k0: usize,
    k1: usize,
    /// The ring wrapped (index i holds the latest position = i mod cap).
    wrapped: bool,
}

fn keys_of(kv: &KvBlocks, d: AttnDims) -> Keys {
    let p = d.tk - 1;
    if kv.ring && d.tk > kv.cap {
        return Keys { cap: kv.cap, k0: 0, k1: kv.cap, wrapped: true };
    }
    Keys { cap: kv.cap, k0: d.mask.key_span(p, d.tk).0 / KB * KB, k1: d.tk, wrapped: false }
}

/// Sets the scores s (indices keys.k0..keys.k1) of keys query p does not see to -inf.
fn mask_scores(s: &mut [f32], mask: Mask, p: usize, keys: Keys, seen: &mut Vec<bool>) {
    if !matches!(mask, Mask::Local2d { .. }) {
        return; // dense: every stored key is visible
    }
    seen.clear();
    seen.resize(s.len(), false);
    let (lo, hi) = if keys.wrapped { (p + 1 - keys.cap, p + 1) } else { (keys.k0, keys.k1) };
    mask.runs(p, lo, hi, |a, b| {
        for pos in a..b {
            let i = if keys.wrapped { pos % keys.cap } else { pos } - keys.k0;
            seen[i] = true;
        }
    });
    s.iter_mut().zip(seen.iter()).for_each(|(x, &v)| {
        if !v {
            *x = f32::NEG_INFINITY
        }
    });
}

/// The step over keys `kt` and values `v` of one storage type; 8-bit stores come with the
/// scales of every key and value vector, (B*nh, cap) each.
fn run<E: Elem>(
    out: &mut [f32],
    lse: &mut [f32],
    q: SeqView,
    (kt, v): (&[E], &[E]),
    scales: Option<(&[f32], &[f32])>,
    keys: Keys,
    d: AttnDims,
) {
    let (hs, nh, cap) = (d.hs, d.nh, keys.cap);
    let (k0, k1) = (keys.k0, keys.k1);
    let nblk = (k1 - k0).div_ceil(KB);
    // out (B, 1, nh*hs) in chunks of hs is (B*nh) head rows in (b, h) order, as is lse.
    out[..d.b * nh * hs].par_chunks_mut(hs).zip(lse[..d.b * nh].par_iter_mut()).enumerate().for_each_init(
        || (vec![0f32; hs], vec![0f32; cap], Vec::new()),
        |(qs, s, seen), (bh, (o, lse))| {
            let (b, h) = (bh / nh, bh % nh);
            qs.iter_mut().zip(q.row(b, 0, h * hs, hs)).for_each(|(a, &x)| *a = x * d.scale);
            // this (b, h)'s keys: (cap/KB, hs, KB) from block k0/KB; values: (cap, hs) from k0
            let base = bh * hs * cap;
            let kt = &kt[base + k0 * hs..base + k0 * hs + nblk * hs * KB];
            let v = &v[base + k0 * hs..base + k1 * hs];
            let n = k1 - k0;
            scores(&mut s[..nblk * KB], qs, kt, hs);
            let scales = scales.map(|(ks, vs)| (&ks[bh * cap + k0..bh * cap + k1], &vs[bh * cap + k0..bh * cap + k1]));
            if let Some((ks, _)) = scales {
                s[..n].iter_mut().zip(ks).for_each(|(x, &sc)| *x *= sc);
            }
            mask_scores(&mut s[..n], d.mask, d.tk - 1, keys, seen);
            let (m, l) = softmax_unnormalised(&mut s[..n]);
            if let Some((_, vs)) = scales {
                // p_j v_j = (p_j scale_j) q_j
                s[..n].iter_mut().zip(vs).for_each(|(x, &sc)| *x *= sc);
            }
            weighted_sum(o, &s[..n], v);
            let inv = 1.0 / l;
            o.iter_mut().for_each(|x| *x *= inv);
            *lse = m + l.ln();
        },
    );
}

/// s (nblk*KB) = q (hs) . K for every key of `nblk` transposed key blocks (hs, KB).
#[inline(never)]
fn scores<E: Elem>(s: &mut [f32], q: &[f32], kt: &[E], hs: usize) {
    scores_on(isa::active(), s, q, kt, hs)
}

/// [`scores`] with the kernels of `set` (which this CPU must support); every set sums each
/// score over hs in order from zero, so all give the same bits.
pub(crate) fn scores_on<E: Elem>(set: KernelSet, s: &mut [f32], q: &[f32], kt: &[E], hs: usize) {
    let nblk = s.len() / KB;
    assert!(q.len() == hs && kt.len() >= nblk * hs * KB && set.supported());
    match set {
        // SAFETY: the CPU has the set's features (asserted); the kernels check the bounds.
        #[cfg(target_arch = "x86_64")]
        KernelSet::Avx512 => unsafe { crate::backend::avx512::decode_scores::<E, KB>(s, q, kt) },
        #[cfg(target_arch = "x86_64")]
        KernelSet::Avx2 => unsafe { crate::backend::avx2::decode_scores::<E, KB>(s, q, kt) },
        _ => {
            for (blk, sb) in s.chunks_exact_mut(KB).enumerate() {
                let mut acc = [0f32; KB];
                for (dd, &qd) in q.iter().enumerate() {
                    let row = &kt[(blk * hs + dd) * KB..(blk * hs + dd + 1) * KB];
                    for j in 0..KB {
                        acc[j] = qd.mul_add(row[j].f32(), acc[j]);
                    }
                }
                sb.copy_from_slice(&acc);
            }
        }
    }
}

multiversion! {
    /// s = exp(s - max(s)) in place; returns (max, sum of the results).
    fn softmax_unnormalised(s: &mut [f32]) -> (f32, f32) {
        let m = max(s);
        (m, exp_sub_sum(s, m))
    }
}

/// o (hs) = sum_j p[j] v[j] over the rows of v (n, hs), n = p.len().
#[inline(never)]
fn weighted_sum<E: Elem>(o: &mut [f32], p: &[f32], v: &[E]) {
    weighted_sum_on(isa::active(), o, p, v)
}

/// [`weighted_sum`] with the kernels of `set` (which this CPU must support): rows j = 0,
/// 1, 2, 3 (mod 4) feed four accumulator sets, summed (s0 + s1) + (s2 + s3), in every set.
pub(crate) fn weighted_sum_on<E: Elem>(set: KernelSet, o: &mut [f32], p: &[f32], v: &[E]) {
    let hs = o.len();
    assert!(v.len() >= p.len() * hs && set.supported());
    match set {
        // SAFETY: the CPU has the set's features (asserted); the kernels check the bounds.
        #[cfg(target_arch = "x86_64")]
        KernelSet::Avx512 if hs.is_multiple_of(16) => unsafe { crate::backend::avx512::weighted_sum(o, p, v) },
        #[cfg(target_arch = "x86_64")]
        KernelSet::Avx512 | KernelSet::Avx2 if hs.is_multiple_of(8) => unsafe {
            crate::backend::avx2::weighted_sum(o, p, v)
        },
        _ => {
            let mut acc = vec![0f32; 4 * hs];
            for (j, &pj) in p.iter().enumerate() {
                let a = &mut acc[(j % 4) * hs..(j % 4 + 1) * hs];
                for (x, e) in a.iter_mut().zip(&v[j * hs..(j + 1) * hs]) {
                    *x = pj.mul_add(e.f32(), *x);
                }
            }
            for (x, ox) in o.iter_mut().enumerate() {
                *ox = (acc[x] + acc[hs + x]) + (acc[2 * hs + x] + acc[3 * hs + x]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    }

    /// Every kernel set this CPU has gives the portable loops' bits, for each stored element
    /// type, head size, odd and even block counts and ragged row counts.
    fn sets_agree<E: Elem>(widen: impl Fn(f32) -> E) {
        let val = |i: usize, m: usize| ((i * 7919 % m) as f32 - (m / 2) as f32) / m as f32;
        for hs in [8, 16, 32, 48, 64] {
            for nblk in [1, 2, 3] {
                let kt: Vec<E> = (0..nblk * hs * KB).map(|i| widen(val(i, 1013) * 40.0)).collect();
                let q: Vec<f32> = (0..hs).map(|i| val(i, 101)).collect();
                let mut want = vec![0f32; nblk * KB];
                scores_on(KernelSet::Portable, &mut want, &q, &kt, hs);
                let n = nblk * KB - 7;
                let v: Vec<E> = (0..n * hs).map(|i| widen(val(i, 977) * 40.0)).collect();
                let mut o_want = vec![0f32; hs];
                weighted_sum_on(KernelSet::Portable, &mut o_want, &want[..n], &v);
                for set in KernelSet::available() {
                    let mut got = vec![0f32; nblk * KB];
                    scores_on(set, &mut got, &q, &kt, hs);
                    assert!(same_bits(&got, &want), "{set} decode scores hs={hs} nblk={nblk}");
                    let mut o = vec![0f32; hs];
                    weighted_sum_on(set, &mut o, &want[..n], &v);
                    assert!(same_bits(&o, &o_want), "{set} weighted sum hs={hs} n={n}");
                }
            }
        }
    }

    #[test]
    fn decode_kernels_agree_across_kernel_sets() {
        sets_agree::<f32>(|x| x);
        sets_agree::<half::f16>(half::f16::from_f32);
        sets_agree::<i8>(|x| x.round() as i8);
    }
}
