//! Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs"; architectures.md):
//! with phi(x) = elu(x) + 1 on q and k (no 1/sqrt(hs) scaling),
//!     y_p = (sum_{s visible} (phi(q_p) . phi(k_s)) v_s) / (sum_{s visible} phi(q_p) . phi(k_s) + 1e-6),
//! visible = s <= p (GPT) or every s (BERT). Causal, it is a running sum: the state
//! S = sum phi(k_s) v_s^T (hs x hs) and z = sum phi(k_s) (hs) carry everything a later query
//! needs, so a decoding step costs the same at every position.
//!
//! The full-sequence pass works in chunks of C positions: within a chunk the masked (C x C)
//! product, across chunks the carried (S, z); never a state per position. The backward
//! ([`linear_backward`]) runs two sweeps of running sums. Both are plain loops for now.

use rayon::prelude::*;

use super::mask::Mask;
#[cfg(test)]
use super::view::Form;
use super::view::{AttnDims, SendPtr, SeqView};
use crate::backend::isa::multiversion;

/// The denominator's guard (architectures.md).
pub const EPS: f32 = 1e-6;
/// Positions per chunk of the full-sequence pass.
pub const CHUNK: usize = 64;

/// phi(x) = elu(x) + 1: x + 1 for x > 0, exp(x) below (always > 0).
#[inline(always)]
pub fn phi(x: f32) -> f32 {
    if x > 0.0 { x + 1.0 } else { x.exp() }
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
    let causal = match d.mask {
        Mask::Causal => true,
        Mask::Full => false,
        m => panic!("linear attention takes a causal or full mask, not {m:?}"),
    };
    let dst = SendPtr(out.as_mut_ptr());
    let dst = &dst;
    (0..d.b * nh).into_par_iter().for_each(|bh| {
        let (b, h) = (bh / nh, bh % nh);
        let col = h * hs;
        // phi(q), phi(k), v of this head: (T, hs) each
        let rows = |x: SeqView, f: fn(f32) -> f32| -> Vec<f32> {
            (0..t).flat_map(|r| x.row(b, r, col, hs).iter().map(move |&e| f(e))).collect()
        };
        let (fq, fk, vv) = (rows(q, phi), rows(k, phi), rows(v, |e| e));
        let mut y = vec![0f32; t * hs];
        if causal {
            causal_chunks(&mut y, &fq, &fk, &vv, t, hs);
        } else {
            let (s, z) = state_of(&fk, &vv, 0, t, hs);
            for r in 0..t {
                read_state(&mut y[r * hs..(r + 1) * hs], &fq[r * hs..(r + 1) * hs], &s, &z);
            }
        }
        // SAFETY: task (b, h) owns columns col..col+hs of rows b*t..(b+1)*t of `out`.
        unsafe {
            for r in 0..t {
                let o = dst.0.add((b * t + r) * c + col);
                std::ptr::copy_nonoverlapping(y[r * hs..].as_ptr(), o, hs);
            }
        }
    });
}
}

#[inline(always)]
fn axpy_rows(num: &mut [f32], x: &[f32], m: &[f32]) {
    // num[j] = sum_i x[i] m[i, j], accumulated over i in order from zero
    let hs = num.len();
    num.fill(0.0);
    for (i, &xi) in x.iter().enumerate() {
        num.iter_mut().zip(&m[i * hs..(i + 1) * hs]).for_each(|(n, &v)| *n += xi * v);
    }
}

/// The causal pass of one head, chunk by chunk: y_p = (phi(q_p) S_prev + sum_{chunk s <= p}
/// a_ps v_s) / (phi(q_p) . z_prev + sum_{chunk s <= p} a_ps + eps), a_ps = phi(q_p) . phi(k_s).
#[inline(always)]
fn causal_chunks(y: &mut [f32], fq: &[f32], fk: &[f32], v: &[f32], t: usize, hs: usize) {
    let mut s = vec![0f32; hs * hs];
    let mut z = vec![0f32; hs];
    let mut num = vec![0f32; hs];
    for lo in (0..t).step_by(CHUNK) {
        let hi = (lo + CHUNK).min(t);
        for p in lo..hi {
            let qp = &fq[p * hs..(p + 1) * hs];
            // the carried state: phi(q_p) S and phi(q_p) . z
            axpy_rows(&mut num, qp, &s);
            let mut den: f32 = qp.iter().zip(&z).map(|(a, b)| a * b).sum();
            // within the chunk: the masked products
            for sidx in lo..=p {
                let a: f32 = qp.iter().zip(&fk[sidx * hs..(sidx + 1) * hs]).map(|(x, y)| x * y).sum();
                den += a;
                num.iter_mut().zip(&v[sidx * hs..(sidx + 1) * hs]).for_each(|(n, &vv)| *n += a * vv);
            }
            let inv = 1.0 / (den + EPS);
            y[p * hs..(p + 1) * hs].iter_mut().zip(&num).for_each(|(o, &n)| *o = n * inv);
        }
        // carry the chunk into the state
        let (ds, dz) = state_of(fk, v, lo, hi, hs);
        s.iter_mut().zip(&ds).for_each(|(a, b)| *a += b);
        z.iter_mut().zip(&dz).for_each(|(a, b)| *a += b);
    }
}

