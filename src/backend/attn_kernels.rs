//! Register-blocked micro-kernels for the attention blocks, written as plain fixed-size
//! loops that LLVM turns into SIMD code with the accumulators held in registers.
//! Small (64 x 64 x hs) products are where a general gemm loses most to packing and
//! dispatch; these need no packing beyond a transposed copy of the key block.

/// Keys per block in the micro-kernel path.
pub const KB: usize = 64;
/// Query rows per register block of the score kernel (ROWS x KB accumulators).
const ROWS: usize = 4;

/// S (nq, KB) = Q (nq, hs) @ KT (hs, KB). Q rows are contiguous with stride hs; row d of
/// KT starts at `kt[d * kt_stride]`; row r of S starts at `s[r * s_stride]`.
#[inline(never)]
pub fn scores(s: &mut [f32], s_stride: usize, q: &[f32], kt: &[f32], kt_stride: usize, nq: usize, hs: usize) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    {
        assert!(nq == 0 || (s.len() >= (nq - 1) * s_stride + KB && q.len() >= nq * hs));
        assert!(hs == 0 || kt.len() >= (hs - 1) * kt_stride + KB);
        // SAFETY: the asserts above bound every row the kernel touches.
        unsafe { scores_avx512(s, s_stride, q, kt, kt_stride, nq, hs) };
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx512f")))]
    scores_plain(s, s_stride, q, kt, kt_stride, nq, hs);
}

