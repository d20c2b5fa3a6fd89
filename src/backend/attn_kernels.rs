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
    let mut r = 0;
    while r + 4 <= nq {
        let mut acc = [[0f32; HS]; 4];
        for i in 0..4 {
            acc[i].copy_from_slice(&o[(r + i) * HS..(r + i + 1) * HS]);
        }
        for j in 0..nk {
            let vr = &v[j * HS..(j + 1) * HS];
            for i in 0..4 {
                let pv = p[(r + i) * ps + j];
                for x in 0..HS {
                    acc[i][x] = pv.mul_add(vr[x], acc[i][x]);
                }
            }
        }
        for i in 0..4 {
            o[(r + i) * HS..(r + i + 1) * HS].copy_from_slice(&acc[i]);
        }
        r += 4;
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
