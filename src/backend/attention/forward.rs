//! The block-wise forward (flash-attention style): a (T x T) score matrix is never stored,
//! and key blocks the mask hides entirely are skipped ([`Mask::block_visible`]). The
//! log-sum-exp of every query row is saved, so the backward pass (and `attention_probs`) can
//! recompute any probability exactly.

use rayon::prelude::*;

use super::kernels::{self, KB};
use super::kv_blocks::KvBlocks;
use super::mask::Mask;
use super::mask::Side;
#[cfg(test)]
use super::view::Form;
use super::view::{AttnDims, SendPtr, SeqView};
use crate::backend::isa::multiversion;
use crate::backend::math::{exp, exp_sub_sum, max};

/// Query rows per task.
pub const BQ: usize = 64;
/// Keys per online-softmax step: KC / KB score kernels fill a (BQ, KC) panel, then each
/// row's running max and sum are updated once.
pub const KC: usize = 4 * KB;

/// out = softmax(q k^T * scale, masked) v, for every batch row and head.
///
/// # Shapes
/// q: (B, T, nh*hs) view; k, v: (B, Tk, nh*hs) views; out: (B, T, nh*hs) contiguous;
/// lse: (B, nh, T) receives max + ln(sum exp) of each query row's scaled scores.
pub fn attention_forward(out: &mut [f32], lse: &mut [f32], q: SeqView, k: SeqView, v: SeqView, d: AttnDims) {
    // The packed keys and values are reused between calls of the same shape (every layer of
    // every step): stale positions past d.tk are never read unmasked.
    thread_local! {
        static KV: std::cell::RefCell<Option<KvBlocks>> = const { std::cell::RefCell::new(None) };
    }
    let cap = d.tk.div_ceil(KB).max(1) * KB;
    let mut kv = KV
        .with(|c| c.borrow_mut().take())
        .filter(|kv| (kv.b, kv.nh, kv.hs, kv.cap) == (d.b, d.nh, d.hs, cap))
        .unwrap_or_else(|| KvBlocks::new(d.b, d.nh, d.hs, d.tk));
    kv.write(k, v, 0, d.tk);
    attention_with_kv(out, lse, q, &kv, d);
    KV.with(|c| *c.borrow_mut() = Some(kv));
}

