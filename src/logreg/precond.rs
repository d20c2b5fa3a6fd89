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

use crate::backend::matmul::matmul_backward_weight;

/// Added to the covariance's diagonal, relative to its mean (1 for standardised features),
/// on top of mu: keeps the factor finite for constant or duplicated features.
const RIDGE: f64 = 1e-6;

/// The feature covariance C = X^T X / N (D, D) of standardised features, f64.
#[derive(Clone, Debug)]
pub struct Covariance {
    d: usize,
    c: Vec<f64>,
}

/// H0 for one lambda: the Cholesky factor of C + mu I and the curvature scale.
#[derive(Clone, Debug)]
pub struct Preconditioner {
    d: usize,
    /// (D, D) row-major, lower triangular.
    l: Vec<f64>,
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

impl Covariance {
    /// Of standardised features x (N, D).
    pub fn of(x: &[f32], d: usize) -> Self {
        let n = (x.len() / d).max(1);
        let mut xtx = vec![0f32; d * d];
        matmul_backward_weight(&mut xtx, x, x, (n, d, d)); // X^T X (D, D)
        Covariance { d, c: xtx.iter().map(|&v| v as f64 / n as f64).collect() }
    }

    /// H0 for strength `lambda` and `k` classes.
    pub fn preconditioner(&self, lambda: f64, k: usize) -> Preconditioner {
        let d = self.d;
        let c = 1.0 / k.max(2) as f64;
        let mean_diag = ((0..d).map(|i| self.c[i * d + i]).sum::<f64>() / d.max(1) as f64).max(1e-12);
        let shift = lambda / c + RIDGE * mean_diag;
        let mut a = self.c.clone();
        for i in 0..d {
            a[i * d + i] += shift;
        }
        Preconditioner { d, l: cholesky(&a, d, shift), inv_c: 1.0 / c }
    }
}

impl Preconditioner {
    /// q := H0 q for q = [dW (D*K), db (K)]: each class column of dW solved against
    /// C + mu I (L y = q, then L^T z = y), everything scaled by 1 / c.
    pub fn apply(&self, q: &mut [f32], k: usize) {
        let d = self.d;
        let (qw, qb) = q.split_at_mut(d * k);
        let mut y: Vec<f64> = qw.iter().map(|&v| v as f64).collect(); // (D, K)
        for i in 0..d {
            let (done, rest) = y.split_at_mut(i * k);
            let yi = &mut rest[..k];
            for (j, yj) in done.chunks_exact(k).enumerate() {
                let a = self.l[i * d + j];
                yi.iter_mut().zip(yj).for_each(|(v, &u)| *v -= a * u);
            }
            let inv = 1.0 / self.l[i * d + i];
            yi.iter_mut().for_each(|v| *v *= inv);
        }
        // L^T z = y from the last row up: z_i = y_i / L_ii, then y_j -= L_ij z_i for j < i
        for i in (0..d).rev() {
            let (head, rest) = y.split_at_mut(i * k);
            let zi = &mut rest[..k];
            let inv = 1.0 / self.l[i * d + i];
            zi.iter_mut().for_each(|v| *v *= inv);
            for (j, yj) in head.chunks_exact_mut(k).enumerate() {
                let a = self.l[i * d + j];
                yj.iter_mut().zip(&*zi).for_each(|(v, &u)| *v -= a * u);
            }
        }
        qw.iter_mut().zip(&y).for_each(|(v, &z)| *v = (z * self.inv_c) as f32);
        qb.iter_mut().for_each(|v| *v *= self.inv_c as f32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// H0 inverts c (C + mu I) on the weights and c on the bias: applying it to
    /// c (C + mu I) v (and c b) gives back v (and b), for correlated features.
    #[test]
    fn the_preconditioner_inverts_the_model_hessian() {
        let (n, d, k, lambda) = (3000, 9, 4, 1e-3);
        let mut rng = Rng::new(5);
        let x: Vec<f32> = (0..n)
            .flat_map(|_| {
                let common = rng.normal();
                (0..d).map(|j| (common * (1.0 + j as f64 / 3.0) + 0.3 * rng.normal()) as f32).collect::<Vec<_>>()
            })
            .collect();
        let cov = Covariance::of(&x, d);
        let h0 = cov.preconditioner(lambda, k);
        let c = 1.0 / k as f64;
        let v: Vec<f64> = (0..d * k + k).map(|_| rng.normal()).collect();
        let mut q = vec![0f32; d * k + k];
        for i in 0..d {
            for col in 0..k {
                let cv: f64 = (0..d).map(|j| cov.c[i * d + j] * v[j * k + col]).sum();
                q[i * k + col] = (c * (cv + lambda / c * v[i * k + col])) as f32;
            }
        }
        for col in 0..k {
            q[d * k + col] = (c * v[d * k + col]) as f32;
        }
        h0.apply(&mut q, k);
        for (i, (&got, &want)) in q.iter().zip(&v).enumerate() {
            assert!((got as f64 - want).abs() < 1e-3 * (1.0 + want.abs()), "[{i}]: {got} vs {want}");
        }
    }
}
