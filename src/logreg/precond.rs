//! The preconditioner of the probe's fits.
//!
//! Hidden states are strongly correlated, so on standardised features X the objective's
//! Hessian is badly conditioned and plain L-BFGS needs thousands of steps at weak
//! regularisation. For the weights W (D, K) the Hessian of mean cross-entropy +
//! lambda/2 ||W||^2 is about (S ⊗ C) + lambda I, with C = X^T X / N the feature covariance and
//! S = diag(p) - p p^T the softmax's curvature (eigenvalues 1/K at the start, p = 1/K).
//! Taking S ≈ c I with c = 1/K:
//!
//!   H ≈ c (C + mu I) ⊗ I_K,   mu = lambda / c
//!
//! so L-BFGS starts each step from H0 = (C + mu I)^{-1} / c per class column, applied by two
//! triangular solves with the Cholesky factor of C + mu I (one factorisation per lambda),
//! and the bias (a constant feature, variance 1, not penalised) from 1 / c. The objective
//! and its optimum are unchanged: only the directions L-BFGS tries are.

use crate::backend::matmul::{WeightLayout, matmul_backward_weight, matmul_forward};

/// Added to the covariance's diagonal, relative to its mean (1 for standardised features),
/// on top of mu: keeps the factor finite for constant or duplicated features.
const RIDGE: f64 = 1e-6;

/// The features' second moments, as the preconditioner needs them, of standardised
/// features X (N, D): the covariance C = X^T X / N (D, D) when D <= N; for wider features
/// (raw pixels: 12,288 at 64x64 against a few thousand images) the Gram matrix X X^T (N, N)
/// and X itself (borrowed), so that nothing of D x D is formed or factored.
#[derive(Clone, Debug)]
pub struct Covariance<'a> {
    d: usize,
    form: Moments<'a>,
}

#[derive(Clone, Debug)]
enum Moments<'a> {
    /// C (D, D), f64.
    Primal(Vec<f64>),
    /// X (N, D) and X X^T (N, N), f64.
    Dual { n: usize, x: &'a [f32], gram: Vec<f64> },
}

/// H0 for one lambda: (C + shift I)^-1 / c, by the Cholesky factor of C + shift I (primal)
/// or, by Woodbury, (C + shift I)^-1 = (I - X^T (N shift I + X X^T)^-1 X) / shift with the
/// factor of the N x N matrix (dual).
#[derive(Clone, Debug)]
pub struct Preconditioner<'a> {
    d: usize,
    /// (dim, dim) row-major, lower triangular: dim = D (primal) or N (dual).
    l: Vec<f64>,
    /// The dual form: X (N, D) and the shift.
    dual: Option<(&'a [f32], f64)>,
    /// 1 / c.
    inv_c: f64,
}

/// The lower-triangular L with L L^T = a (D, D); pivots below `floor` are raised to it.
fn cholesky(a: &[f64], d: usize, floor: f64) -> Vec<f64> {
    let mut l = vec![0f64; d * d];
    for j in 0..d {
        let (head, rest) = l.split_at_mut((j + 1) * d);
        let row_j = &mut head[j * d..];
        let s = a[j * d + j] - row_j[..j].iter().map(|v| v * v).sum::<f64>();
        row_j[j] = s.max(floor).sqrt();
        let (row_j, pivot) = (&row_j[..j], row_j[j]);
        for (i, row_i) in rest.chunks_exact_mut(d).enumerate() {
            let dotp: f64 = row_i[..j].iter().zip(row_j).map(|(x, y)| x * y).sum();
            row_i[j] = (a[(j + 1 + i) * d + j] - dotp) / pivot;
        }
    }
    l
}

/// y := (L L^T)^-1 y for y (dim, K) row-major: L z = y, then L^T y = z.
fn cholesky_solve(l: &[f64], dim: usize, y: &mut [f64], k: usize) {
    for i in 0..dim {
        let (done, rest) = y.split_at_mut(i * k);
        let yi = &mut rest[..k];
        for (j, yj) in done.chunks_exact(k).enumerate() {
            let a = l[i * dim + j];
            yi.iter_mut().zip(yj).for_each(|(v, &u)| *v -= a * u);
        }
        let inv = 1.0 / l[i * dim + i];
        yi.iter_mut().for_each(|v| *v *= inv);
    }
    // L^T z = y from the last row up: z_i = y_i / L_ii, then y_j -= L_ij z_i for j < i
    for i in (0..dim).rev() {
        let (head, rest) = y.split_at_mut(i * k);
        let zi = &mut rest[..k];
        let inv = 1.0 / l[i * dim + i];
        zi.iter_mut().for_each(|v| *v *= inv);
        for (j, yj) in head.chunks_exact_mut(k).enumerate() {
            let a = l[i * dim + j];
            yj.iter_mut().zip(&*zi).for_each(|(v, &u)| *v -= a * u);
        }
    }
}

impl<'a> Covariance<'a> {
    /// Of standardised features x (N, D).
    pub fn of(x: &'a [f32], d: usize) -> Self {
        let n = (x.len() / d).max(1);
        let form = if d <= n {
            let mut xtx = vec![0f32; d * d];
            matmul_backward_weight(&mut xtx, x, x, (n, d, d)); // X^T X (D, D)
            Moments::Primal(xtx.iter().map(|&v| v as f64 / n as f64).collect())
        } else {
            let mut xxt = vec![0f32; n * n];
            matmul_forward(&mut xxt, x, x, None, (n, d, n), WeightLayout::OutIn, false); // X X^T (N, N)
            Moments::Dual { n, x: &x[..n * d], gram: xxt.iter().map(|&v| v as f64).collect() }
        };
        Covariance { d, form }
    }