multiversion! {
/// Attention of T new query rows over the first d.tk positions of `kv` (which already holds
/// the new rows' keys and values at positions d.tk - T..d.tk).
pub fn attention_with_kv(out: &mut [f32], lse: &mut [f32], q: SeqView, kv: &KvBlocks, d: AttnDims) {
    if d.t == 1 && d.dropout.is_none() {
        // one query row per sequence (decoding): the bandwidth-bound kernel
        return super::decode::decode_attention(out, lse, q, kv, d);
    }
    let c = d.nh * d.hs;
    assert!(out.len() >= d.b * d.t * c && lse.len() >= d.b * d.nh * d.t);
    assert!(d.tk >= d.t && d.tk <= kv.cap && kv.b == d.b && kv.nh == d.nh && kv.hs == d.hs);
    let past = d.tk - d.t;
    let nqb = d.t.div_ceil(BQ);
    let hs = d.hs;
    let out_ptr = SendPtr(out.as_mut_ptr());
    let lse_ptr = SendPtr(lse.as_mut_ptr());
    let (out_ptr, lse_ptr) = (&out_ptr, &lse_ptr);
    (0..d.b * d.nh * nqb).into_par_iter().for_each_init(
        || Scratch::new(d.hs, BQ.min(d.t)),
        |sc, task| {
            let (bh, qb) = (task / nqb, task % nqb);
            let (b, h) = (bh / d.nh, bh % d.nh);
            let q_lo = qb * BQ;
            let nq = BQ.min(d.t - q_lo);
            // the keys any query of this block may see, from a KB-aligned start
            let (q_first, q_last) = (past + q_lo, past + q_lo + nq - 1);
            let k_start = d.mask.key_span(q_first, d.tk).0 / KB * KB;
            let kmax = d.mask.key_span(q_last, d.tk).1;
            // Q block (nq, hs), contiguous and pre-multiplied by the score scale.
            for r in 0..nq {
                let src = q.row(b, q_lo + r, h * hs, hs);
                sc.q[r * hs..(r + 1) * hs].iter_mut().zip(src).for_each(|(a, &x)| *a = x * d.scale);
            }
            sc.o[..nq * hs].fill(0.0);
            sc.m[..nq].fill(f32::NEG_INFINITY);
            sc.l[..nq].fill(0.0);
            let mut k_lo = k_start;
            while k_lo < kmax {
                let nk = KC.min(kmax - k_lo);
                let seen = |kb: usize| d.mask.block_visible(q_first, q_last + 1, k_lo + kb, (k_lo + kb + KB).min(kmax));
                if !(0..nk).step_by(KB).any(seen) {
                    k_lo += nk;
                    continue;
                }
                // S (nq, nk) panel, KB columns at a time (the last block padded with zero keys);
                // blocks no query sees are left out (their scores are masked below)
                let kt = kv.keys(bh, k_lo, nk.next_multiple_of(KB), &mut sc.kbuf);
                let local = matches!(d.mask, Mask::Local2d { .. });
                sc.tiles.clear();
                for kb in (0..nk).step_by(KB).filter(|&kb| seen(kb)) {
                    if !local {
                        kernels::scores(&mut sc.s[kb..], KC, &sc.q, &kt[kb * hs..], KB, nq, hs);
                        continue;
                    }
                    // local: per group of G query rows, only the 16-column tiles its window shows
                    // (listed once, for the scores here and P V below)
                    for g in (0..nq).step_by(G) {
                        let ng = G.min(nq - g);
                        if let Some((c0, c1)) = d.mask.tiles(Side::Keys, past + q_lo + g, ng, k_lo + kb, KB.min(nk - kb)) {
                            sc.tiles.push((kb, g, ng, c0, c1));
                            let (s0, q0) = (&mut sc.s[g * KC + kb + c0..], &sc.q[g * hs..]);
                            kernels::scores_cols(s0, KC, q0, &kt[kb * hs + c0..], KB, ng, hs, c1 - c0);
                        }
                    }
                }
                for r in 0..nq {
                    let row = &mut sc.s[r * KC..r * KC + nk];
                    let Some((m_new, valid)) = mask_row(row, d.mask, past + q_lo + r, k_lo, sc.m[r]) else {
                        continue;
                    };
                    let corr = exp(sc.m[r] - m_new);
                    let sum = exp_sub_sum(&mut row[..valid], m_new);
                    row[valid..].fill(0.0);
                    // dropout: the sum (the softmax's denominator) is of the kept and dropped alike
                    if let Some(dp) = &d.dropout {
                        let base = ((bh * d.tk + past + q_lo + r) * d.tk + k_lo) as u64;
                        row[..valid].iter_mut().enumerate().for_each(|(j, x)| *x *= dp.factor(base + j as u64));
                    }
                    sc.l[r] = sc.l[r] * corr + sum;
                    sc.m[r] = m_new;
                    if corr != 1.0 {
                        sc.o[r * hs..(r + 1) * hs].iter_mut().for_each(|x| *x *= corr);
                    }
                }
                let vb = kv.values(bh, k_lo, nk, &mut sc.vbuf);
                if !local {
                    kernels::accumulate_pv_any(&mut sc.o, &sc.s, KC, vb, nq, nk, hs); // O += P V
                } else {
                    // the same tiles: the probabilities outside them are 0, adding them changes nothing
                    for &(kb, g, ng, c0, c1) in &sc.tiles {
                        let (o, p) = (&mut sc.o[g * hs..], &sc.s[g * KC + kb + c0..]);
                        let nc = (c1 - c0).min(nk - kb - c0);
                        kernels::accumulate_pv_any(o, p, KC, &vb[(kb + c0) * hs..], ng, nc, hs);
                    }
                }
                k_lo += nk;
            }
            for r in 0..nq {
                let inv = 1.0 / sc.l[r];
                // SAFETY: task (b, h, qb) owns rows q_lo..q_lo+nq, columns h*hs..(h+1)*hs of
                // `out` and entries (b, h, q_lo..q_lo+nq) of `lse`; no other task writes there.
                unsafe {
                    let dst = out_ptr.0.add((b * d.t + q_lo + r) * c + h * hs);
                    for j in 0..hs {
                        *dst.add(j) = sc.o[r * hs + j] * inv;
                    }
                    *lse_ptr.0.add((b * d.nh + h) * d.t + q_lo + r) = sc.m[r] + sc.l[r].ln();
                }
            }
        },
    );
}
}

/// Query rows per group of the local path (each group computes only its window's tiles).
const G: usize = 8;

