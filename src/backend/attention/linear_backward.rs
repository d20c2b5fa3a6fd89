//! Backward of linear attention ([`super::linear`]), chunk by chunk in matrix form.
//!
//! Per chunk (rows p, s of the chunk; S_c, z_c the state before it), with
//! D = A 1 + phi(Q) z_c + eps and Y = N / D:
//!
//! ```text
//! dN = dY / D,   dD_p = -(dY_p . Y_p) / D_p,   dA = tril(dN V^T + dD 1^T),
//! dphi(Q) = dA phi(K) + dN S_c^T + dD z_c^T,
//! dphi(K) = dA^T phi(Q) + V R_c^T + 1 r_c^T,   dV = A^T dN + phi(K) R_c,
//! ```
//!
//! where R_c = sum over later chunks of phi(Q)^T dN and r_c = sum of phi(Q)^T dD carry the
//! gradient of the states back (a reverse sweep). BERT: no masked part, S and z of the whole
//! sequence for every query, R and r summed over every chunk. The forward's states are
//! recomputed, one per chunk; then dq = dphi(Q) phi'(q), dk likewise.

use rayon::prelude::*;

use super::kernels::{accumulate_pv_any, scores_cols};
use super::linear::{CHUNK, Head, add_to_state, chunk_scores, denominators, dphi_of, is_causal, transpose};
use super::view::{AttnDims, SendPtr, SeqView};
use crate::backend::isa::multiversion;

