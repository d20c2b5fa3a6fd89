//! Multinomial logistic regression with L2 regularisation on standardised features, fitted
//! by L-BFGS (the linear probe of the paper, and its raw-pixel baseline).
//!
//! Objective: mean cross-entropy + (lambda / 2) * ||W||^2 (the bias is not penalised).

use rayon::prelude::*;

use crate::backend::WeightLayout;
use crate::backend::isa::multiversion;
use crate::backend::math;
use crate::backend::matmul::{bias_backward, matmul_backward_weight, matmul_forward};

/// Per-feature mean and standard deviation (from the training features).
#[derive(Clone, Debug)]
pub struct Standardizer {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Standardizer {
    pub fn fit(x: &[f32], d: usize) -> Self {
        let n = (x.len() / d).max(1);
        let mut mean = vec![0f64; d];
        let mut sq = vec![0f64; d];
        for row in x.chunks_exact(d) {
            for j in 0..d {
                mean[j] += row[j] as f64;
                sq[j] += (row[j] as f64).powi(2);
            }
        }
        let mean: Vec<f64> = mean.iter().map(|m| m / n as f64).collect();
        let std =
            sq.iter().zip(&mean).map(|(s, m)| ((s / n as f64 - m * m).max(0.0).sqrt()).max(1e-6) as f32).collect();
        Standardizer { mean: mean.iter().map(|&m| m as f32).collect(), std }
    }

    pub fn apply(&self, x: &mut [f32]) {
        let d = self.mean.len();
        x.par_chunks_mut(d).for_each(|row| {
            for j in 0..d {
                row[j] = (row[j] - self.mean[j]) / self.std[j];
            }
        });
    }
}

/// A fitted classifier: weights (D, K) and bias (K).
#[derive(Clone, Debug)]
pub struct LogReg {
    pub d: usize,
    pub k: usize,
    pub w: Vec<f32>,
    pub b: Vec<f32>,
}

impl LogReg {
    /// Class scores (N, K).
    pub fn logits(&self, x: &[f32]) -> Vec<f32> {
        let n = x.len() / self.d;
        let mut out = vec![0f32; n * self.k];
        matmul_forward(&mut out, x, &self.w, Some(&self.b), (n, self.d, self.k), WeightLayout::InOut, false);
        out
    }

    pub fn predict(&self, x: &[f32]) -> Vec<u16> {
        self.logits(x).chunks_exact(self.k).map(|r| crate::backend::loss::argmax(r) as u16).collect()
    }

