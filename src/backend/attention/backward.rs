//! Backward of block-wise attention (FlashAttention-2's algorithm): the probabilities of
//! each (query block, key block) pair are recomputed from q, k and the saved log-sum-exp,
//! never stored whole. One task per (batch row, head) owns that head's dq, dk, dv.
//!
//! With S = scale * q k^T, P = softmax(S) (masked), O = P v and D_r = dO_r . O_r:
//! dv = P^T dO, dP = dO v^T, dS = P * (dP - D), dq = scale * dS k, dk = scale * dS^T q.

use rayon::prelude::*;

use super::kernels::{KB, accumulate_pv, accumulate_pv_any, scores};
use super::{AttnDims, Mask, SendPtr, SeqView};
use crate::backend::isa::multiversion;
use crate::backend::math::exp;

/// Rows per block (queries and keys alike: the score kernel's width).
const BB: usize = KB;

multiversion! {
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
        // Per-head copies: rows of q, k, v, dO (T, hs), and q, k, dO transposed per block
        // (T/BB, hs, BB), zero-padded, so that every block product below is one of the
        // register-blocked kernels and no block is ever transposed.
        let nblk = t.div_ceil(BB);
        // One per-thread scratch buffer, reused across heads, layers and steps.
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let (rl, bl) = (t * hs, nblk * hs * BB);
        let mut buf = SCRATCH.with(|c| std::mem::take(&mut *c.borrow_mut()));
        buf.clear();
        buf.resize(6 * rl + 4 * bl + 2 * KB * BB, 0.0);
        let (qh, rest) = buf.split_at_mut(rl);
        let (kh, rest) = rest.split_at_mut(rl);
        let (vh, rest) = rest.split_at_mut(rl);
        let (goh, rest) = rest.split_at_mut(rl);
        let (dk, rest) = rest.split_at_mut(rl);
        let (dv, rest) = rest.split_at_mut(rl);
        let (qt, rest) = rest.split_at_mut(bl);
        let (kt, rest) = rest.split_at_mut(bl);
        let (got, rest) = rest.split_at_mut(bl);
        let (dqt, rest) = rest.split_at_mut(bl);
        let (pt, dst_t) = rest.split_at_mut(KB * BB);
        for r in 0..t {
            qh[r * hs..(r + 1) * hs].copy_from_slice(q.row(b, r, col, hs));
            kh[r * hs..(r + 1) * hs].copy_from_slice(k.row(b, r, col, hs));
            vh[r * hs..(r + 1) * hs].copy_from_slice(v.row(b, r, col, hs));
            goh[r * hs..(r + 1) * hs].copy_from_slice(&dout[(b * t + r) * c + col..][..hs]);
            let blk = (r / BB) * hs * BB;
            for x in 0..hs {
                qt[blk + x * BB + r % BB] = qh[r * hs + x];
                kt[blk + x * BB + r % BB] = kh[r * hs + x];
                got[blk + x * BB + r % BB] = goh[r * hs + x];
            }
        }
        // D_r = dO_r . O_r
        let dd: Vec<f32> = (0..t)
            .map(|r| {
                let o = &out[(b * t + r) * c + col..][..hs];
                o.iter().zip(&goh[r * hs..(r + 1) * hs]).map(|(a, b)| a * b).sum()
            })
            .collect();
        let lse_h = &lse[(b * nh + h) * t..(b * nh + h + 1) * t];
        for k_lo in (0..t).step_by(KB) {
            let nk = KB.min(t - k_lo);
            // the query blocks that may see this key block
            let q_start = d.mask.query_span(k_lo, t).0 / BB * BB;
            let q_end = d.mask.query_span(k_lo + nk - 1, t).1;
            for q_lo in (q_start..q_end).step_by(BB) {
                let nq = BB.min(t - q_lo);
                if !d.mask.block_visible(q_lo, q_lo + nq, k_lo, k_lo + nk) {
                    continue;
                }
                let qblk = (q_lo / BB) * hs * BB;
                // S^T (nk, BB) = K Q^T and dP^T = V dO^T
                scores(pt, BB, &kh[k_lo * hs..], &qt[qblk..], BB, nk, hs);
                scores(dst_t, BB, &vh[k_lo * hs..], &got[qblk..], BB, nk, hs);
                // This query block's lse and D, padded (padding rows are zeroed below).
                let mut lb = [0f32; BB];
                let mut db = [0f32; BB];
                lb[..nq].copy_from_slice(&lse_h[q_lo..q_lo + nq]);
                db[..nq].copy_from_slice(&dd[q_lo..q_lo + nq]);
                for j in 0..nk {
                    let pr: &mut [f32; BB] = (&mut pt[j * BB..(j + 1) * BB]).try_into().expect("BB columns");
                    let dr: &mut [f32; BB] = (&mut dst_t[j * BB..(j + 1) * BB]).try_into().expect("BB columns");
                    for r in 0..BB {
                        let p = exp(pr[r] * d.scale - lb[r]);
                        pr[r] = p;
                        dr[r] = p * (dr[r] - db[r]) * d.scale; // dS^T, score scale folded in
                    }
                    // rows past nq are padding; hidden (query, key) pairs give 0
                    mask_column(pr, dr, d.mask, k_lo + j, q_lo, nq);
                }
                // dV += P^T dO, dK += dS^T Q, dQ^T += K^T dS^T
                accumulate_pv_any(&mut dv[k_lo * hs..], pt, BB, &goh[q_lo * hs..], nk, nq, hs);
                accumulate_pv_any(&mut dk[k_lo * hs..], dst_t, BB, &qh[q_lo * hs..], nk, nq, hs);
                accumulate_pv::<BB>(&mut dqt[qblk..], &kt[(k_lo / BB) * hs * BB..], BB, dst_t, hs, nk);
            }
        }
        // SAFETY: task (b, h) owns columns col..col+hs of the q, k and v parts of rows b*t..(b+1)*t.
        unsafe {
            for r in 0..t {
                let base = dst.0.add((b * t + r) * 3 * c + col);
                for x in 0..hs {
                    *base.add(x) = dqt[(r / BB) * hs * BB + x * BB + r % BB];
                    *base.add(c + x) = dk[r * hs + x];
                    *base.add(2 * c + x) = dv[r * hs + x];
                }
            }
        }
        SCRATCH.with(|c| *c.borrow_mut() = buf);
    });
}
}

/// Zeroes the probabilities `p` and score gradients `ds` of key slot s for the queries
/// q_lo.. that do not see it, and the padding rows from nq on.
#[inline(always)]
fn mask_column(p: &mut [f32; BB], ds: &mut [f32; BB], mask: Mask, s: usize, q_lo: usize, nq: usize) {
    match mask {
        Mask::Causal => {
            // query r sees key s when q_lo + r >= s
            let lo = s.saturating_sub(q_lo).min(BB);
            p[..lo].fill(0.0);
            ds[..lo].fill(0.0);
        }
        Mask::Full => {}
        Mask::Local2d { .. } => {
            let mut end = 0;
            mask.query_runs(s, q_lo, q_lo + nq, |a, b| {
                p[end..a - q_lo].fill(0.0);
                ds[end..a - q_lo].fill(0.0);
                end = b - q_lo;
            });
            p[end..nq].fill(0.0);
            ds[end..nq].fill(0.0);
        }
    }
    p[nq..].fill(0.0);
    ds[nq..].fill(0.0);
}