/// (S, z) = (sum phi(k_s) v_s^T, sum phi(k_s)) over s in lo..hi.
#[inline(always)]
fn state_of(fk: &[f32], v: &[f32], lo: usize, hi: usize, hs: usize) -> (Vec<f32>, Vec<f32>) {
    let (mut s, mut z) = (vec![0f32; hs * hs], vec![0f32; hs]);
    for r in lo..hi {
        let (kr, vr) = (&fk[r * hs..(r + 1) * hs], &v[r * hs..(r + 1) * hs]);
        for i in 0..hs {
            z[i] += kr[i];
            s[i * hs..(i + 1) * hs].iter_mut().zip(vr).for_each(|(a, &b)| *a += kr[i] * b);
        }
    }
    (s, z)
}

/// y = phi(q) S / (phi(q) . z + eps) for one query (already mapped by phi).
#[inline(always)]
fn read_state(y: &mut [f32], fq: &[f32], s: &[f32], z: &[f32]) {
    let hs = fq.len();
    let den: f32 = fq.iter().zip(z).map(|(a, b)| a * b).sum::<f32>() + EPS;
    axpy_rows(y, fq, &s[..hs * hs]);
    y.iter_mut().for_each(|o| *o /= den);
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

/// The decoding state of linear attention for B sequences and nh heads: S (hs x hs) and z
/// (hs) per (batch row, head), whatever the position.
#[derive(Clone, Debug)]
pub struct LinearState {
    nh: usize,
    hs: usize,
    s: Vec<f32>,
    z: Vec<f32>,
}

impl LinearState {
    pub fn new(b: usize, nh: usize, hs: usize) -> Self {
        LinearState { nh, hs, s: vec![0.0; b * nh * hs * hs], z: vec![0.0; b * nh * hs] }
    }

    pub fn bytes(&self) -> usize {
        4 * (self.s.len() + self.z.len())
    }

    /// Adds the keys and values of row r of (B, t, nh*hs) views, then writes the attention of
    /// that row's queries into out (B, nh*hs): one step of the recurrent form.
    pub fn step(&mut self, out: &mut [f32], q: SeqView, k: SeqView, v: SeqView, r: usize) {
        let (nh, hs) = (self.nh, self.hs);
        let b = self.z.len() / (nh * hs);
        self.s
            .par_chunks_mut(hs * hs)
            .zip(self.z.par_chunks_mut(hs))
            .zip(out[..b * nh * hs].par_chunks_mut(hs))
            .enumerate()
            .for_each(|(bh, ((s, z), o))| {
                let (bi, h) = (bh / nh, bh % nh);
                let kr: Vec<f32> = k.row(bi, r, h * hs, hs).iter().map(|&x| phi(x)).collect();
                let vr = v.row(bi, r, h * hs, hs);
                for i in 0..hs {
                    z[i] += kr[i];
                    s[i * hs..(i + 1) * hs].iter_mut().zip(vr).for_each(|(a, &b)| *a += kr[i] * b);
                }
                let fq: Vec<f32> = q.row(bi, r, h * hs, hs).iter().map(|&x| phi(x)).collect();
                read_state(o, &fq, s, z);
            });
    }

    /// Forgets every position.
    pub fn reset(&mut self) {
        self.s.fill(0.0);
        self.z.fill(0.0);
    }
}

/// phi'(x): 1 for x > 0, exp(x) below.
#[inline(always)]
fn dphi(x: f32) -> f32 {
    if x > 0.0 { 1.0 } else { x.exp() }
}

multiversion! {
/// Backward of [`linear_forward`] from dout, written into dqkv (B, T, 3C) in the [q | k | v]
/// layout. With n_p = phi(q_p) S_p, d_p = phi(q_p) . z_p + eps, y_p = n_p / d_p:
/// dn_p = dy_p / d_p, dd_p = -(dy_p . y_p) / d_p; dphi(q_p) = S_p dn_p + z_p dd_p; and with the
/// reverse sums R_s = sum_{p >= s} phi(q_p) dn_p^T, r_s = sum_{p >= s} dd_p phi(q_p):
/// dphi(k_s) = R_s v_s + r_s, dv_s = R_s^T phi(k_s) (BERT: every sum over all positions).
/// Two running sweeps per head, O(T hs^2), no state kept per position.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(dqkv: &mut [f32], dout: &[f32], out: &[f32], q: SeqView, k: SeqView, v: SeqView, d: AttnDims) {
    let (t, nh, hs) = (d.t, d.nh, d.hs);
    let c = nh * hs;
    assert!(d.tk == t && dqkv.len() >= d.b * t * 3 * c && dout.len() >= d.b * t * c);
    let causal = d.mask.is_causal();
    let dst = SendPtr(dqkv.as_mut_ptr());
    let dst = &dst;
    (0..d.b * nh).into_par_iter().for_each(|bh| {
        let (b, h) = (bh / nh, bh % nh);
        let col = h * hs;
        let raw = |x: SeqView| -> Vec<f32> { (0..t).flat_map(|r| x.row(b, r, col, hs).to_vec()).collect() };
        let (rq, rk, vv) = (raw(q), raw(k), raw(v));
        let (fq, fk): (Vec<f32>, Vec<f32>) =
            (rq.iter().map(|&x| phi(x)).collect(), rk.iter().map(|&x| phi(x)).collect());
        let row = |x: &[f32], r: usize| x[r * hs..(r + 1) * hs].to_vec();
        let gy: Vec<f32> = (0..t).flat_map(|r| dout[(b * t + r) * c + col..][..hs].to_vec()).collect();
        let yo: Vec<f32> = (0..t).flat_map(|r| out[(b * t + r) * c + col..][..hs].to_vec()).collect();
        // forward sweep: S_p, z_p (all of them for BERT), dn_p, dd_p and dphi(q_p)
        let (mut s, mut z) = if causal { (vec![0f32; hs * hs], vec![0f32; hs]) } else { state_of(&fk, &vv, 0, t, hs) };
        let (mut dn, mut dd, mut dq) = (vec![0f32; t * hs], vec![0f32; t], vec![0f32; t * hs]);
        for p in 0..t {
            if causal {
                let (kr, vr) = (row(&fk, p), row(&vv, p));
                for i in 0..hs {
                    z[i] += kr[i];
                    s[i * hs..(i + 1) * hs].iter_mut().zip(&vr).for_each(|(a, &b)| *a += kr[i] * b);
                }
            }
            let qp = &fq[p * hs..(p + 1) * hs];
            let den: f32 = qp.iter().zip(&z).map(|(a, b)| a * b).sum::<f32>() + EPS;
            let g = &gy[p * hs..(p + 1) * hs];
            dd[p] = -g.iter().zip(&yo[p * hs..(p + 1) * hs]).map(|(a, b)| a * b).sum::<f32>() / den;
            for j in 0..hs {
                dn[p * hs + j] = g[j] / den;
            }
            for i in 0..hs {
                let sd: f32 = (0..hs).map(|j| s[i * hs + j] * dn[p * hs + j]).sum();
                dq[p * hs + i] = (sd + z[i] * dd[p]) * dphi(rq[p * hs + i]);
            }
        }
        // reverse sweep: R_s, r_s (all positions for BERT), dphi(k_s), dv_s
        let (mut rr, mut rv) = (vec![0f32; hs * hs], vec![0f32; hs]);
        let add = |rr: &mut [f32], rv: &mut [f32], p: usize| {
            for i in 0..hs {
                rv[i] += dd[p] * fq[p * hs + i];
                rr[i * hs..(i + 1) * hs]
                    .iter_mut()
                    .zip(&dn[p * hs..(p + 1) * hs])
                    .for_each(|(a, &b)| *a += fq[p * hs + i] * b);
            }
        };
        if !causal {
            (0..t).for_each(|p| add(&mut rr, &mut rv, p));
        }
        let (mut dk, mut dv) = (vec![0f32; t * hs], vec![0f32; t * hs]);
        for s_ in (0..t).rev() {
            if causal {
                add(&mut rr, &mut rv, s_);
            }
            for i in 0..hs {
                let rvs: f32 = (0..hs).map(|j| rr[i * hs + j] * vv[s_ * hs + j]).sum();
                dk[s_ * hs + i] = (rvs + rv[i]) * dphi(rk[s_ * hs + i]);
            }
            axpy_rows(&mut dv[s_ * hs..(s_ + 1) * hs], &fk[s_ * hs..(s_ + 1) * hs], &rr);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Float64 reference of the formula, pair by pair.
    fn naive(qkv: &[f32], t: usize, nh: usize, hs: usize, causal: bool) -> Vec<f64> {
        let c = nh * hs;
        let at = |r: usize, part: usize, h: usize, x: usize| qkv[r * 3 * c + part * c + h * hs + x] as f64;
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

    /// The chunked parallel form and the recurrent decoding form against float64, causal
    /// (300 slots: several chunks, a ragged last one) and BERT, with ordinary inputs and with
    /// large ones (|x| up to 30: phi(k) up to 31, denominators in the tens of thousands).
    #[test]
    fn chunked_and_recurrent_forms_match_float64() {
        let (t, nh, hs) = (300, 2, 8);
        let c = nh * hs;
        for scale in [1.0f32, 30.0] {
            let mut rng = crate::rng::Rng::new(9);
            let qkv: Vec<f32> =
                (0..t * 3 * c).map(|_| ((rng.uniform() * 2.0 - 1.0) as f32 * scale).clamp(-30.0, 30.0)).collect();
            let view = |p: usize| SeqView { data: &qkv, offset: p * c, batch_stride: t * 3 * c, row_stride: 3 * c };
            for causal in [true, false] {
                let mask = if causal { Mask::Causal } else { Mask::Full };
                let d = AttnDims { b: 1, t, tk: t, nh, hs, mask, form: Form::Softmax, scale: 1.0 };
                let mut out = vec![0f32; t * c];
                linear_forward(&mut out, view(0), view(1), view(2), d);
                let want = naive(&qkv, t, nh, hs, causal);
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