    /// Whether the preconditioner works in the dual (N x N) form.
    pub fn is_dual(&self) -> bool {
        matches!(self.form, Moments::Dual { .. })
    }

    /// H0 for strength `lambda` and `k` classes.
    pub fn preconditioner(&self, lambda: f64, k: usize) -> Preconditioner<'_> {
        let d = self.d;
        let c = 1.0 / k.max(2) as f64;
        // trace(C) / D: the mean variance (1 for standardised features)
        let trace = match &self.form {
            Moments::Primal(cov) => (0..d).map(|i| cov[i * d + i]).sum::<f64>(),
            Moments::Dual { n, gram, .. } => (0..*n).map(|i| gram[i * n + i]).sum::<f64>() / *n as f64,
        };
        let shift = lambda / c + RIDGE * (trace / d.max(1) as f64).max(1e-12);
        let (l, dual) = match &self.form {
            Moments::Primal(cov) => {
                let mut a = cov.clone();
                (0..d).for_each(|i| a[i * d + i] += shift);
                (cholesky(&a, d, shift), None)
            }
            Moments::Dual { n, x, gram } => {
                let (n, ns) = (*n, *n as f64 * shift);
                let mut a = gram.clone();
                (0..n).for_each(|i| a[i * n + i] += ns);
                (cholesky(&a, n, ns), Some((*x, shift)))
            }
        };
        Preconditioner { d, l, dual, inv_c: 1.0 / c }
    }
}

impl Preconditioner<'_> {
    /// q := H0 q for q = [dW (D*K), db (K)]: each class column of dW solved against
    /// C + shift I, everything scaled by 1 / c.
    pub fn apply(&self, q: &mut [f32], k: usize) {
        let d = self.d;
        let (qw, qb) = q.split_at_mut(d * k);
        match self.dual {
            None => {
                let mut y: Vec<f64> = qw.iter().map(|&v| v as f64).collect(); // (D, K)
                cholesky_solve(&self.l, d, &mut y, k);
                qw.iter_mut().zip(&y).for_each(|(v, &z)| *v = (z * self.inv_c) as f32);
            }
            Some((x, shift)) => {
                let n = x.len() / d;
                let mut p = vec![0f32; n * k];
                matmul_forward(&mut p, x, qw, None, (n, d, k), WeightLayout::InOut, false); // X q (N, K)
                let mut y: Vec<f64> = p.iter().map(|&v| v as f64).collect();
                cholesky_solve(&self.l, n, &mut y, k); // (N shift I + X X^T)^-1 X q
                let y: Vec<f32> = y.iter().map(|&v| v as f32).collect();
                let mut r = vec![0f32; d * k];
                matmul_backward_weight(&mut r, x, &y, (n, d, k)); // X^T y (D, K)
                let f = self.inv_c / shift;
                qw.iter_mut().zip(&r).for_each(|(v, &r)| *v = ((*v as f64 - r as f64) * f) as f32);
            }
        }
        qb.iter_mut().for_each(|v| *v *= self.inv_c as f32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// H0 inverts c (C + mu I) on the weights and c on the bias: applying it to
    /// c (C + mu I) v (and c b) gives back v (and b), for correlated features, in the primal
    /// form (N > D) and in the dual one (D > N).
    #[test]
    fn the_preconditioner_inverts_the_model_hessian() {
        // (the dual case's null space of C sees only lambda, and its products subtract
        // nearly equal terms in f32: a flatter spectrum and a larger lambda keep it well
        // conditioned; the fit's test in `mod.rs` shows the gain on hard problems)
        for (n, d, dual, lambda, slope) in [(3000, 9, false, 1e-3, 1.0 / 3.0), (40, 90, true, 0.1, 1.0 / 30.0)] {
            let k = 4;
            let mut rng = Rng::new(5);
            let x: Vec<f32> = (0..n)
                .flat_map(|_| {
                    let common = rng.normal();
                    (0..d).map(|j| (common * (1.0 + j as f64 * slope) + 0.3 * rng.normal()) as f32).collect::<Vec<_>>()
                })
                .collect();
            let cov = Covariance::of(&x, d);
            assert_eq!(cov.is_dual(), dual);
            let h0 = cov.preconditioner(lambda, k);
            let c = 1.0 / k as f64;
            // C = X^T X / N, computed here in f64
            let cij =
                |i: usize, j: usize| (0..n).map(|r| x[r * d + i] as f64 * x[r * d + j] as f64).sum::<f64>() / n as f64;
            let cm: Vec<f64> = (0..d * d).map(|ij| cij(ij / d, ij % d)).collect();
            let v: Vec<f64> = (0..d * k + k).map(|_| rng.normal()).collect();
            let mut q = vec![0f32; d * k + k];
            for i in 0..d {
                for col in 0..k {
                    let cv: f64 = (0..d).map(|j| cm[i * d + j] * v[j * k + col]).sum();
                    q[i * k + col] = (c * (cv + lambda / c * v[i * k + col])) as f32;
                }
            }
            for col in 0..k {
                q[d * k + col] = (c * v[d * k + col]) as f32;
            }
            h0.apply(&mut q, k);
            for (i, (&got, &want)) in q.iter().zip(&v).enumerate() {
                assert!((got as f64 - want).abs() < 2e-3 * (1.0 + want.abs()), "d {d} [{i}]: {got} vs {want}");
            }
        }
    }
}