/// Masks one row of scores of query slot p over keys k_lo.. (the row's length): returns the
/// new running maximum (from `m`) and the length of the prefix to exponentiate (causal and
/// full masks: the visible prefix; local: the row, its hidden entries set to -inf, which
/// exp turns into 0), or None (the row zeroed) when the row sees no key.
#[inline(always)]
fn mask_row(row: &mut [f32], mask: Mask, p: usize, k_lo: usize, m: f32) -> Option<(f32, usize)> {
    let nk = row.len();
    let valid = match mask {
        Mask::Causal => (p + 1).saturating_sub(k_lo).min(nk),
        Mask::Full => nk,
        Mask::Local2d { .. } => {
            let (mut end, mut seen) = (0, 0);
            mask.runs(p, k_lo, k_lo + nk, |a, b| {
                row[end..a - k_lo].fill(f32::NEG_INFINITY);
                (end, seen) = (b - k_lo, seen + b - a);
            });
            row[end..].fill(f32::NEG_INFINITY);
            if seen == 0 {
                row.fill(0.0);
                return None;
            }
            return Some((m.max(max(row)), nk));
        }
    };
    if valid == 0 {
        row.fill(0.0);
        return None;
    }
    Some((m.max(max(&row[..valid])), valid))
}

/// Per-thread buffers of one attention task.
struct Scratch {
    q: Vec<f32>,
    s: Vec<f32>,
    o: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
    /// Keys and values of one chunk converted to f32 (f16 and int8 caches only).
    kbuf: Vec<f32>,
    vbuf: Vec<f32>,
    /// Local masks: the (key block, query group, rows, first and end column) tiles of a chunk.
    tiles: Vec<(usize, usize, usize, usize, usize)>,
}

impl Scratch {
    fn new(hs: usize, rows: usize) -> Self {
        Scratch {
            q: vec![0.0; rows * hs],
            s: vec![0.0; rows * KC],
            o: vec![0.0; rows * hs],
            m: vec![0.0; rows],
            l: vec![0.0; rows],
            kbuf: Vec::new(),
            tiles: Vec::new(),
            vbuf: Vec::new(),
        }
    }
}

