//! Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs"; architectures.md):
//! with phi(x) = elu(x) + 1 on q and k (no 1/sqrt(hs) scaling),
//!     y_p = (sum_{s visible} (phi(q_p) . phi(k_s)) v_s) / (sum_{s visible} phi(q_p) . phi(k_s) + 1e-6),
//! visible = s <= p (GPT) or every s (BERT). Causal, it is a running sum: the state
//! S = sum phi(k_s) v_s^T (hs x hs) and z = sum phi(k_s) (hs) carry everything a later query
//! needs, so a decoding step costs the same at every position ([`super::linear_state`]).
//!
//! The full-sequence pass works in chunks of [`CHUNK`] positions, in matrix form on the
//! attention micro-kernels: within a chunk the masked (C x C) product A = tril(phi(Q) phi(K)^T),
//! across chunks the carried (S, z):
//!
//! ```text
//! N = A V + phi(Q) S,   D = A 1 + phi(Q) z + eps,   Y = N / D,   S += phi(K)^T V.
//! ```
//!
//! Never a state per position; the backward ([`super::linear_backward`]) recomputes one
//! state per chunk.

use rayon::prelude::*;

use super::kernels::{accumulate_pv_any, scores_cols};
use super::mask::Mask;
use super::view::{AttnDims, SendPtr, SeqView};
use crate::backend::isa::multiversion;
use crate::backend::math;

/// The denominator's guard (architectures.md).
pub const EPS: f32 = 1e-6;
/// Positions per chunk of the full-sequence pass (a width the score kernel takes).
pub const CHUNK: usize = 64;

/// phi(x) = elu(x) + 1: x + 1 for x > 0, exp(x) below (always > 0; [`math::exp`], so
/// that loops of it vectorise: both sides computed, one selected).
#[inline(always)]
pub fn phi(x: f32) -> f32 {
    let e = math::exp(x.min(0.0));
    if x > 0.0 { x + 1.0 } else { e }
}

/// phi'(x) from y = phi(x): 1 where x > 0 (y > 1), exp(x) = y below (y <= 1).
#[inline(always)]
pub(super) fn dphi_of(y: f32) -> f32 {
    y.min(1.0)
}

/// Whether `mask` is the causal one (linear attention takes causal or full masks only).
pub(super) fn is_causal(mask: Mask) -> bool {
    match mask {
        Mask::Causal => true,
        Mask::Full => false,
        m => panic!("linear attention takes a causal or full mask, not {m:?}"),
    }
}

/// One head of one batch row, contiguous: phi(q), phi(k) and v as (Tp, hs) with Tp = T
/// rounded up to whole chunks, the padding rows zero (a zero phi(k) row adds nothing).
pub(super) struct Head {
    pub hs: usize,
    pub fq: Vec<f32>,
    pub fk: Vec<f32>,
    pub v: Vec<f32>,
}

impl Head {
    #[inline(always)]
    pub fn gather(q: SeqView, k: SeqView, v: SeqView, b: usize, col: usize, t: usize, hs: usize) -> Head {
        let tp = t.div_ceil(CHUNK) * CHUNK;
        let take = |x: SeqView| -> Vec<f32> {
            let mut out = vec![0f32; tp * hs];
            for r in 0..t {
                out[r * hs..(r + 1) * hs].copy_from_slice(x.row(b, r, col, hs));
            }
            out
        };
        let (mut fq, mut fk) = (take(q), take(k));
        for e in fq[..t * hs].iter_mut() {
            *e = phi(*e);
        }
        for e in fk[..t * hs].iter_mut() {
            *e = phi(*e);
        }
        Head { hs, fq, fk, v: take(v) }
    }

    /// Chunks (of CHUNK rows each).
    #[inline(always)]
    pub fn chunks(&self) -> usize {
        self.fq.len() / (CHUNK * self.hs)
    }

    /// Rows of chunk c of a (Tp, hs) buffer.
    #[inline(always)]
    pub fn rows<'a>(&self, x: &'a [f32], c: usize) -> &'a [f32] {
        &x[c * CHUNK * self.hs..(c + 1) * CHUNK * self.hs]
    }
}

/// dst (cols, rows) = src (rows, cols)^T.
#[inline(always)]
pub(super) fn transpose(dst: &mut [f32], src: &[f32], rows: usize, cols: usize) {
    for r in 0..rows {
        for c in 0..cols {
            dst[c * rows + r] = src[r * cols + c];
        }
    }
}