    pub fn accuracy(&self, x: &[f32], y: &[u16]) -> f64 {
        let p = self.predict(x);
        p.iter().zip(y).filter(|(a, b)| a == b).count() as f64 / y.len().max(1) as f64
    }
}

/// Rows per task of the softmax pass.
const ROWS: usize = 256;

multiversion! {
/// Softmax cross-entropy of the rows of `logits` (N, K) against `y`, in place: each row
/// becomes dlogits = (softmax - onehot) / N. Returns the summed loss (f64, per-task sums
/// added in task order: deterministic).
fn softmax_rows(logits: &mut [f32], y: &[u16], k: usize) -> f64 {
    let inv_n = 1.0 / y.len() as f32;
    let parts: Vec<f64> = logits
        .par_chunks_mut(ROWS * k)
        .zip(y.par_chunks(ROWS))
        .map(|(rows, ys)| {
            let mut loss = 0f64;
            for (row, &yi) in rows.chunks_exact_mut(k).zip(ys) {
                let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let zy = row[yi as usize] - m;
                let mut sum = 0f32;
                for v in row.iter_mut() {
                    *v = math::exp(*v - m);
                    sum += *v;
                }
                loss += (sum.ln() - zy) as f64;
                let scale = inv_n / sum;
                row.iter_mut().for_each(|v| *v *= scale);
                row[yi as usize] -= inv_n;
            }
            loss
        })
        .collect();
    parts.iter().sum()
}
}

/// Classes of the fused path (K padded to 16 lanes: two AVX2 registers, one AVX-512).
const KP: usize = 16;
/// Rows per task of the fused path.
const FUSED_ROWS: usize = 512;

/// Rows the fused pass takes together: R independent accumulator chains per weight load
/// (one row alone would wait on the FMA latency at every feature).
const R: usize = 4;

multiversion! {
/// The fused pass over one block of rows for K <= 16 classes: per row, logits z = x W + b
/// (W padded to (D, 16)), the softmax cross-entropy against y, dz = (softmax - onehot) / N,
/// and dW += x^T dz, db += dz into the block's partial sums. X is read once per evaluation
/// (the gemm path reads it twice, and 10 output columns use its tiles poorly).
fn fused_block(x: &[f32], y: &[u16], wp: &[f32], bp: &[f32], k: usize, inv_n: f32, gw: &mut [f32], gb: &mut [f32]) -> f64 {
    let d = wp.len() / KP;
    let full = y.len() / R * R;
    let (xa, xb) = x.split_at(full * d);
    // fused multiply-adds where the kernel set has them (the portable version never does:
    // `mul_add` there would be a library call)
    if crate::backend::isa::active() == crate::backend::isa::KernelSet::Portable {
        rows_pass::<R, false>(xa, &y[..full], wp, bp, k, inv_n, gw, gb)
            + rows_pass::<1, false>(xb, &y[full..], wp, bp, k, inv_n, gw, gb)
    } else {
        rows_pass::<R, true>(xa, &y[..full], wp, bp, k, inv_n, gw, gb)
            + rows_pass::<1, true>(xb, &y[full..], wp, bp, k, inv_n, gw, gb)
    }
}
}

/// a * b + c, fused (one rounding) when `FMA`.
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// [`fused_block`] for groups of N rows (inlined into each kernel set's version; `FMA`: fused
/// multiply-adds, for the kernel sets that have them).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rows_pass<const N: usize, const FMA: bool>(
    x: &[f32],
    y: &[u16],
    wp: &[f32],
    bp: &[f32],
    k: usize,
    inv_n: f32,
    gw: &mut [f32],
    gb: &mut [f32],
) -> f64 {
    let d = wp.len() / KP;
    let mut loss = 0f64;
    for (rows, ys) in x.chunks_exact(N * d).zip(y.chunks_exact(N)) {
        let mut z = [[0f32; KP]; N];
        for zr in z.iter_mut() {
            zr.copy_from_slice(&bp[..KP]);
        }
        for (j, wr) in wp.chunks_exact(KP).enumerate() {
            for r in 0..N {
                let xv = rows[r * d + j];
                for c in 0..KP {
                    z[r][c] = madd::<FMA>(xv, wr[c], z[r][c]);
                }
            }
        }
        let mut dz = [[0f32; KP]; N];
        for r in 0..N {
            let (zr, yi) = (&z[r], ys[r] as usize);
            let m = zr[..k].iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
            let mut sum = 0f32;
            for c in 0..k {
                dz[r][c] = math::exp(zr[c] - m);
                sum += dz[r][c];
            }
            loss += (sum.ln() - (zr[yi] - m)) as f64;
            let scale = inv_n / sum;
            for c in 0..k {
                dz[r][c] *= scale;
            }
            dz[r][yi] -= inv_n;
        }
        for (j, gr) in gw.chunks_exact_mut(KP).enumerate() {
            for r in 0..N {
                let xv = rows[r * d + j];
                for c in 0..KP {
                    gr[c] = madd::<FMA>(xv, dz[r][c], gr[c]);
                }
            }
        }
        for dr in &dz {
            for c in 0..KP {
                gb[c] += dr[c];
            }
        }
    }
    loss
}

/// The cross-entropy sum and its gradient (gw (D, K), gb (K)) by the fused pass: blocks of
/// rows in parallel, their partial sums added in block order (deterministic).
fn fused_loss_grad(
    w: &[f32],
    b: &[f32],
    x: &[f32],
    y: &[u16],
    d: usize,
    k: usize,
    gw: &mut [f32],
    gb: &mut [f32],
) -> f64 {
    let mut wp = vec![0f32; d * KP];
    for j in 0..d {
        wp[j * KP..j * KP + k].copy_from_slice(&w[j * k..(j + 1) * k]);
    }
    let mut bp = vec![0f32; KP];
    bp[..k].copy_from_slice(b);
    let inv_n = 1.0 / y.len() as f32;
    let parts: Vec<(f64, Vec<f32>)> = x
        .par_chunks(FUSED_ROWS * d)
        .zip(y.par_chunks(FUSED_ROWS))
        .map(|(xs, ys)| {
            let mut g = vec![0f32; d * KP + KP];
            let (pw, pb) = g.split_at_mut(d * KP);
            let l = fused_block(xs, ys, &wp, &bp, k, inv_n, pw, pb);
            (l, g)
        })
        .collect();
    gw.fill(0.0);
    gb.fill(0.0);
    let mut ce = 0f64;
    for (l, g) in &parts {
        ce += l;
        for j in 0..d {
            gw[j * k..(j + 1) * k].iter_mut().zip(&g[j * KP..j * KP + k]).for_each(|(a, b)| *a += b);
        }
        gb.iter_mut().zip(&g[d * KP..d * KP + k]).for_each(|(a, b)| *a += b);
    }
    ce
}