/// The gradients of one head: dphi(q), dphi(k), dv as (Tp, hs) each.
struct Grads {
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

/// Per-chunk scratch of the backward: transposes and the (C, C) products.
struct Scratch {
    kt: Vec<f32>,
    vt: Vec<f32>,
    qt: Vec<f32>,
    a: Vec<f32>,
    at: Vec<f32>,
    da: Vec<f32>,
    dat: Vec<f32>,
    dn: Vec<f32>,
    dd: Vec<f32>,
    den: Vec<f32>,
}

impl Scratch {
    #[inline(always)]
    fn new(hs: usize) -> Self {
        let (m, cc) = (hs * CHUNK, CHUNK * CHUNK);
        let v = |n: usize| vec![0f32; n];
        Scratch {
            kt: v(m),
            vt: v(m),
            qt: v(m),
            a: v(cc),
            at: v(cc),
            da: v(cc),
            dat: v(cc),
            dn: v(m),
            dd: v(CHUNK),
            den: v(CHUNK),
        }
    }
}

/// The states (S, z) before each chunk (causal), or the whole sequence's in every slot (BERT).
#[inline(always)]
fn states(h: &Head, causal: bool) -> (Vec<f32>, Vec<f32>) {
    let (hs, nc) = (h.hs, h.chunks());
    let (mut s, mut z) = (vec![0f32; hs * hs], vec![0f32; hs]);
    let (mut all_s, mut all_z) = (Vec::with_capacity(nc * hs * hs), Vec::with_capacity(nc * hs));
    let mut kt = vec![0f32; hs * CHUNK];
    for c in 0..nc {
        if causal {
            all_s.extend_from_slice(&s);
            all_z.extend_from_slice(&z);
        }
        transpose(&mut kt, h.rows(&h.fk, c), CHUNK, hs);
        add_to_state(&mut s, &mut z, &kt, h.rows(&h.v, c), hs);
    }
    if !causal {
        for _ in 0..nc {
            all_s.extend_from_slice(&s);
            all_z.extend_from_slice(&z);
        }
    }
    (all_s, all_z)
}

/// dN and dD of chunk c (into x.dn, x.dd) from its output y and gradient gy (C, hs).
#[inline(always)]
fn output_grads(x: &mut Scratch, gy: &[f32], y: &[f32], hs: usize) {
    for p in 0..CHUNK {
        let (g, yp) = (&gy[p * hs..(p + 1) * hs], &y[p * hs..(p + 1) * hs]);
        let inv = 1.0 / x.den[p];
        x.dd[p] = -g.iter().zip(yp).map(|(a, b)| a * b).sum::<f32>() * inv;
        x.dn[p * hs..(p + 1) * hs].iter_mut().zip(g).for_each(|(d, &gv)| *d = gv * inv);
    }
}

/// The gradients of one head from its outputs y and their gradients gy (Tp, hs).
#[inline(always)]
fn head_backward(h: &Head, y: &[f32], gy: &[f32], causal: bool) -> Grads {
    let (hs, nc) = (h.hs, h.chunks());
    let (all_s, all_z) = states(h, causal);
    let n = h.fq.len();
    let mut g = Grads { dq: vec![0f32; n], dk: vec![0f32; n], dv: vec![0f32; n] };
    let mut x = Scratch::new(hs);
    let (mut st, mut rt) = (vec![0f32; hs * hs], vec![0f32; hs * hs]);
    // BERT: one forward pass gives dN, dD and dphi(Q) of every chunk against the whole
    // sequence's state, and sums R and r, which every chunk's dphi(K) and dV then use
    let (mut r_mat, mut r_vec) = (vec![0f32; hs * hs], vec![0f32; hs]);
    if !causal {
        for c in 0..nc {
            let z = &all_z[c * hs..(c + 1) * hs];
            chunk_dn(&mut x, h, c, z, y, gy, false);
            let dq = &mut g.dq[c * CHUNK * hs..(c + 1) * CHUNK * hs];
            state_dq(dq, &x, &all_s[c * hs * hs..(c + 1) * hs * hs], z, &mut st);
            add_reverse(&mut r_mat, &mut r_vec, &mut x, h.rows(&h.fq, c), hs);
        }
    }
    for c in (0..nc).rev() {
        let (s, z) = (&all_s[c * hs * hs..(c + 1) * hs * hs], &all_z[c * hs..(c + 1) * hs]);
        let (fq, fk, v) = (h.rows(&h.fq, c), h.rows(&h.fk, c), h.rows(&h.v, c));
        let span = c * CHUNK * hs..(c + 1) * CHUNK * hs;
        let (dq, dk, dv) = (&mut g.dq[span.clone()], &mut g.dk[span.clone()], &mut g.dv[span]);
        if causal {
            chunk_dn(&mut x, h, c, z, y, gy, true);
            state_dq(dq, &x, s, z, &mut st);
        }
        // dphi(K) = V R^T + r (+ dA^T phi(Q)); dV = phi(K) R (+ A^T dN)
        transpose(&mut rt, &r_mat, hs, hs);
        accumulate_pv_any(dk, v, hs, &rt, CHUNK, hs, hs);
        dk.chunks_mut(hs).for_each(|row| row.iter_mut().zip(&r_vec).for_each(|(o, &r)| *o += r));
        accumulate_pv_any(dv, fk, hs, &r_mat, CHUNK, hs, hs);
        if causal {
            within_chunk(&mut x, fq, fk, v, (dq, dk, dv), hs);
            add_reverse(&mut r_mat, &mut r_vec, &mut x, fq, hs);
        }
    }
    for (d, &f) in g.dq.iter_mut().zip(&h.fq) {
        *d *= dphi_of(f);
    }
    for (d, &f) in g.dk.iter_mut().zip(&h.fk) {
        *d *= dphi_of(f);
    }
    g
}

/// dphi(Q) of a chunk through the state before it: dq = dN S^T + dD z^T (x.dn, x.dd set;
/// st is scratch for S^T).
#[inline(always)]
fn state_dq(dq: &mut [f32], x: &Scratch, s: &[f32], z: &[f32], st: &mut [f32]) {
    let hs = z.len();
    transpose(st, s, hs, hs);
    accumulate_pv_any(dq, &x.dn, hs, st, CHUNK, hs, hs);
    for (row, &dd) in dq.chunks_mut(hs).zip(&x.dd) {
        row.iter_mut().zip(z).for_each(|(o, &zi)| *o = dd.mul_add(zi, *o));
    }
}

/// Recomputes chunk c's denominators (and, causal, A into x.a) and sets dN, dD.
#[inline(always)]
fn chunk_dn(x: &mut Scratch, h: &Head, c: usize, z: &[f32], y: &[f32], gy: &[f32], causal: bool) {
    let hs = h.hs;
    let fq = h.rows(&h.fq, c);
    if causal {
        transpose(&mut x.kt, h.rows(&h.fk, c), CHUNK, hs);
        chunk_scores(&mut x.a, fq, &x.kt, hs);
    }
    let mut den = std::mem::take(&mut x.den);
    denominators(&mut den, if causal { &x.a } else { &[] }, fq, z);
    x.den = den;
    output_grads(x, h.rows(gy, c), h.rows(y, c), hs);
}

/// R += phi(Q_c)^T dN, r += phi(Q_c)^T dD.
#[inline(always)]
fn add_reverse(r_mat: &mut [f32], r_vec: &mut [f32], x: &mut Scratch, fq: &[f32], hs: usize) {
    transpose(&mut x.qt, fq, CHUNK, hs);
    accumulate_pv_any(r_mat, &x.qt, CHUNK, &x.dn, hs, CHUNK, hs);
    for (i, r) in r_vec.iter_mut().enumerate() {
        *r += x.qt[i * CHUNK..(i + 1) * CHUNK].iter().zip(&x.dd).map(|(a, b)| a * b).sum::<f32>();
    }
}

/// The masked part of a causal chunk (x.a = A, x.dn, x.dd set): dA = tril(dN V^T + dD 1^T),
/// dphi(Q) += dA phi(K), dphi(K) += dA^T phi(Q), dV += A^T dN.
#[inline(always)]
fn within_chunk(
    x: &mut Scratch,
    fq: &[f32],
    fk: &[f32],
    v: &[f32],
    (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
    hs: usize,
) {
    transpose(&mut x.vt, v, CHUNK, hs);
    scores_cols(&mut x.da, CHUNK, &x.dn, &x.vt, CHUNK, CHUNK, hs, CHUNK);
    for p in 0..CHUNK {
        let row = &mut x.da[p * CHUNK..(p + 1) * CHUNK];
        row[..=p].iter_mut().for_each(|e| *e += x.dd[p]);
        row[p + 1..].fill(0.0);
    }
    accumulate_pv_any(dq, &x.da, CHUNK, fk, CHUNK, CHUNK, hs);
    transpose(&mut x.dat, &x.da, CHUNK, CHUNK);
    accumulate_pv_any(dk, &x.dat, CHUNK, fq, CHUNK, CHUNK, hs);
    transpose(&mut x.at, &x.a, CHUNK, CHUNK);
    accumulate_pv_any(dv, &x.at, CHUNK, &x.dn, CHUNK, CHUNK, hs);
}

multiversion! {
/// Backward of [`super::linear::linear_forward`] from dout (and its output `out`), written
/// into dqkv (B, T, 3C) in the [q | k | v] layout.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(dqkv: &mut [f32], dout: &[f32], out: &[f32], q: SeqView, k: SeqView, v: SeqView, d: AttnDims) {
    let (t, nh, hs) = (d.t, d.nh, d.hs);
    let c = nh * hs;
    assert!(d.tk == t && dqkv.len() >= d.b * t * 3 * c && dout.len() >= d.b * t * c && out.len() >= d.b * t * c);
    let causal = is_causal(d.mask);
    let dst = SendPtr(dqkv.as_mut_ptr());
    let dst = &dst;
    (0..d.b * nh).into_par_iter().for_each(|bh| {
        let (b, h) = (bh / nh, bh % nh);
        let col = h * hs;
        let head = Head::gather(q, k, v, b, col, t, hs);
        // this head's outputs and their gradients, (Tp, hs), padding rows zero
        let mine = |x: &[f32]| -> Vec<f32> {
            let mut o = vec![0f32; head.fq.len()];
            (0..t).for_each(|r| o[r * hs..(r + 1) * hs].copy_from_slice(&x[(b * t + r) * c + col..][..hs]));
            o
        };
        let g = head_backward(&head, &mine(out), &mine(dout), causal);
        // SAFETY: task (b, h) owns columns col..col+hs of the q, k and v parts of rows b*t..(b+1)*t.
        unsafe {
            for r in 0..t {
                let base = dst.0.add((b * t + r) * 3 * c + col);
                std::ptr::copy_nonoverlapping(g.dq[r * hs..].as_ptr(), base, hs);
                std::ptr::copy_nonoverlapping(g.dk[r * hs..].as_ptr(), base.add(c), hs);
                std::ptr::copy_nonoverlapping(g.dv[r * hs..].as_ptr(), base.add(2 * c), hs);
            }
        }
    });
}
}

#[cfg(test)]
mod tests {
    use super::super::linear::tests::{inputs, naive};
    use super::super::mask::Mask;
    use super::super::view::Form;
    use super::*;