/// A (C, C) = tril(phi(Q_c) phi(K_c)^T) of one chunk (zero above the diagonal), kt =
/// phi(K_c)^T (hs, C).
#[inline(always)]
pub(super) fn chunk_scores(a: &mut [f32], fq: &[f32], kt: &[f32], hs: usize) {
    scores_cols(a, CHUNK, fq, kt, CHUNK, CHUNK, hs, CHUNK);
    for p in 0..CHUNK {
        a[p * CHUNK + p + 1..(p + 1) * CHUNK].fill(0.0);
    }
}

/// S (hs, hs) += phi(K_c)^T V_c and z += the column sums of phi(K_c), kt = phi(K_c)^T.
#[inline(always)]
pub(super) fn add_to_state(s: &mut [f32], z: &mut [f32], kt: &[f32], v: &[f32], hs: usize) {
    accumulate_pv_any(s, kt, CHUNK, v, hs, CHUNK, hs);
    for (i, zi) in z.iter_mut().enumerate() {
        *zi += kt[i * CHUNK..(i + 1) * CHUNK].iter().sum::<f32>();
    }
}

/// den_p = sum_s a_ps + phi(q_p) . z + eps for the rows of a chunk (a: (C, C), or empty
/// for the state alone).
#[inline(always)]
pub(super) fn denominators(den: &mut [f32], a: &[f32], fq: &[f32], z: &[f32]) {
    let hs = z.len();
    for (p, d) in den.iter_mut().enumerate() {
        let within: f32 = if a.is_empty() { 0.0 } else { a[p * CHUNK..(p + 1) * CHUNK].iter().sum() };
        let carried: f32 = fq[p * hs..(p + 1) * hs].iter().zip(z).map(|(x, y)| x * y).sum();
        *d = within + carried + EPS;
    }
}

/// Y (Tp, hs) of one head: the causal pass chunk by chunk, or (BERT) every query against the
/// state of the whole sequence.
#[inline(always)]
fn head_forward(h: &Head, causal: bool) -> Vec<f32> {
    let hs = h.hs;
    let (mut s, mut z) = (vec![0f32; hs * hs], vec![0f32; hs]);
    let mut kt = vec![0f32; hs * CHUNK];
    if !causal {
        for c in 0..h.chunks() {
            transpose(&mut kt, h.rows(&h.fk, c), CHUNK, hs);
            add_to_state(&mut s, &mut z, &kt, h.rows(&h.v, c), hs);
        }
    }
    let mut y = vec![0f32; h.fq.len()];
    let (mut a, mut den) = (vec![0f32; CHUNK * CHUNK], vec![0f32; CHUNK]);
    for c in 0..h.chunks() {
        let (fq, v) = (h.rows(&h.fq, c), h.rows(&h.v, c));
        let yc = &mut y[c * CHUNK * hs..(c + 1) * CHUNK * hs];
        // N = phi(Q) S (+ A V within the chunk), written into y
        accumulate_pv_any(yc, fq, hs, &s, CHUNK, hs, hs);
        if causal {
            transpose(&mut kt, h.rows(&h.fk, c), CHUNK, hs);
            chunk_scores(&mut a, fq, &kt, hs);
            accumulate_pv_any(yc, &a, CHUNK, v, CHUNK, CHUNK, hs);
        }
        denominators(&mut den, if causal { &a } else { &[] }, fq, &z);
        for (row, &d) in yc.chunks_mut(hs).zip(&den) {
            let inv = 1.0 / d;
            row.iter_mut().for_each(|o| *o *= inv);
        }
        if causal {
            add_to_state(&mut s, &mut z, &kt, v, hs);
        }
    }
    y
}

multiversion! {
/// out = linear attention of q over k, v for every batch row and head (d.t == d.tk, the mask
/// Causal or Full).
///
/// # Shapes
/// q, k, v: (B, T, nh*hs) views; out: (B, T, nh*hs) contiguous.
pub fn linear_forward(out: &mut [f32], q: SeqView, k: SeqView, v: SeqView, d: AttnDims) {
    let (t, nh, hs) = (d.t, d.nh, d.hs);
    let c = nh * hs;
    assert!(d.tk == t && out.len() >= d.b * t * c);
    let causal = is_causal(d.mask);
    let dst = SendPtr(out.as_mut_ptr());
    let dst = &dst;
    (0..d.b * nh).into_par_iter().for_each(|bh| {
        let (b, h) = (bh / nh, bh % nh);
        let y = head_forward(&Head::gather(q, k, v, b, h * hs, t, hs), causal);
        // SAFETY: task (b, h) owns columns h*hs..(h+1)*hs of rows b*t..(b+1)*t of `out`.
        unsafe {
            for r in 0..t {
                std::ptr::copy_nonoverlapping(y[r * hs..].as_ptr(), dst.0.add((b * t + r) * c + h * hs), hs);
            }
        }
    });
}
}