/// Loss and gradient at theta = [W (D*K), b (K)]. Up to 16 classes: the fused pass. Else:
/// logits = X W + b through the gemm, the softmax rows, then dW = X^T dlogits (the gemm
/// again) and db = the column sums.
fn loss_grad(theta: &[f32], grad: &mut [f32], x: &[f32], y: &[u16], d: usize, k: usize, lambda: f64) -> f64 {
    let n = y.len();
    let (w, b) = theta.split_at(d * k);
    let (gw, gb) = grad.split_at_mut(d * k);
    let ce = if k <= KP {
        fused_loss_grad(w, b, x, y, d, k, gw, gb)
    } else {
        let mut logits = vec![0f32; n * k];
        matmul_forward(&mut logits, x, w, Some(b), (n, d, k), WeightLayout::InOut, false);
        let ce = softmax_rows(&mut logits, y, k);
        gw.fill(0.0);
        gb.fill(0.0);
        matmul_backward_weight(gw, x, &logits, (n, d, k));
        bias_backward(gb, &logits, k);
        ce
    };
    let mut reg = 0f64;
    for (g, &wv) in gw.iter_mut().zip(w) {
        *g += lambda as f32 * wv;
        reg += (wv as f64).powi(2);
    }
    ce / n as f64 + 0.5 * lambda * reg
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// Convergence threshold on the largest component of the gradient of the objective (mean
/// cross-entropy + lambda/2 ||W||^2); scikit-learn's lbfgs stops at 1e-4 on the same function.
pub const GTOL: f32 = 1e-4;

/// Fits by L-BFGS (memory 10, backtracking Armijo line search) from zero weights, until the
/// gradient is below [`GTOL`] or `max_iter` iterations.
///
/// # Shapes
/// x: (N, D) standardised features; y: (N) labels < k.
pub fn fit(x: &[f32], y: &[u16], d: usize, k: usize, lambda: f64, max_iter: usize) -> LogReg {
    fit_from(x, y, d, k, lambda, max_iter, None)
}

/// [`fit`] starting from `init` (a solution for a nearby lambda: the regularisation path).
pub fn fit_from(
    x: &[f32],
    y: &[u16],
    d: usize,
    k: usize,
    lambda: f64,
    max_iter: usize,
    init: Option<&LogReg>,
) -> LogReg {
    let p = d * k + k;
    let mut theta = vec![0f32; p];
    if let Some(m) = init {
        assert_eq!((m.d, m.k), (d, k), "fit_from: the initial model has another shape");
        theta[..d * k].copy_from_slice(&m.w);
        theta[d * k..].copy_from_slice(&m.b);
    }
    let mut g = vec![0f32; p];
    let mut f = loss_grad(&theta, &mut g, x, y, d, k, lambda);
    let (mut s_hist, mut y_hist): (Vec<Vec<f32>>, Vec<Vec<f32>>) = (Vec::new(), Vec::new());
    let mut g_new = vec![0f32; p];
    for _ in 0..max_iter {
        // Two-loop recursion: direction = -H g
        let mut q: Vec<f32> = g.clone();
        let mut alphas = Vec::with_capacity(s_hist.len());
        for (s, yv) in s_hist.iter().zip(&y_hist).rev() {
            let rho = 1.0 / dot(yv, s);
            let a = rho * dot(s, &q);
            q.iter_mut().zip(yv).for_each(|(qi, &yi)| *qi -= (a * yi as f64) as f32);
            alphas.push((a, rho));
        }
        if let (Some(s), Some(yv)) = (s_hist.last(), y_hist.last()) {
            let gamma = dot(s, yv) / dot(yv, yv);
            q.iter_mut().for_each(|v| *v *= gamma as f32);
        }
        for ((s, yv), (a, rho)) in s_hist.iter().zip(&y_hist).zip(alphas.iter().rev()) {
            let bta = rho * dot(yv, &q);
            q.iter_mut().zip(s).for_each(|(qi, &si)| *qi += ((a - bta) * si as f64) as f32);
        }
        let dir: Vec<f32> = q.iter().map(|v| -v).collect();
        let mut gd = dot(&g, &dir);
        let dir = if gd >= 0.0 {
            // not a descent direction: restart with steepest descent
            s_hist.clear();
            y_hist.clear();
            gd = -dot(&g, &g);
            g.iter().map(|v| -v).collect()
        } else {
            dir
        };
        let mut step = if s_hist.is_empty() { 1.0 / dot(&g, &g).sqrt().max(1e-12) } else { 1.0 };
        let mut trial = vec![0f32; p];
        let mut accepted = false;
        for _ in 0..30 {
            trial.iter_mut().zip(&theta).zip(&dir).for_each(|((t, &th), &dv)| *t = th + (step * dv as f64) as f32);
            let f_new = loss_grad(&trial, &mut g_new, x, y, d, k, lambda);
            if f_new <= f + 1e-4 * step * gd {
                let s: Vec<f32> = trial.iter().zip(&theta).map(|(a, b)| a - b).collect();
                let yv: Vec<f32> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
                if dot(&s, &yv) > 1e-10 {
                    s_hist.push(s);
                    y_hist.push(yv);
                    if s_hist.len() > 10 {
                        s_hist.remove(0);
                        y_hist.remove(0);
                    }
                }
                let converged = (f - f_new).abs() <= 1e-9 * f.abs().max(1.0);
                theta.copy_from_slice(&trial);
                g.copy_from_slice(&g_new);
                f = f_new;
                accepted = !converged;
                break;
            }
            step *= 0.5;
        }
        // converged: the largest gradient component below GTOL (scikit-learn's lbfgs test,
        // for the same objective), or no more progress
        if !accepted || g.iter().fold(0f32, |m, v| m.max(v.abs())) <= GTOL {
            break;
        }
    }
    let b = theta.split_off(d * k);
    LogReg { d, k, w: theta, b }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The fused pass (K <= 16) and the gemm path give the same loss and gradient.
    #[test]
    fn fused_and_gemm_paths_agree() {
        let (n, d, k) = (1100, 37, 10);
        let mut rng = Rng::new(9);
        let x: Vec<f32> = (0..n * d).map(|_| rng.normal() as f32).collect();
        let y: Vec<u16> = (0..n).map(|i| (i * 7 % k) as u16).collect();
        let w: Vec<f32> = (0..d * k).map(|_| 0.3 * rng.normal() as f32).collect();
        let b: Vec<f32> = (0..k).map(|_| rng.normal() as f32).collect();
        let (mut gw, mut gb) = (vec![0f32; d * k], vec![0f32; k]);
        let ce = fused_loss_grad(&w, &b, &x, &y, d, k, &mut gw, &mut gb);
        let mut logits = vec![0f32; n * k];
        matmul_forward(&mut logits, &x, &w, Some(&b), (n, d, k), WeightLayout::InOut, false);
        let ce2 = softmax_rows(&mut logits, &y, k);
        let (mut gw2, mut gb2) = (vec![0f32; d * k], vec![0f32; k]);
        matmul_backward_weight(&mut gw2, &x, &logits, (n, d, k));
        bias_backward(&mut gb2, &logits, k);
        assert!((ce - ce2).abs() < 1e-6 * ce.abs(), "{ce} vs {ce2}");
        let worst = gw.iter().chain(&gb).zip(gw2.iter().chain(&gb2)).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-6, "gradients differ by {worst}");
    }

    #[test]
    fn separable_data_is_learned_and_matches_the_known_solution() {
        // Three Gaussian blobs in 2-D: a linear classifier separates them perfectly.
        let mut rng = Rng::new(4);
        let centers = [(-3.0, 0.0), (3.0, 0.0), (0.0, 4.0)];
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for (c, &(cx, cy)) in centers.iter().enumerate() {
            for _ in 0..200 {
                x.push((cx + 0.5 * rng.normal()) as f32);
                x.push((cy + 0.5 * rng.normal()) as f32);
                y.push(c as u16);
            }
        }
        let m = fit(&x, &y, 2, 3, 1e-3, 300);
        assert_eq!(m.accuracy(&x, &y), 1.0);
        // Known solution of a 1-D problem: with labels y = [0, 1] at x = [-1, 1] and
        // lambda = 1, the optimum of mean CE + w^2/2 solves w = tanh(w)... for two classes
        // the softmax weights are +-w/2 each: d/dw [log(1 + e^{-2w'}) + w'^2] = 0 with w' = w1 = -w0.
        let m = fit(&[-1.0, 1.0], &[0, 1], 1, 2, 1.0, 200);
        let wdiff = (m.w[1] - m.w[0]) as f64; // = 2 w'
        // stationarity: 2 e^{-2w'} / (1 + e^{-2w'}) = 2 w'  (from d/dw')
        let wp = wdiff / 2.0;
        let resid = 2.0 * (-2.0 * wp).exp() / (1.0 + (-2.0 * wp).exp()) - 2.0 * wp;
        assert!(resid.abs() < 1e-4, "w' = {wp}, stationarity residual {resid}");
        assert!((m.b[0] - m.b[1]).abs() < 1e-4);
    }
}