/// [`scores`] with AVX-512 intrinsics: 4 rows x 4 vectors of accumulators; each KT row is
/// loaded into registers once and feeds 16 FMAs. Same operation order as the plain loop.
#[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
unsafe fn scores_avx512(s: &mut [f32], s_stride: usize, q: &[f32], kt: &[f32], kt_stride: usize, nq: usize, hs: usize) {
    use std::arch::x86_64::*;
    const V: usize = KB / 16;
    let (sp, qp, kp) = (s.as_mut_ptr(), q.as_ptr(), kt.as_ptr());
    let mut r = 0;
    // SAFETY: rows < nq of s and q, rows < hs of kt (checked by the caller).
    unsafe {
        while r + ROWS <= nq {
            let mut acc = [[_mm512_setzero_ps(); V]; ROWS];
            for d in 0..hs {
                let mut k = [_mm512_setzero_ps(); V];
                for (x, kv) in k.iter_mut().enumerate() {
                    *kv = _mm512_loadu_ps(kp.add(d * kt_stride + 16 * x));
                }
                for (i, a) in acc.iter_mut().enumerate() {
                    let qv = _mm512_set1_ps(*qp.add((r + i) * hs + d));
                    for x in 0..V {
                        a[x] = _mm512_fmadd_ps(qv, k[x], a[x]);
                    }
                }
            }
            for (i, a) in acc.iter().enumerate() {
                for (x, av) in a.iter().enumerate() {
                    _mm512_storeu_ps(sp.add((r + i) * s_stride + 16 * x), *av);
                }
            }
            r += ROWS;
        }
        while r < nq {
            // Few rows (decoding): memory-bound, so the same row of the next key block (the
            // layout of `KvBlocks`: blocks of hs rows follow each other) is prefetched.
            let next = kp.wrapping_add(hs * kt_stride) as *const i8;
            let mut acc = [_mm512_setzero_ps(); V];
            for d in 0..hs {
                for x in 0..V {
                    _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(4 * d * kt_stride + 64 * x));
                }
                let qv = _mm512_set1_ps(*qp.add(r * hs + d));
                for (x, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(qv, _mm512_loadu_ps(kp.add(d * kt_stride + 16 * x)), *a);
                }
            }
            for (x, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(sp.add(r * s_stride + 16 * x), *a);
            }
            r += 1;
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
#[inline(never)]
pub fn accumulate_pv<const HS: usize>(o: &mut [f32], p: &[f32], ps: usize, v: &[f32], nq: usize, nk: usize) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    if HS == 32 {
        // SAFETY: the slices hold the (nq, HS), (nq, ps) and (nk, HS) blocks (checked).
        unsafe { return pv_avx512_32(o, p, ps, v, nq, nk) }
    }
    // Rows per register block: 8 rows of up to 32 lanes keep 16 accumulators in registers,
    // so each loaded row of V feeds 16 FMAs; wider heads use 4 rows.
    if HS <= 32 {
        accumulate_pv_rows::<HS, 8>(o, p, ps, v, nq, nk)
    } else {
        accumulate_pv_rows::<HS, 4>(o, p, ps, v, nq, nk)
    }
}

/// [`accumulate_pv`] for HS = 32 with AVX-512 intrinsics: 8 rows x 2 vectors of
/// accumulators, each V row loaded into registers once per key and used by 16 FMAs (the
/// plain loop lets LLVM fold a V load into every FMA, which makes it load-bound). Same
/// per-element operation order as the plain loop: bit-identical results.
#[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
#[inline(never)]
unsafe fn pv_avx512_32(o: &mut [f32], p: &[f32], ps: usize, v: &[f32], nq: usize, nk: usize) {
    use std::arch::x86_64::*;
    const R: usize = 8;
    assert!(o.len() >= nq * 32 && v.len() >= nk * 32 && (nq == 0 || nk == 0 || p.len() >= (nq - 1) * ps + nk));
    let (op, pp, vp) = (o.as_mut_ptr(), p.as_ptr(), v.as_ptr());
    let mut r = 0;
    // SAFETY (all pointer offsets): rows < nq of o and p, rows < nk of v, per the assert.
    unsafe {
        while r + R <= nq {
            let mut acc = [[_mm512_setzero_ps(); 2]; R];
            for (i, a) in acc.iter_mut().enumerate() {
                a[0] = _mm512_loadu_ps(op.add((r + i) * 32));
                a[1] = _mm512_loadu_ps(op.add((r + i) * 32 + 16));
            }
            for j in 0..nk {
                let v0 = _mm512_loadu_ps(vp.add(j * 32));
                let v1 = _mm512_loadu_ps(vp.add(j * 32 + 16));
                for (i, a) in acc.iter_mut().enumerate() {
                    let pv = _mm512_set1_ps(*pp.add((r + i) * ps + j));
                    a[0] = _mm512_fmadd_ps(pv, v0, a[0]);
                    a[1] = _mm512_fmadd_ps(pv, v1, a[1]);
                }
            }
            for (i, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(op.add((r + i) * 32), a[0]);
                _mm512_storeu_ps(op.add((r + i) * 32 + 16), a[1]);
            }
            r += R;
        }
        while r < nq {
            // Few rows (decoding): memory-bound; V rows 64 keys ahead are prefetched.
            let mut a0 = _mm512_loadu_ps(op.add(r * 32));
            let mut a1 = _mm512_loadu_ps(op.add(r * 32 + 16));
            for j in 0..nk {
                let ahead = vp.wrapping_add((j + 64) * 32) as *const i8;
                _mm_prefetch::<_MM_HINT_T0>(ahead);
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
                let pv = _mm512_set1_ps(*pp.add(r * ps + j));
                a0 = _mm512_fmadd_ps(pv, _mm512_loadu_ps(vp.add(j * 32)), a0);
                a1 = _mm512_fmadd_ps(pv, _mm512_loadu_ps(vp.add(j * 32 + 16)), a1);
            }
            _mm512_storeu_ps(op.add(r * 32), a0);
            _mm512_storeu_ps(op.add(r * 32 + 16), a1);
            r += 1;
        }
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

    /// The dispatched kernels (AVX-512 where built for it) give the plain loops' bits, for
    /// full register blocks and for the few-row paths decoding uses.
    #[test]
    fn kernels_match_the_plain_loops_bit_for_bit() {
        let hs = 32;
        let val = |i: usize, m: usize| ((i * 7919 % m) as f32 - (m / 2) as f32) / m as f32;
        let kt: Vec<f32> = (0..2 * hs * KB).map(|i| val(i, 1013)).collect();
        let v: Vec<f32> = (0..2 * KB * hs).map(|i| val(i, 977)).collect();
        for nq in [1, 3, 8, 13] {
            let q: Vec<f32> = (0..nq * hs).map(|i| val(i, 101)).collect();
            let (mut s, mut s_ref) = (vec![0f32; nq * KB], vec![0f32; nq * KB]);
            scores(&mut s, KB, &q, &kt, KB, nq, hs);
            scores_plain(&mut s_ref, KB, &q, &kt, KB, nq, hs);
            assert!(s.iter().zip(&s_ref).all(|(a, b)| a.to_bits() == b.to_bits()), "scores nq={nq}");
            let mut o: Vec<f32> = (0..nq * hs).map(|i| val(i, 37)).collect();
            let mut o_ref = o.clone();
            accumulate_pv::<32>(&mut o, &s, KB, &v, nq, KB - 5);
            accumulate_pv_rows::<32, 1>(&mut o_ref, &s_ref, KB, &v, nq, KB - 5);
            assert!(o.iter().zip(&o_ref).all(|(a, b)| a.to_bits() == b.to_bits()), "pv nq={nq}");
        }
    }
}
