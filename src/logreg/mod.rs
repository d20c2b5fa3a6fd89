//! Multinomial logistic regression with L2 regularisation on standardised features, fitted
//! by L-BFGS (the linear probe of the paper, and its raw-pixel baseline).
//!
//! Objective: mean cross-entropy + (lambda / 2) * ||W||^2 (the bias is not penalised),
//! preconditioned by the features' covariance ([`Covariance`]) where they are correlated.

mod kernel;
mod lbfgs;
mod precond;

use rayon::prelude::*;

pub use lbfgs::Outcome;
pub use precond::{Covariance, Preconditioner};

use crate::backend::WeightLayout;
use crate::backend::matmul::matmul_forward;

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
            for ((x, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *x = (*x - m) / s;
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

/// Convergence threshold on the largest component of the gradient of the objective (mean
/// cross-entropy + lambda/2 ||W||^2, in the standardised coordinates); scikit-learn's lbfgs
/// stops at 1e-4 on the same function.
pub const GTOL: f32 = 1e-4;

/// When a fit stops: the largest gradient component at or below `tol` (scikit-learn's
/// test, its `tol`), or `max_iter` L-BFGS steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stop {
    pub max_iter: usize,
    pub tol: f32,
}

impl Default for Stop {
    fn default() -> Self {
        Stop { max_iter: 300, tol: GTOL }
    }
}

/// A fit: the classifier and how its minimisation ended.
#[derive(Clone, Debug)]
pub struct Fit {
    pub model: LogReg,
    pub outcome: Outcome,
}

/// The objective at theta = [W (D*K), b (K)] on features x, its gradient into grad: the
/// mean cross-entropy plus lambda/2 ||W||^2.
fn objective(theta: &[f32], grad: &mut [f32], x: &[f32], y: &[u16], (d, k): (usize, usize), lambda: f64) -> f64 {
    let (w, b) = theta.split_at(d * k);
    let (gw, gb) = grad.split_at_mut(d * k);
    let ce = kernel::data_loss_grad(w, b, x, y, d, k, gw, gb);
    gw.iter_mut().zip(w).for_each(|(g, &wv)| *g += lambda as f32 * wv);
    let reg: f64 = w.iter().map(|&wv| (wv as f64).powi(2)).sum();
    ce / y.len() as f64 + 0.5 * lambda * reg
}

/// Fits by L-BFGS from zero weights, until the gradient is below [`GTOL`] or `max_iter`
/// iterations.
///
/// # Shapes
/// x: (N, D) standardised features; y: (N) labels < k.
pub fn fit(x: &[f32], y: &[u16], d: usize, k: usize, lambda: f64, max_iter: usize) -> LogReg {
    fit_from(x, y, (d, k), lambda, Stop { max_iter, tol: GTOL }, None, None).model
}

/// [`fit`] until `stop`, starting from `init` (a solution for a nearby lambda: the
/// regularisation path), with the features' covariance as preconditioner when given
/// (`Covariance::of(x)`: the same optimum in far fewer steps on correlated features).
pub fn fit_from(
    x: &[f32],
    y: &[u16],
    (d, k): (usize, usize),
    lambda: f64,
    stop: Stop,
    init: Option<&LogReg>,
    cov: Option<&Covariance<'_>>,
) -> Fit {
    let mut theta = vec![0f32; d * k + k];
    if let Some(m) = init {
        assert_eq!((m.d, m.k), (d, k), "fit_from: the initial model has another shape");
        theta[..d * k].copy_from_slice(&m.w);
        theta[d * k..].copy_from_slice(&m.b);
    }
    let eval = |th: &[f32], g: &mut [f32]| objective(th, g, x, y, (d, k), lambda);
    // scikit-learn's test: the largest gradient component
    let done = |g: &[f32]| g.iter().fold(0f32, |m, v| m.max(v.abs())) <= stop.tol;
    let outcome = match cov.map(|c| c.preconditioner(lambda, k)) {
        Some(h0) => lbfgs::minimize(&mut theta, stop.max_iter, eval, done, |q| h0.apply(q, k), false),
        None => lbfgs::minimize(&mut theta, stop.max_iter, eval, done, |_| {}, true),
    };
    let b = theta.split_off(d * k);
    Fit { model: LogReg { d, k, w: theta, b }, outcome }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

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

    /// Strongly correlated features (a shared factor): with the covariance as
    /// preconditioner the fit reaches the plain fit's optimum (same objective value and
    /// weights, to the tolerance) in a fraction of its steps; with more features than rows
    /// too (the dual form).
    #[test]
    fn the_preconditioned_fit_reaches_the_same_optimum_sooner() {
        for (n, d, lambda, dual) in [(3000, 24, 1e-4, false), (150, 300, 1e-3, true)] {
            let k = 3;
            let mut rng = Rng::new(8);
            let (mut x, mut y) = (Vec::with_capacity(n * d), Vec::with_capacity(n));
            for i in 0..n {
                let c = i % k;
                let common = rng.normal();
                for j in 0..d {
                    let signal = if j % k == c { 0.3 } else { 0.0 };
                    x.push((common * (1.0 + j as f64 / 4.0) + signal + 0.2 * rng.normal()) as f32);
                }
                y.push(c as u16);
            }
            let st = Standardizer::fit(&x, d);
            st.apply(&mut x);
            let stop = Stop { max_iter: 5000, tol: 1e-6 };
            let cov = Covariance::of(&x, d);
            assert_eq!(cov.is_dual(), dual);
            let plain = fit_from(&x, &y, (d, k), lambda, stop, None, None);
            let pre = fit_from(&x, &y, (d, k), lambda, stop, None, Some(&cov));
            let (po, qo) = (plain.outcome, pre.outcome);
            assert!(po.converged && qo.converged, "d {d}: {po:?} {qo:?}");
            assert!(qo.iterations * 5 < po.iterations, "d {d}: {qo:?} vs {po:?}");
            let value = |m: &LogReg| {
                let mut theta = m.w.clone();
                theta.extend_from_slice(&m.b);
                objective(&theta, &mut vec![0f32; theta.len()], &x, &y, (d, k), lambda)
            };
            let (fp, fq) = (value(&plain.model), value(&pre.model));
            // as good as the plain fit's (d 24: 1e-7 apart; d 300: 1.4e-6 lower, 18 steps to 157)
            assert!(fq <= fp + 1e-7 && fp - fq < 1e-5, "d {d}: objective {fp} (plain) vs {fq} (preconditioned)");
            let worst = plain.model.w.iter().zip(&pre.model.w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 0.05, "d {d}: weights differ by {worst}");
        }
    }
}
