//! Backward of block-wise attention (FlashAttention-2's algorithm): the probabilities of
//! each (query block, key block) pair are recomputed from q, k and the saved log-sum-exp,
//! never stored whole. One task per (batch row, head) owns that head's dq, dk, dv.
//!
//! With S = scale * q k^T, P = softmax(S) (masked), O = P v and D_r = dO_r . O_r:
//! dv = P^T dO, dP = dO v^T, dS = P * (dP - D), dq = scale * dS k, dk = scale * dS^T q.

use rayon::prelude::*;

use super::attention::{AttnDims, SeqView};
use super::math::exp;
use super::matmul::gemm_strided;

const BB: usize = 64;

struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// # Shapes
/// q, k, v: (B, T, C) views into the layer's qkv; out, dout: (B, T, C) contiguous;
/// lse: (B, nh, T); dqkv: (B, T, 3C), written (not accumulated) in the [q | k | v] layout.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dqkv: &mut [f32],
    dout: &[f32],
    out: &[f32],
    lse: &[f32],
    q: SeqView,
    k: SeqView,
    v: SeqView,
    d: AttnDims,
) {
    let (t, hs, nh) = (d.t, d.hs, d.nh);
    let c = nh * hs;
    assert_eq!(d.tk, t, "attention_backward: no cache in training");
    assert!(dqkv.len() >= d.b * t * 3 * c && dout.len() >= d.b * t * c);
    let dst = SendPtr(dqkv.as_mut_ptr());
    let dst = &dst;
    (0..d.b * nh).into_par_iter().for_each(|bh| {
        let (b, h) = (bh / nh, bh % nh);
        let col = h * hs;
        // D_r = dO_r . O_r
        let dd: Vec<f32> = (0..t)
            .map(|r| {
                let o = &out[(b * t + r) * c + col..][..hs];
                let g = &dout[(b * t + r) * c + col..][..hs];
                o.iter().zip(g).map(|(a, b)| a * b).sum()
            })
            .collect();
        let (mut dq, mut dk, mut dv) = (vec![0f32; t * hs], vec![0f32; t * hs], vec![0f32; t * hs]);
        let mut p = vec![0f32; BB * BB];
        let mut dp = vec![0f32; BB * BB];
        let dout_ptr = |r: usize| dout[(b * t + r) * c + col..].as_ptr();
        for q_lo in (0..t).step_by(BB) {
            let nq = BB.min(t - q_lo);
            let kmax = if d.causal { q_lo + nq } else { t };
            for k_lo in (0..kmax).step_by(BB) {
                let nk = BB.min(kmax - k_lo);
                // SAFETY (all gemm calls below): every (pointer, row stride, col stride) triple
                // addresses an (nq|nk, hs) block inside its buffer; p, dp hold BB*BB; the local
                // dq, dk, dv hold t*hs and do not alias the inputs.
                unsafe {
                    // S = Q K^T (nq, nk)
                    gemm_strided(
                        (nq, nk, hs),
                        (p.as_mut_ptr(), nk as isize, 1),
                        (q.ptr(b, q_lo, col), q.row_stride as isize, 1),
                        (k.ptr(b, k_lo, col), 1, k.row_stride as isize),
                        false,
                        1.0,
                    );
                }
                for r in 0..nq {
                    let l = lse[(b * nh + h) * t + q_lo + r];
                    let valid = if d.causal { (q_lo + r + 1).saturating_sub(k_lo).min(nk) } else { nk };
                    let row = &mut p[r * nk..(r + 1) * nk];
                    for (j, x) in row.iter_mut().enumerate() {
                        *x = if j < valid { exp(*x * d.scale - l) } else { 0.0 };
                    }
                }
                unsafe {
                    // dV (nk, hs) += P^T dO
                    gemm_strided(
                        (nk, hs, nq),
                        (dv[k_lo * hs..].as_mut_ptr(), hs as isize, 1),
                        (p.as_ptr(), 1, nk as isize),
                        (dout_ptr(q_lo), c as isize, 1),
                        true,
                        1.0,
                    );
                    // dP (nq, nk) = dO V^T
                    gemm_strided(
                        (nq, nk, hs),
                        (dp.as_mut_ptr(), nk as isize, 1),
                        (dout_ptr(q_lo), c as isize, 1),
                        (v.ptr(b, k_lo, col), 1, v.row_stride as isize),
                        false,
                        1.0,
                    );
                }
                // dS = P * (dP - D) * scale, into dp
                for r in 0..nq {
                    let dr = dd[q_lo + r];
                    for j in 0..nk {
                        let i = r * nk + j;
                        dp[i] = p[i] * (dp[i] - dr) * d.scale;
                    }
                }
                unsafe {
                    // dQ (nq, hs) += dS K
                    gemm_strided(
                        (nq, hs, nk),
                        (dq[q_lo * hs..].as_mut_ptr(), hs as isize, 1),
                        (dp.as_ptr(), nk as isize, 1),
                        (k.ptr(b, k_lo, col), k.row_stride as isize, 1),
                        true,
                        1.0,
                    );
                    // dK (nk, hs) += dS^T Q
                    gemm_strided(
                        (nk, hs, nq),
                        (dk[k_lo * hs..].as_mut_ptr(), hs as isize, 1),
                        (dp.as_ptr(), 1, nk as isize),
                        (q.ptr(b, q_lo, col), q.row_stride as isize, 1),
                        true,
                        1.0,
                    );
                }
            }
        }
        // SAFETY: task (b, h) owns columns col..col+hs of the q, k and v parts of rows b*t..(b+1)*t.
        unsafe {
            for r in 0..t {
                let base = dst.0.add((b * t + r) * 3 * c + col);
                for x in 0..hs {
                    *base.add(x) = dq[r * hs + x];
                    *base.add(c + x) = dk[r * hs + x];
                    *base.add(2 * c + x) = dv[r * hs + x];
                }
            }
        }
    });
}
