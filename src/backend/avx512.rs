//! AVX-512 versions of the register-blocked micro-kernels (x86-64-v4: Intel Skylake-SP and
//! later server parts, Ice Lake and later, AMD Zen 4 and later).
//!
//! 32 vector registers of 16 lanes. Each kernel computes every output element with the same
//! FMAs in the same order as its plain loop: results are bit-identical to the portable set.
//!
//! # Safety
//! Every function here needs AVX-512 F/VL/BW/DQ with AVX2, FMA and F16C
//! ([`super::isa::KernelSet::Avx512`]); slice bounds are asserted on entry.
#![cfg(target_arch = "x86_64")]
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)] // accumulator sets indexed in step

use std::arch::x86_64::*;

use super::elem::Elem;

/// Query rows per register block of the score kernel (ROWS x W/16 accumulators).
const ROWS: usize = 4;

/// S (nq, W) = Q (nq, hs) @ KT (hs, W), W = 64: 4 rows x 4 vectors of accumulators; each KT
/// row is loaded into registers once and feeds 16 FMAs.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
pub unsafe fn scores<const W: usize>(
    s: &mut [f32],
    s_stride: usize,
    q: &[f32],
    kt: &[f32],
    kt_stride: usize,
    nq: usize,
    hs: usize,
) {
    assert!(W == 64);
    assert!(nq == 0 || (s.len() >= (nq - 1) * s_stride + W && q.len() >= nq * hs));
    assert!(hs == 0 || kt.len() >= (hs - 1) * kt_stride + W);
    const V: usize = 4;
    let (sp, qp, kp) = (s.as_mut_ptr(), q.as_ptr(), kt.as_ptr());
    let mut r = 0;
    // SAFETY: rows < nq of s and q, rows < hs of kt (asserted).
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
            // Few rows: memory-bound, so the same row of the next key block (the layout of
            // `KvBlocks`: blocks of hs rows follow each other) is prefetched.
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

/// O (nq, 32) += P (nq, nk) @ V (nk, 32): 8 rows x 2 vectors of accumulators, each V row
/// loaded into registers once per key and used by 16 FMAs (the plain loop lets LLVM fold a
/// V load into every FMA, which makes it load-bound).
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
pub unsafe fn accumulate_pv_32(o: &mut [f32], p: &[f32], ps: usize, v: &[f32], nq: usize, nk: usize) {
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
            // Few rows: memory-bound; V rows 64 keys ahead are prefetched.
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

/// s (nblk * W) = q (hs) . K for `nblk` transposed key blocks (hs, W), W = 64, of any
/// element type: two blocks at a time (2 x 4 independent FMA chains), then a last odd one.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
pub unsafe fn decode_scores<E: Elem, const W: usize>(s: &mut [f32], q: &[f32], kt: &[E]) {
    let hs = q.len();
    let nblk = s.len() / W;
    assert!(W == 64 && kt.len() >= nblk * hs * W);
    // SAFETY: block i occupies kt[i*hs*W..(i+1)*hs*W] and s[i*W..(i+1)*W] (asserted).
    unsafe {
        let pairs = nblk / 2;
        for blk in (0..2 * pairs).step_by(2) {
            score_blocks::<E, 2>(s.as_mut_ptr().add(blk * W), q, kt.as_ptr().add(blk * hs * W), hs);
        }
        if nblk % 2 == 1 {
            let blk = nblk - 1;
            score_blocks::<E, 1>(s.as_mut_ptr().add(blk * W), q, kt.as_ptr().add(blk * hs * W), hs);
        }
    }
}

/// Scores of N consecutive 64-key blocks: N x 4 accumulators over the hs rows.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
#[inline]
unsafe fn score_blocks<E: Elem, const N: usize>(sp: *mut f32, q: &[f32], kp: *const E, hs: usize) {
    const V: usize = 4;
    // SAFETY: offsets stay within the N blocks and N*64 scores (the caller's contract).
    unsafe {
        let mut a = [[_mm512_setzero_ps(); V]; N];
        for (dd, &qd) in q.iter().enumerate() {
            let qv = _mm512_set1_ps(qd);
            for i in 0..N {
                for x in 0..V {
                    a[i][x] = _mm512_fmadd_ps(qv, E::load16(kp.add((i * hs + dd) * 64 + 16 * x)), a[i][x]);
                }
            }
        }
        for (i, ai) in a.iter().enumerate() {
            for (x, v) in ai.iter().enumerate() {
                _mm512_storeu_ps(sp.add(i * 64 + 16 * x), *v);
            }
        }
    }
}

/// o (hs) = sum_j p[j] v[j] over the rows of v (n, hs), hs a multiple of 16: rows j, j+1,
/// j+2, j+3 feed four accumulator sets, summed (s0 + s1) + (s2 + s3), as the plain loop.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
pub unsafe fn weighted_sum<E: Elem>(o: &mut [f32], p: &[f32], v: &[E]) {
    let hs = o.len();
    assert!(hs.is_multiple_of(16) && v.len() >= p.len() * hs);
    // SAFETY: rows < p.len() of v hold hs values each (asserted).
    unsafe {
        for c in (0..hs).step_by(64) {
            match (hs - c).min(64) / 16 {
                1 => weighted_sum_tile::<E, 1>(o.as_mut_ptr().add(c), p, v.as_ptr().add(c), hs),
                2 => weighted_sum_tile::<E, 2>(o.as_mut_ptr().add(c), p, v.as_ptr().add(c), hs),
                3 => weighted_sum_tile::<E, 3>(o.as_mut_ptr().add(c), p, v.as_ptr().add(c), hs),
                _ => weighted_sum_tile::<E, 4>(o.as_mut_ptr().add(c), p, v.as_ptr().add(c), hs),
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
#[inline]
unsafe fn weighted_sum_tile<E: Elem, const V: usize>(op: *mut f32, p: &[f32], vp: *const E, hs: usize) {
    let n = p.len();
    // SAFETY (pointer offsets): rows < n of v (stride hs), V vectors from vp and op.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); V]; 4];
        let mut j = 0;
        while j < n {
            for (u, a) in acc.iter_mut().enumerate() {
                if j + u < n {
                    let pv = _mm512_set1_ps(p[j + u]);
                    for (x, ax) in a.iter_mut().enumerate() {
                        *ax = _mm512_fmadd_ps(pv, E::load16(vp.add((j + u) * hs + 16 * x)), *ax);
                    }
                }
            }
            j += 4;
        }
        for x in 0..V {
            let s = _mm512_add_ps(_mm512_add_ps(acc[0][x], acc[1][x]), _mm512_add_ps(acc[2][x], acc[3][x]));
            _mm512_storeu_ps(op.add(16 * x), s);
        }
    }
}

/// y (m, cols) += inp (m, k) @ W[:, j0..j0+cols] for W (k, n) row-major, cols a multiple of
/// 16: rows in blocks of 8, the (8, 32) accumulators of a column panel in registers for KK
/// rows of W, so each loaded W vector feeds 8 FMAs. Each y element accumulates over k in
/// order: the plain loop's bits.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
pub unsafe fn small_m(y: &mut [f32], inp: &[f32], w: &[f32], (m, k, n): (usize, usize, usize), j0: usize, cols: usize) {
    assert!(cols.is_multiple_of(16) && y.len() >= m * cols && inp.len() >= m * k && j0 + cols <= n);
    assert!(w.len() >= k * n);
    let mut r0 = 0;
    while r0 < m {
        let rows = (m - r0).min(8);
        let (yr, xr) = (&mut y[r0 * cols..], &inp[r0 * k..]);
        // SAFETY: rows r0..r0+rows of y and inp and columns j0..j0+cols of W's k rows are in
        // bounds (asserted above).
        unsafe {
            match rows {
                1 => small_m_rows::<1>(yr, xr, w, k, n, j0, cols),
                2 => small_m_rows::<2>(yr, xr, w, k, n, j0, cols),
                3 => small_m_rows::<3>(yr, xr, w, k, n, j0, cols),
                4 => small_m_rows::<4>(yr, xr, w, k, n, j0, cols),
                5 => small_m_rows::<5>(yr, xr, w, k, n, j0, cols),
                6 => small_m_rows::<6>(yr, xr, w, k, n, j0, cols),
                7 => small_m_rows::<7>(yr, xr, w, k, n, j0, cols),
                _ => small_m_rows::<8>(yr, xr, w, k, n, j0, cols),
            }
        }
        r0 += rows;
    }
}

#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
#[inline]
unsafe fn small_m_rows<const R: usize>(
    y: &mut [f32],
    inp: &[f32],
    w: &[f32],
    k: usize,
    n: usize,
    j0: usize,
    cols: usize,
) {
    const KK: usize = 8;
    let (yp, xp, wp) = (y.as_mut_ptr(), inp.as_ptr(), w.as_ptr());
    let mut kk0 = 0;
    // SAFETY (all offsets): rows < R of y (stride cols) and inp (stride k), rows < k and
    // columns j0..j0+cols of w (stride n), as the caller asserted.
    unsafe {
        while kk0 < k {
            let kend = (kk0 + KK).min(k);
            let mut j = 0;
            while j + 32 <= cols {
                let mut acc = [[_mm512_setzero_ps(); 2]; R];
                for (i, a) in acc.iter_mut().enumerate() {
                    a[0] = _mm512_loadu_ps(yp.add(i * cols + j));
                    a[1] = _mm512_loadu_ps(yp.add(i * cols + j + 16));
                }
                for kk in kk0..kend {
                    // the same panel of the next block of rows, for when this sweep comes back
                    let ahead = wp.wrapping_add((kk + KK) * n + j0 + j) as *const i8;
                    _mm_prefetch::<_MM_HINT_T0>(ahead);
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
                    let w0 = _mm512_loadu_ps(wp.add(kk * n + j0 + j));
                    let w1 = _mm512_loadu_ps(wp.add(kk * n + j0 + j + 16));
                    for (i, a) in acc.iter_mut().enumerate() {
                        let xv = _mm512_set1_ps(*xp.add(i * k + kk));
                        a[0] = _mm512_fmadd_ps(xv, w0, a[0]);
                        a[1] = _mm512_fmadd_ps(xv, w1, a[1]);
                    }
                }
                for (i, a) in acc.iter().enumerate() {
                    _mm512_storeu_ps(yp.add(i * cols + j), a[0]);
                    _mm512_storeu_ps(yp.add(i * cols + j + 16), a[1]);
                }
                j += 32;
            }
            if j < cols {
                // a last 16-wide panel
                let mut acc = [_mm512_setzero_ps(); R];
                for (i, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_loadu_ps(yp.add(i * cols + j));
                }
                for kk in kk0..kend {
                    let w0 = _mm512_loadu_ps(wp.add(kk * n + j0 + j));
                    for (i, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(_mm512_set1_ps(*xp.add(i * k + kk)), w0, *a);
                    }
                }
                for (i, a) in acc.iter().enumerate() {
                    _mm512_storeu_ps(yp.add(i * cols + j), *a);
                }
            }
            kk0 = kend;
        }
    }
}

/// y (rows, 32) = x (rows, k) @ panel (k, 32) for an f16 or f32 panel, rows <= 8: rows x 2
/// accumulators for all of k; each panel row is one 64-byte line, widened once and used by
/// 2 x rows FMAs.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
pub unsafe fn panel<E: Elem>(y: &mut [f32], x: &[f32], panel: &[E], k: usize) {
    let rows = y.len() / 32;
    assert!(rows <= 8 && x.len() >= rows * k && panel.len() >= k * 32);
    // SAFETY: bounds asserted above.
    unsafe {
        match rows {
            0 => {}
            1 => panel_rows::<E, 1>(y, x, panel, k),
            2 => panel_rows::<E, 2>(y, x, panel, k),
            3 => panel_rows::<E, 3>(y, x, panel, k),
            4 => panel_rows::<E, 4>(y, x, panel, k),
            5 => panel_rows::<E, 5>(y, x, panel, k),
            6 => panel_rows::<E, 6>(y, x, panel, k),
            7 => panel_rows::<E, 7>(y, x, panel, k),
            _ => panel_rows::<E, 8>(y, x, panel, k),
        }
    }
}

#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
#[inline]
unsafe fn panel_rows<E: Elem, const R: usize>(y: &mut [f32], x: &[f32], panel: &[E], k: usize) {
    let (xp, wp) = (x.as_ptr(), panel.as_ptr());
    // SAFETY (offsets): rows < R of x (stride k) and rows < k of the panel (stride 32).
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for kk in 0..k {
            // non-temporal, as the AVX2 panel kernel: the weights stream through once per step
            _mm_prefetch::<_MM_HINT_NTA>(wp.wrapping_add((kk + 32) * 32) as *const i8);
            let w0 = E::load16(wp.add(kk * 32));
            let w1 = E::load16(wp.add(kk * 32 + 16));
            for (i, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(*xp.add(i * k + kk));
                a[0] = _mm512_fmadd_ps(xv, w0, a[0]);
                a[1] = _mm512_fmadd_ps(xv, w1, a[1]);
            }
        }
        for (i, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(y.as_mut_ptr().add(i * 32), a[0]);
            _mm512_storeu_ps(y.as_mut_ptr().add(i * 32 + 16), a[1]);
        }
    }
}

/// dst = src as f32 (exact), 16 values per instruction; returns how many were converted
/// (a multiple of 16; the caller converts the rest).
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
pub unsafe fn f16_to_f32(src: &[half::f16], dst: &mut [f32]) -> usize {
    let n = src.len().min(dst.len()) / 16 * 16;
    // SAFETY: i + 16 <= n <= both lengths.
    unsafe {
        for i in (0..n).step_by(16) {
            _mm512_storeu_ps(dst.as_mut_ptr().add(i), half::f16::load16(src.as_ptr().add(i)));
        }
    }
    n
}
