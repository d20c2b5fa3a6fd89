//! Register-blocked micro-kernels for the attention blocks, written as plain fixed-size
//! loops that LLVM turns into SIMD code with the accumulators held in registers.
//! Small (64 x 64 x hs) products are where a general gemm loses most to packing and
//! dispatch; these need no packing beyond a transposed copy of the key block.

use crate::backend::isa::{self, KernelSet, multiversion};

/// Keys per block in the micro-kernel path.
pub const KB: usize = 64;
/// Query rows per register block of the score kernel (ROWS x KB accumulators).
const ROWS: usize = 4;

/// S (nq, KB) = Q (nq, hs) @ KT (hs, KB). Q rows are contiguous with stride hs; row d of
/// KT starts at `kt[d * kt_stride]`; row r of S starts at `s[r * s_stride]`.
#[inline]
pub fn scores(s: &mut [f32], s_stride: usize, q: &[f32], kt: &[f32], kt_stride: usize, nq: usize, hs: usize) {
    scores_on(isa::active(), s, s_stride, q, kt, kt_stride, nq, hs)
}

/// [`scores`] with the kernels of `set` (which this CPU must support).
#[allow(clippy::too_many_arguments)]
pub fn scores_on(
    set: KernelSet,
    s: &mut [f32],
    s_stride: usize,
    q: &[f32],
    kt: &[f32],
    kt_stride: usize,
    nq: usize,
    hs: usize,
) {
    assert!(set.supported(), "the {set} kernels need CPU features this machine lacks");
    match set {
        // SAFETY: the CPU has the set's features (asserted); the kernels check the bounds.
        #[cfg(target_arch = "x86_64")]
        KernelSet::Avx512 => unsafe { crate::backend::avx512::scores::<KB>(s, s_stride, q, kt, kt_stride, nq, hs) },
        #[cfg(target_arch = "x86_64")]
        KernelSet::Avx2 => unsafe { crate::backend::avx2::scores::<KB>(s, s_stride, q, kt, kt_stride, nq, hs) },
        _ => scores_plain(s, s_stride, q, kt, kt_stride, nq, hs),
    }
}

/// S (nq, w) = Q (nq, hs) @ KT[:, ..w] for w = 16, 32, 48 or 64 columns of a key block (the
/// columns a local window shows): the same values as the full-width [`scores`] there.
#[allow(clippy::too_many_arguments)]
pub fn scores_cols(
    s: &mut [f32],
    s_stride: usize,
    q: &[f32],
    kt: &[f32],
    kt_stride: usize,
    nq: usize,
    hs: usize,
    w: usize,
) {
    let set = isa::active();
    match (set, w) {
        (_, KB) => scores_on(set, s, s_stride, q, kt, kt_stride, nq, hs),
        // SAFETY: AVX2 is part of both vector sets (`active` only returns supported ones).
        #[cfg(target_arch = "x86_64")]
        (KernelSet::Avx512 | KernelSet::Avx2, 16 | 32 | 48) => unsafe {
            match w {
                16 => crate::backend::avx2::scores::<16>(s, s_stride, q, kt, kt_stride, nq, hs),
                32 => crate::backend::avx2::scores::<32>(s, s_stride, q, kt, kt_stride, nq, hs),
                _ => crate::backend::avx2::scores::<48>(s, s_stride, q, kt, kt_stride, nq, hs),
            }
        },
        _ => {
            for r in 0..nq {
                let mut acc = [0f32; KB];
                for d in 0..hs {
                    let qv = q[r * hs + d];
                    let k = &kt[d * kt_stride..d * kt_stride + w];
                    for j in 0..w {
                        acc[j] = qv.mul_add(k[j], acc[j]);
                    }
                }
                s[r * s_stride..r * s_stride + w].copy_from_slice(&acc[..w]);
            }
        }
    }
}

