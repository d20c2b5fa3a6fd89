//! L-BFGS (memory 10, backtracking Armijo line search) for the probe's smooth convex
//! objectives, over a flat f32 parameter vector.

/// Past steps kept for the inverse-Hessian estimate.
const MEMORY: usize = 10;
/// Halvings of the step the line search tries before giving up.
const MAX_HALVINGS: usize = 30;
/// Armijo's sufficient-decrease constant.
const ARMIJO: f64 = 1e-4;
/// A step that lowers the objective by less than this, relatively, ends the fit.
const FTOL: f64 = 1e-9;

/// How a minimisation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Accepted steps.
    pub iterations: usize,
    /// Objective and gradient evaluations (the cost: one pass over the data each).
    pub evaluations: usize,
    /// `done` said so (or no step could lower the objective any more), rather than the
    /// iteration limit.
    pub converged: bool,
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// The direction -H g by the two-loop recursion over the stored steps (s) and gradient
/// changes (y), from H0 = gamma `h0` (gamma = s.y / y.h0(y) of the latest pair: the
/// preconditioner's shape at the observed curvature's scale; `h0` alone without history).
fn direction(g: &[f32], s_hist: &[Vec<f32>], y_hist: &[Vec<f32>], h0: &impl Fn(&mut [f32])) -> Vec<f32> {
    let mut q: Vec<f32> = g.to_vec();
    let mut alphas = Vec::with_capacity(s_hist.len());
    for (s, yv) in s_hist.iter().zip(y_hist).rev() {
        let rho = 1.0 / dot(yv, s);
        let a = rho * dot(s, &q);
        q.iter_mut().zip(yv).for_each(|(qi, &yi)| *qi -= (a * yi as f64) as f32);
        alphas.push((a, rho));
    }
    h0(&mut q);
    if let (Some(s), Some(yv)) = (s_hist.last(), y_hist.last()) {
        let mut hy = yv.clone();
        h0(&mut hy);
        let gamma = dot(s, yv) / dot(yv, &hy);
        q.iter_mut().for_each(|v| *v *= gamma as f32);
    }
    for ((s, yv), (a, rho)) in s_hist.iter().zip(y_hist).zip(alphas.iter().rev()) {
        let bta = rho * dot(yv, &q);
        q.iter_mut().zip(s).for_each(|(qi, &si)| *qi += ((a - bta) * si as f64) as f32);
    }
    q.iter_mut().for_each(|v| *v = -*v);
    q
}

/// Minimises `eval` (objective at theta, its gradient written into the second slice) from
/// `theta`, in place, until `done(gradient)`, no further decrease, or `max_iter` steps.
/// `h0` applies the initial inverse-Hessian estimate in place (the identity: `|_| {}`); its
/// first step has length 1 along -h0(g) when `unit_first_step`, else it is h0's own.
pub fn minimize(
    theta: &mut [f32],
    max_iter: usize,
    mut eval: impl FnMut(&[f32], &mut [f32]) -> f64,
    done: impl Fn(&[f32]) -> bool,
    h0: impl Fn(&mut [f32]),
    unit_first_step: bool,
) -> Outcome {
    let p = theta.len();
    let mut g = vec![0f32; p];
    let mut f = eval(theta, &mut g);
    let mut out = Outcome { iterations: 0, evaluations: 1, converged: done(&g) };
    let (mut s_hist, mut y_hist): (Vec<Vec<f32>>, Vec<Vec<f32>>) = (Vec::new(), Vec::new());
    let (mut g_new, mut trial) = (vec![0f32; p], vec![0f32; p]);
    while !out.converged && out.iterations < max_iter {
        let mut dir = direction(&g, &s_hist, &y_hist, &h0);
        let mut gd = dot(&g, &dir);
        if gd >= 0.0 {
            // not a descent direction: restart from h0 alone
            s_hist.clear();
            y_hist.clear();
            dir = direction(&g, &s_hist, &y_hist, &h0);
            gd = dot(&g, &dir);
            if gd >= 0.0 {
                dir = g.iter().map(|v| -v).collect();
                gd = -dot(&g, &g);
            }
        }
        let first = s_hist.is_empty() && unit_first_step;
        let mut step = if first { 1.0 / dot(&dir, &dir).sqrt().max(1e-12) } else { 1.0 };
        let mut accepted = None;
        for _ in 0..MAX_HALVINGS {
            trial.iter_mut().zip(&*theta).zip(&dir).for_each(|((t, &th), &dv)| *t = th + (step * dv as f64) as f32);
            let f_new = eval(&trial, &mut g_new);
            out.evaluations += 1;
            if f_new <= f + ARMIJO * step * gd {
                accepted = Some(f_new);
                break;
            }
            step *= 0.5;
        }
        let Some(f_new) = accepted else {
            out.converged = true; // no step lowers the objective: as close as f32 gets
            break;
        };
        let s: Vec<f32> = trial.iter().zip(&*theta).map(|(a, b)| a - b).collect();
        let yv: Vec<f32> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
        if dot(&s, &yv) > 1e-10 {
            s_hist.push(s);
            y_hist.push(yv);
            if s_hist.len() > MEMORY {
                s_hist.remove(0);
                y_hist.remove(0);
            }
        }
        let stalled = (f - f_new).abs() <= FTOL * f.abs().max(1.0);
        theta.copy_from_slice(&trial);
        std::mem::swap(&mut g, &mut g_new);
        f = f_new;
        out.iterations += 1;
        out.converged = stalled || done(&g);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A quadratic sum_i c_i (x_i - i)^2 / 2 (condition 80) is minimised to its known
    /// optimum, the iteration limit is honoured and reported, and with its exact inverse
    /// Hessian as h0 one step suffices.
    #[test]
    fn a_quadratic_reaches_its_optimum_and_the_limit_is_reported() {
        let c: Vec<f64> = (0..20).map(|i| 10f64.powf(i as f64 / 10.0)).collect();
        let eval = |th: &[f32], g: &mut [f32]| {
            let mut f = 0.0;
            for (i, (&t, gi)) in th.iter().zip(g.iter_mut()).enumerate() {
                let e = t as f64 - i as f64;
                f += 0.5 * c[i] * e * e;
                *gi = (c[i] * e) as f32;
            }
            f
        };
        let mut theta = vec![0f32; 20];
        let out = minimize(&mut theta, 500, eval, |g| g.iter().all(|v| v.abs() < 1e-3), |_| {}, true);
        assert!(out.converged && out.iterations < 60, "{out:?}");
        assert!(out.evaluations > out.iterations);
        for (i, t) in theta.iter().enumerate() {
            assert!((t - i as f32).abs() < 1e-3, "theta[{i}] = {t}");
        }
        let mut theta = vec![0f32; 20];
        let out = minimize(&mut theta, 3, eval, |g| g.iter().all(|v| v.abs() < 1e-3), |_| {}, true);
        assert_eq!((out.iterations, out.converged), (3, false));
        // the exact inverse Hessian as h0: one Newton step
        let mut theta = vec![0f32; 20];
        let h0 = |q: &mut [f32]| q.iter_mut().zip(&c).for_each(|(v, ci)| *v = (*v as f64 / ci) as f32);
        let out = minimize(&mut theta, 50, eval, |g| g.iter().all(|v| v.abs() < 1e-3), h0, false);
        assert!(out.converged && out.iterations <= 2, "{out:?}");
    }
}
