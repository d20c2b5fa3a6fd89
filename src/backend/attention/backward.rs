//! Backward of block-wise attention (FlashAttention-2's algorithm): the probabilities of
//! each (query block, key block) pair are recomputed from q, k and the saved log-sum-exp,
//! never stored whole. One task per (batch row, head) owns that head's dq, dk, dv.
//!
//! With S = scale * q k^T, P = softmax(S) (masked), O = P v and D_r = dO_r . O_r:
//! dv = P^T dO, dP = dO v^T, dS = P * (dP - D), dq = scale * dS k, dk = scale * dS^T q.
//! With dropout (P~ = P * M, M the mask scaled by 1 / (1 - p), O = P~ v): dv = P~^T dO,
//! dP = M * (dO v^T), and D_r = dO_r . O_r = sum_s P~ dP~ = sum_s P dP still holds.

use rayon::prelude::*;

use super::kernels::{KB, accumulate_pv, accumulate_pv_any, scores_cols};
use super::mask::Mask;
use super::mask::Side;
#[cfg(test)]
use super::view::Form;
use super::view::{AttnDims, SendPtr, SeqView};
use crate::backend::isa::multiversion;
use crate::backend::math::exp;

/// Rows per block (queries and keys alike: the score kernel's width).
const BB: usize = KB;
/// Keys per group of the local path (each group computes only the query tiles it needs).
const G: usize = 8;

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
                // S^T (nk, BB) = K Q^T and dP^T = V dO^T (local: per group of G keys, only the
                // 16-column query tiles that see them; the rest is zeroed by the mask below)
                let local = matches!(d.mask, Mask::Local2d { .. });
                let step = if local { G } else { nk };
                let groups = |g: usize| {
                    let ng = step.min(nk - g);
                    let span = if local { d.mask.tiles(Side::Queries, k_lo + g, ng, q_lo, nq) } else { Some((0, BB)) };
                    span.map(|(c0, c1)| (g, ng, c0, c1))
                };
                // the tiles, listed once for the two score products here and dV, dK below
                let tiles: Vec<(usize, usize, usize, usize)> = (0..nk).step_by(step).filter_map(groups).collect();
                for &(g, ng, c0, c1) in &tiles {
                    let (w, kq) = (c1 - c0, qblk + c0);
                    scores_cols(&mut pt[g * BB + c0..], BB, &kh[(k_lo + g) * hs..], &qt[kq..], BB, ng, hs, w);
                    scores_cols(&mut dst_t[g * BB + c0..], BB, &vh[(k_lo + g) * hs..], &got[kq..], BB, ng, hs, w);
                }
                // This query block's lse and D, padded (padding rows are zeroed below).
                let mut lb = [0f32; BB];
                let mut db = [0f32; BB];
                lb[..nq].copy_from_slice(&lse_h[q_lo..q_lo + nq]);
                db[..nq].copy_from_slice(&dd[q_lo..q_lo + nq]);
                for j in 0..nk {
                    let pr: &mut [f32; BB] = (&mut pt[j * BB..(j + 1) * BB]).try_into().expect("BB columns");
                    let dr: &mut [f32; BB] = (&mut dst_t[j * BB..(j + 1) * BB]).try_into().expect("BB columns");
                    match &d.dropout {
                        None => {
                            for r in 0..BB {
                                let p = exp(pr[r] * d.scale - lb[r]);
                                pr[r] = p;
                                dr[r] = p * (dr[r] - db[r]) * d.scale; // dS^T, score scale folded in
                            }
                        }
                        // P~ = P m / (1 - p) was used: dV from P~, dP = m / (1 - p) dP~
                        Some(dp) => {
                            for r in 0..BB {
                                let p = exp(pr[r] * d.scale - lb[r]);
                                let f = dp.factor((((bh * t) + q_lo + r) * t + k_lo + j) as u64);
                                pr[r] = p * f;
                                dr[r] = p * (dr[r] * f - db[r]) * d.scale;
                            }
                        }
                    }
                    // rows past nq are padding; hidden (query, key) pairs give 0
                    mask_column(pr, dr, d.mask, k_lo + j, q_lo, nq);
                }
                // dV += P^T dO, dK += dS^T Q (the same tiles: zeros elsewhere), dQ^T += K^T dS^T
                for &(g, ng, c0, c1) in &tiles {
                    let (nc, at) = ((c1 - c0).min(nq.saturating_sub(c0)), (k_lo + g) * hs);
                    let qr = (q_lo + c0) * hs;
                    accumulate_pv_any(&mut dv[at..], &pt[g * BB + c0..], BB, &goh[qr..], ng, nc, hs);
                    accumulate_pv_any(&mut dk[at..], &dst_t[g * BB + c0..], BB, &qh[qr..], ng, nc, hs);
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::attention::attention_forward;

    /// The gradients of every mask against a float64 reference of the softmax backward, on an
    /// image 64 wide (local windows cut key blocks into tiles) and 20 wide, GPT and BERT.
    #[test]
    fn gradients_match_a_float64_reference_for_every_mask() {
        let (b, nh, hs) = (1, 2, 8);
        let c = nh * hs;
        for (t, mask) in [
            (192, Mask::Local2d { rows: 1, cols: 3, width: 64, causal: true }),
            (192, Mask::Local2d { rows: 1, cols: 5, width: 64, causal: false }),
            (140, Mask::Local2d { rows: 2, cols: 2, width: 20, causal: true }),
            (140, Mask::Causal),
            (140, Mask::Full),
        ] {
            let mut rng = crate::rng::Rng::new(t as u64);
            let qkv: Vec<f32> = (0..b * t * 3 * c).map(|_| rng.normal() as f32).collect();
            let dout: Vec<f32> = (0..b * t * c).map(|_| rng.normal() as f32).collect();
            let d = AttnDims { b, t, tk: t, nh, hs, mask, form: Form::Softmax, scale: 0.4, dropout: None };
            let view = |p: usize| SeqView { data: &qkv, offset: p * c, batch_stride: t * 3 * c, row_stride: 3 * c };
            let (mut out, mut lse) = (vec![0f32; b * t * c], vec![0f32; b * nh * t]);
            attention_forward(&mut out, &mut lse, view(0), view(1), view(2), d);
            let mut dqkv = vec![0f32; b * t * 3 * c];
            attention_backward(&mut dqkv, &dout, &out, &lse, view(0), view(1), view(2), d);
            let at = |r: usize, part: usize, h: usize, x: usize| qkv[r * 3 * c + part * c + h * hs + x] as f64;
            let mut want = vec![0f64; t * 3 * c];
            for h in 0..nh {
                for p in 0..t {
                    let keys: Vec<usize> = (0..t).filter(|&s| mask.visible(p, s)).collect();
                    let sc: Vec<f64> = keys
                        .iter()
                        .map(|&s| 0.4 * (0..hs).map(|x| at(p, 0, h, x) * at(s, 1, h, x)).sum::<f64>())
                        .collect();
                    let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = sc.iter().map(|v| (v - mx).exp()).sum();
                    let pr: Vec<f64> = sc.iter().map(|v| (v - mx).exp() / z).collect();
                    let go = |x: usize| dout[p * c + h * hs + x] as f64;
                    let dp: Vec<f64> = keys.iter().map(|&s| (0..hs).map(|x| go(x) * at(s, 2, h, x)).sum()).collect();
                    let dd: f64 = pr.iter().zip(&dp).map(|(a, b)| a * b).sum();
                    for (i, &s) in keys.iter().enumerate() {
                        let ds = pr[i] * (dp[i] - dd) * 0.4;
                        for x in 0..hs {
                            want[p * 3 * c + h * hs + x] += ds * at(s, 1, h, x);
                            want[s * 3 * c + c + h * hs + x] += ds * at(p, 0, h, x);
                            want[s * 3 * c + 2 * c + h * hs + x] += pr[i] * go(x);
                        }
                    }
                }
            }
            let worst = dqkv.iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs()).fold(0f64, f64::max);
            assert!(worst < 2e-5, "{mask:?}: gradients differ by {worst}");
        }
    }

    /// With dropout on the probabilities: the output and every gradient against a float64
    /// reference that applies the same mask (P~ = P M, O = P~ V, dV = P~^T dO, dP = M dP~).
    #[test]
    fn dropout_forward_and_gradients_match_a_float64_reference() {
        let (b, nh, hs, t) = (2, 2, 8, 72);
        let c = nh * hs;
        for mask in [Mask::Causal, Mask::Full, Mask::Local2d { rows: 2, cols: 2, width: 12, causal: true }] {
            let dp = crate::backend::dropout::Dropout::new(0.3, 7).unwrap();
            let mut rng = crate::rng::Rng::new(3);
            let qkv: Vec<f32> = (0..b * t * 3 * c).map(|_| rng.normal() as f32).collect();
            let dout: Vec<f32> = (0..b * t * c).map(|_| rng.normal() as f32).collect();
            let d = AttnDims { b, t, tk: t, nh, hs, mask, form: Form::Softmax, scale: 0.4, dropout: Some(dp) };
            let view = |p: usize| SeqView { data: &qkv, offset: p * c, batch_stride: t * 3 * c, row_stride: 3 * c };
            let (mut out, mut lse) = (vec![0f32; b * t * c], vec![0f32; b * nh * t]);
            attention_forward(&mut out, &mut lse, view(0), view(1), view(2), d);
            let mut dqkv = vec![0f32; b * t * 3 * c];
            attention_backward(&mut dqkv, &dout, &out, &lse, view(0), view(1), view(2), d);
            let at = |bi: usize, r: usize, part: usize, h: usize, x: usize| {
                qkv[(bi * t + r) * 3 * c + part * c + h * hs + x] as f64
            };
            let (mut want, mut want_out) = (vec![0f64; b * t * 3 * c], vec![0f64; b * t * c]);
            for bi in 0..b {
                for h in 0..nh {
                    for p in 0..t {
                        let keys: Vec<usize> = (0..t).filter(|&s| mask.visible(p, s)).collect();
                        let sc: Vec<f64> = keys
                            .iter()
                            .map(|&s| 0.4 * (0..hs).map(|x| at(bi, p, 0, h, x) * at(bi, s, 1, h, x)).sum::<f64>())
                            .collect();
                        let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let z: f64 = sc.iter().map(|v| (v - mx).exp()).sum();
                        let pr: Vec<f64> = sc.iter().map(|v| (v - mx).exp() / z).collect();
                        let m: Vec<f64> =
                            keys.iter().map(|&s| dp.factor((((bi * nh + h) * t + p) * t + s) as u64) as f64).collect();
                        let go = |x: usize| dout[(bi * t + p) * c + h * hs + x] as f64;
                        let dpt: Vec<f64> =
                            keys.iter().map(|&s| (0..hs).map(|x| go(x) * at(bi, s, 2, h, x)).sum()).collect();
                        let dpr: Vec<f64> = dpt.iter().zip(&m).map(|(a, b)| a * b).collect();
                        let dd: f64 = pr.iter().zip(&dpr).map(|(a, b)| a * b).sum();
                        for (i, &s) in keys.iter().enumerate() {
                            let ds = pr[i] * (dpr[i] - dd) * 0.4;
                            for x in 0..hs {
                                want_out[(bi * t + p) * c + h * hs + x] += pr[i] * m[i] * at(bi, s, 2, h, x);
                                want[(bi * t + p) * 3 * c + h * hs + x] += ds * at(bi, s, 1, h, x);
                                want[(bi * t + s) * 3 * c + c + h * hs + x] += ds * at(bi, p, 0, h, x);
                                want[(bi * t + s) * 3 * c + 2 * c + h * hs + x] += pr[i] * m[i] * go(x);
                            }
                        }
                    }
                }
            }
            let worst = |a: &[f32], w: &[f64]| a.iter().zip(w).map(|(a, b)| (*a as f64 - b).abs()).fold(0f64, f64::max);
            assert!(worst(&out, &want_out) < 1e-5, "{mask:?}: outputs differ by {}", worst(&out, &want_out));
            assert!(worst(&dqkv, &want) < 3e-5, "{mask:?}: gradients differ by {}", worst(&dqkv, &want));
        }
    }
}