/// [`scores`] as plain loops (other targets, and the reference of the tests).
pub fn scores_plain(s: &mut [f32], s_stride: usize, q: &[f32], kt: &[f32], kt_stride: usize, nq: usize, hs: usize) {
    let mut r = 0;
    while r + ROWS <= nq {
        let mut acc = [[0f32; KB]; ROWS];
        for d in 0..hs {
            let k = &kt[d * kt_stride..d * kt_stride + KB];
            for i in 0..ROWS {
                let qv = q[(r + i) * hs + d];
                for j in 0..KB {
                    acc[i][j] = qv.mul_add(k[j], acc[i][j]);
                }
            }
        }
        for i in 0..ROWS {
            s[(r + i) * s_stride..(r + i) * s_stride + KB].copy_from_slice(&acc[i]);
        }
        r += ROWS;
    }
    while r < nq {
        let mut acc = [0f32; KB];
        for d in 0..hs {
            let qv = q[r * hs + d];
            let k = &kt[d * kt_stride..d * kt_stride + KB];
            for j in 0..KB {
                acc[j] = qv.mul_add(k[j], acc[j]);
            }
        }
        s[r * s_stride..r * s_stride + KB].copy_from_slice(&acc);
        r += 1;
    }
}

/// O (nq, HS) += P (nq, nk) @ V (nk, HS); row r of P starts at `p[r * ps]`.
#[inline]
pub fn accumulate_pv<const HS: usize>(o: &mut [f32], p: &[f32], ps: usize, v: &[f32], nq: usize, nk: usize) {
    accumulate_pv_on::<HS>(isa::active(), o, p, ps, v, nq, nk)
}

/// [`accumulate_pv`] with the kernels of `set` (which this CPU must support).
pub fn accumulate_pv_on<const HS: usize>(
    set: KernelSet,
    o: &mut [f32],
    p: &[f32],
    ps: usize,
    v: &[f32],
    nq: usize,
    nk: usize,
) {
    assert!(set.supported(), "the {set} kernels need CPU features this machine lacks");
    match set {
        // SAFETY: the CPU has the set's features (asserted); the kernels check the bounds.
        #[cfg(target_arch = "x86_64")]
        KernelSet::Avx512 if HS == 32 => unsafe { crate::backend::avx512::accumulate_pv_32(o, p, ps, v, nq, nk) },
        #[cfg(target_arch = "x86_64")]
        KernelSet::Avx512 | KernelSet::Avx2 if HS.is_multiple_of(8) => unsafe {
            crate::backend::avx2::accumulate_pv::<HS>(o, p, ps, v, nq, nk)
        },
        // Rows per register block: 8 rows of up to 32 lanes keep 16 accumulators in
        // registers, so each loaded row of V feeds 16 FMAs; wider heads use 4 rows.
        _ if HS <= 32 => accumulate_pv_rows::<HS, 8>(o, p, ps, v, nq, nk),
        _ => accumulate_pv_rows::<HS, 4>(o, p, ps, v, nq, nk),
    }
}

/// [`accumulate_pv`] with R rows per register block (each output element accumulates
/// over j in the same order whatever R is: the results do not depend on R).
#[inline(always)]
pub fn accumulate_pv_rows<const HS: usize, const R: usize>(
    o: &mut [f32],
    p: &[f32],
    ps: usize,
    v: &[f32],
    nq: usize,
    nk: usize,
) {
    let mut r = 0;
    while r + R <= nq {
        let mut acc = [[0f32; HS]; R];
        for i in 0..R {
            acc[i].copy_from_slice(&o[(r + i) * HS..(r + i + 1) * HS]);
        }
        for j in 0..nk {
            let vr = &v[j * HS..(j + 1) * HS];
            for i in 0..R {
                let pv = p[(r + i) * ps + j];
                for x in 0..HS {
                    acc[i][x] = pv.mul_add(vr[x], acc[i][x]);
                }
            }
        }
        for i in 0..R {
            o[(r + i) * HS..(r + i + 1) * HS].copy_from_slice(&acc[i]);
        }
        r += R;
    }
    while r < nq {
        let mut acc = [0f32; HS];
        acc.copy_from_slice(&o[r * HS..(r + 1) * HS]);
        for j in 0..nk {
            let pv = p[r * ps + j];
            for x in 0..HS {
                acc[x] = pv.mul_add(v[j * HS + x], acc[x]);
            }
        }
        o[r * HS..(r + 1) * HS].copy_from_slice(&acc);
        r += 1;
    }
}