    /// The gradients of L = sum(out * g) against central differences of the float64 formula,
    /// causal and BERT, over three chunks (a ragged last one), with ordinary and large inputs.
    #[test]
    fn gradients_match_float64_differences() {
        let (t, nh, hs) = (140, 1, 4);
        let c = nh * hs;
        for scale in [1.0f32, 30.0] {
            let qkv = inputs(t * 3 * c, scale, 4);
            let gout = inputs(t * c, 1.0, 5);
            let view = |p: usize| SeqView { data: &qkv, offset: p * c, batch_stride: t * 3 * c, row_stride: 3 * c };
            for causal in [true, false] {
                let mask = if causal { Mask::Causal } else { Mask::Full };
                let d = AttnDims { b: 1, t, tk: t, nh, hs, mask, form: Form::Linear, scale: 1.0, dropout: None };
                let mut out = vec![0f32; t * c];
                super::super::linear::linear_forward(&mut out, view(0), view(1), view(2), d);
                let mut dqkv = vec![0f32; t * 3 * c];
                linear_backward(&mut dqkv, &gout, &out, view(0), view(1), view(2), d);
                let loss = |x: &[f64]| -> f64 {
                    naive(x, t, nh, hs, causal).iter().zip(&gout).map(|(o, &g)| o * g as f64).sum()
                };
                let mut x: Vec<f64> = qkv.iter().map(|&e| e as f64).collect();
                let mut worst = 0f64;
                // every 5th input (5 is prime to the 12 columns of a row: all of q, k, v)
                for i in (0..x.len()).step_by(5) {
                    let (x0, eps) = (x[i], 1e-5 * (x[i].abs() + 1.0));
                    x[i] = x0 + eps;
                    let up = loss(&x);
                    x[i] = x0 - eps;
                    let down = loss(&x);
                    x[i] = x0;
                    let want = (up - down) / (2.0 * eps);
                    worst = worst.max((dqkv[i] as f64 - want).abs() / want.abs().max(1.0));
                }
                assert!(worst < 1e-3, "scale {scale} causal {causal}: {worst}");
            }
        }
    }
}