/// Recomputes the attention probabilities of one (batch row, head) from q, k and the saved
/// log-sum-exp: p[r, j] = exp(q_r . k_j * scale - lse_r), 0 where masked. For inspection
/// (HF's `output_attentions`) and tests; O(T * Tk) memory.
pub fn attention_probs(q: SeqView, k: SeqView, lse: &[f32], d: AttnDims, b: usize, h: usize) -> Vec<f32> {
    let past = d.tk - d.t.min(d.tk);
    let mut p = vec![0f32; d.t * d.tk];
    for r in 0..d.t {
        let row_lse = lse[(b * d.nh + h) * d.t + r];
        for j in (0..d.tk).filter(|&j| d.mask.visible(past + r, j)) {
            let mut dot = 0f32;
            for x in 0..d.hs {
                // SAFETY: in-bounds by the view's construction (debug-checked).
                unsafe { dot += *q.ptr(b, r, h * d.hs + x) * *k.ptr(b, j, h * d.hs + x) };
            }
            p[r * d.tk + j] = exp(dot * d.scale - row_lse);
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::attention::KvPrecision;

    /// Naive float64 reference: full score matrix, masked, softmax.
    fn naive(qkv: &[f32], d: AttnDims) -> Vec<f32> {
        let c = d.nh * d.hs;
        let mut out = vec![0f32; d.b * d.t * c];
        for b in 0..d.b {
            for h in 0..d.nh {
                for r in 0..d.t {
                    let at = |row: usize, part: usize, x: usize| {
                        qkv[(b * d.t + row) * 3 * c + part * c + h * d.hs + x] as f64
                    };
                    let keys: Vec<usize> = (0..d.t).filter(|&j| d.mask.visible(r, j)).collect();
                    let s: Vec<f64> = keys
                        .iter()
                        .map(|&j| (0..d.hs).map(|x| at(r, 0, x) * at(j, 1, x)).sum::<f64>() * d.scale as f64)
                        .collect();
                    let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|v| (v - mx).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for x in 0..d.hs {
                        let v: f64 = keys.iter().enumerate().map(|(i, &j)| e[i] / z * at(j, 2, x)).sum();
                        out[(b * d.t + r) * c + h * d.hs + x] = v as f32;
                    }
                }
            }
        }
        out
    }

    /// Every mask: causal, full, and local 2D windows (GPT and BERT) over an image 20 wide, so
    /// that query and key blocks cut image rows anywhere.
    #[test]
    fn blockwise_matches_naive_for_every_mask() {
        // T = 300 spans several query and key blocks, with a ragged last block.
        let (b, t, nh, hs) = (2, 300, 3, 8);
        let c = nh * hs;
        let mut rng = crate::rng::Rng::new(3);
        let qkv: Vec<f32> = (0..b * t * 3 * c).map(|_| rng.normal() as f32).collect();
        let masks = [
            Mask::Causal,
            Mask::Full,
            Mask::Local2d { rows: 3, cols: 2, width: 20, causal: true },
            Mask::Local2d { rows: 2, cols: 5, width: 20, causal: false },
            Mask::Local2d { rows: 0, cols: 0, width: 20, causal: true },
        ];
        for mask in masks {
            let d = AttnDims {
                b,
                t,
                tk: t,
                nh,
                hs,
                mask,
                form: Form::Softmax,
                scale: 1.0 / (hs as f32).sqrt(),
                dropout: None,
            };
            let view =
                |part: usize| SeqView { data: &qkv, offset: part * c, batch_stride: t * 3 * c, row_stride: 3 * c };
            let mut out = vec![0f32; b * t * c];
            let mut lse = vec![0f32; b * nh * t];
            attention_forward(&mut out, &mut lse, view(0), view(1), view(2), d);
            let want = naive(&qkv, d);
            let worst = out.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 2e-5, "{mask:?}: max diff {worst}");
            // probabilities recomputed from lse sum to one
            let p = attention_probs(view(0), view(1), &lse, d, 1, 2);
            for r in [0, 77, 299] {
                let z: f32 = p[r * t..(r + 1) * t].iter().sum();
                assert!((z - 1.0).abs() < 1e-5, "row {r} sums to {z}");
            }
        }
    }

    /// One decoding step over a cache equals the last row of the full causal forward
    /// (to rounding: the sums run in another order), for f32 caches and, within their
    /// rounding, f16 and int8 ones; head sizes with and without a vector kernel.
    #[test]
    fn decode_step_matches_the_last_row_of_the_full_forward() {
        for (hs, t) in [(32, 200), (16, 64), (8, 1), (64, 130)] {
            let (b, nh) = (3, 2);
            let c = nh * hs;
            let mut rng = crate::rng::Rng::new(hs as u64);
            let qkv: Vec<f32> = (0..b * t * 3 * c).map(|_| rng.normal() as f32).collect();
            let view = |p: usize| SeqView { data: &qkv, offset: p * c, batch_stride: t * 3 * c, row_stride: 3 * c };
            let d =
                AttnDims { b, t, tk: t, nh, hs, mask: Mask::Causal, form: Form::Softmax, scale: 0.3, dropout: None };
            let (mut full, mut lse_full) = (vec![0f32; b * t * c], vec![0f32; b * nh * t]);
            attention_forward(&mut full, &mut lse_full, view(0), view(1), view(2), d);
            let last = |p: usize| SeqView { offset: p * c + (t - 1) * 3 * c, ..view(p) };
            for (prec, tol) in [(KvPrecision::F32, 2e-6), (KvPrecision::F16, 5e-3), (KvPrecision::Int8, 5e-2)] {
                let mut kv = KvBlocks::with_precision(b, nh, hs, t + 70, prec);
                kv.write(view(1), view(2), 0, t);
                let (mut out, mut lse) = (vec![0f32; b * c], vec![0f32; b * nh]);
                super::super::decode::decode_attention(&mut out, &mut lse, last(0), &kv, AttnDims { t: 1, ..d });
                for bb in 0..b {
                    let want = &full[(bb * t + t - 1) * c..(bb * t + t) * c];
                    let worst =
                        out[bb * c..(bb + 1) * c].iter().zip(want).map(|(a, w)| (a - w).abs()).fold(0f32, f32::max);
                    assert!(worst < tol, "hs={hs} t={t} {prec:?}: max diff {worst}");
                    for h in 0..nh {
                        let (got, want) = (lse[bb * nh + h], lse_full[(bb * nh + h) * t + t - 1]);
                        assert!((got - want).abs() < 10.0 * tol, "lse {got} vs {want}");
                    }
                }
            }
        }
    }
}