multiversion! {
/// The same for any head size (a slower loop; used when hs has no specialisation).
pub fn accumulate_pv_dyn(o: &mut [f32], p: &[f32], ps: usize, v: &[f32], nq: usize, nk: usize, hs: usize) {
    for r in 0..nq {
        let orow = &mut o[r * hs..(r + 1) * hs];
        for j in 0..nk {
            let pv = p[r * ps + j];
            for (a, &b) in orow.iter_mut().zip(&v[j * hs..(j + 1) * hs]) {
                *a = pv.mul_add(b, *a);
            }
        }
    }
}
}

/// Dispatches on the head size.
pub fn accumulate_pv_any(o: &mut [f32], p: &[f32], ps: usize, v: &[f32], nq: usize, nk: usize, hs: usize) {
    match hs {
        8 => accumulate_pv::<8>(o, p, ps, v, nq, nk),
        16 => accumulate_pv::<16>(o, p, ps, v, nq, nk),
        32 => accumulate_pv::<32>(o, p, ps, v, nq, nk),
        64 => accumulate_pv::<64>(o, p, ps, v, nq, nk),
        _ => accumulate_pv_dyn(o, p, ps, v, nq, nk, hs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pv_case<const HS: usize>(set: KernelSet, s: &[f32], nq: usize) {
        let val = |i: usize, m: usize| ((i * 7919 % m) as f32 - (m / 2) as f32) / m as f32;
        let v: Vec<f32> = (0..2 * KB * HS).map(|i| val(i, 977)).collect();
        let mut o: Vec<f32> = (0..nq * HS).map(|i| val(i, 37)).collect();
        let mut o_ref = o.clone();
        accumulate_pv_on::<HS>(set, &mut o, s, KB, &v, nq, KB - 5);
        accumulate_pv_rows::<HS, 1>(&mut o_ref, s, KB, &v, nq, KB - 5);
        assert!(o.iter().zip(&o_ref).all(|(a, b)| a.to_bits() == b.to_bits()), "{set} pv hs={HS} nq={nq}");
    }

    /// Every kernel set this CPU has gives the plain loops' bits, for full register blocks,
    /// ragged row counts and the few-row paths decoding uses, at every specialised head size.
    #[test]
    fn kernels_match_the_plain_loops_bit_for_bit() {
        let val = |i: usize, m: usize| ((i * 7919 % m) as f32 - (m / 2) as f32) / m as f32;
        for set in KernelSet::available() {
            for hs in [8, 16, 32, 64] {
                let kt: Vec<f32> = (0..2 * hs * KB).map(|i| val(i, 1013)).collect();
                for nq in [1, 3, 5, 6, 8, 13, 64] {
                    let q: Vec<f32> = (0..nq * hs).map(|i| val(i, 101)).collect();
                    let (mut s, mut s_ref) = (vec![0f32; nq * KB], vec![0f32; nq * KB]);
                    scores_on(set, &mut s, KB, &q, &kt, KB, nq, hs);
                    scores_plain(&mut s_ref, KB, &q, &kt, KB, nq, hs);
                    assert!(s.iter().zip(&s_ref).all(|(a, b)| a.to_bits() == b.to_bits()), "{set} scores nq={nq}");
                    match hs {
                        8 => pv_case::<8>(set, &s, nq),
                        16 => pv_case::<16>(set, &s, nq),
                        32 => pv_case::<32>(set, &s, nq),
                        _ => pv_case::<64>(set, &s, nq),
                    }
                }
            }
        }
    }
}