/// The weights a_ps / sum_s a_ps (without eps) of batch row b, head h: (T, T), 0 where not
/// visible. For inspection (HF's `output_attentions`).
pub fn linear_probs(q: SeqView, k: SeqView, d: AttnDims, b: usize, h: usize) -> Vec<f32> {
    let (t, hs) = (d.t, d.hs);
    let mut p = vec![0f32; t * d.tk];
    for r in 0..t {
        let qr: Vec<f32> = q.row(b, r, h * hs, hs).iter().map(|&x| phi(x)).collect();
        let row = &mut p[r * d.tk..(r + 1) * d.tk];
        for (s, w) in row.iter_mut().enumerate().filter(|(s, _)| d.mask.visible(d.tk - t + r, *s)) {
            *w = qr.iter().zip(k.row(b, s, h * hs, hs)).map(|(a, &x)| a * phi(x)).sum();
        }
        let z: f32 = row.iter().sum();
        row.iter_mut().for_each(|w| *w /= z);
    }
    p
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::linear_state::LinearState;
    use super::super::view::Form;
    use super::*;

    /// Float64 reference of the formula, pair by pair: out (t, nh*hs) from qkv (t, 3 nh hs).
    pub fn naive(qkv: &[f64], t: usize, nh: usize, hs: usize, causal: bool) -> Vec<f64> {
        let c = nh * hs;
        let at = |r: usize, part: usize, h: usize, x: usize| qkv[r * 3 * c + part * c + h * hs + x];
        let phi64 = |x: f64| if x > 0.0 { x + 1.0 } else { x.exp() };
        let mut out = vec![0f64; t * c];
        for h in 0..nh {
            for p in 0..t {
                let (mut num, mut den) = (vec![0f64; hs], 0f64);
                for s in 0..if causal { p + 1 } else { t } {
                    let a: f64 = (0..hs).map(|x| phi64(at(p, 0, h, x)) * phi64(at(s, 1, h, x))).sum();
                    den += a;
                    (0..hs).for_each(|x| num[x] += a * at(s, 2, h, x));
                }
                (0..hs).for_each(|x| out[p * c + h * hs + x] = num[x] / (den + 1e-6));
            }
        }
        out
    }

    /// (t, 3 nh hs) values in [-scale, scale], clamped to |x| <= 30.
    pub fn inputs(n: usize, scale: f32, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..n).map(|_| ((rng.uniform() * 2.0 - 1.0) as f32 * scale).clamp(-30.0, 30.0)).collect()
    }

    /// The chunked parallel form and the recurrent decoding form against float64, causal
    /// (300 slots: several chunks, a ragged last one) and BERT, with ordinary inputs and with
    /// large ones (|x| up to 30: phi(k) up to 31, denominators in the tens of thousands).
    #[test]
    fn chunked_and_recurrent_forms_match_float64() {
        let (t, nh, hs) = (300, 2, 8);
        let c = nh * hs;
        for scale in [1.0f32, 30.0] {
            let qkv = inputs(t * 3 * c, scale, 9);
            let qkv64: Vec<f64> = qkv.iter().map(|&x| x as f64).collect();
            let view = |p: usize| SeqView { data: &qkv, offset: p * c, batch_stride: t * 3 * c, row_stride: 3 * c };
            for causal in [true, false] {
                let mask = if causal { Mask::Causal } else { Mask::Full };
                let d = AttnDims { b: 1, t, tk: t, nh, hs, mask, form: Form::Linear, scale: 1.0, dropout: None };
                let mut out = vec![0f32; t * c];
                linear_forward(&mut out, view(0), view(1), view(2), d);
                let want = naive(&qkv64, t, nh, hs, causal);
                let rel = |a: f32, w: f64| ((a as f64 - w) / w.abs().max(1.0)).abs();
                let worst = out.iter().zip(&want).map(|(&a, &w)| rel(a, w)).fold(0f64, f64::max);
                assert!(worst < 2e-5, "scale {scale} causal {causal}: {worst}");
                if causal {
                    // the recurrent form, one position at a time, gives the same rows
                    let mut st = LinearState::new(1, nh, hs);
                    let mut row = vec![0f32; c];
                    let mut worst = 0f32;
                    for r in 0..t {
                        st.step(&mut row, view(0), view(1), view(2), r);
                        let diff =
                            row.iter().zip(&out[r * c..(r + 1) * c]).map(|(a, b)| (a - b).abs() / b.abs().max(1.0));
                        worst = diff.fold(worst, f32::max);
                    }
                    assert!(worst < 1e-5, "scale {scale}: recurrent vs parallel {worst}");
                    assert_eq!(st.bytes(), 4 * (nh * hs * hs + nh * hs), "the state does not grow with t");
                }
            }
        }
    }
}
