//! The probe's regularisation path: multinomial logistic regressions with L2 strengths lambda
//! (objective mean cross-entropy + lambda/2 ||W||^2, so scikit-learn's C = 1 / (lambda N)),
//! fitted from strong to weak with each fit starting at the previous optimum, the strength
//! chosen by validation accuracy. The path extends past an end while the best value lies
//! on it, then is refined by half decades around the best, so the choice is interior unless
//! the extension limit is reached (then `lambda_on_edge` says so).

use serde::Serialize;

use super::features::Split;
use crate::logreg::{self, Covariance, Fit, Standardizer, Stop};

/// One fitted strength and its validation accuracy.
#[derive(Clone, Debug, Serialize)]
pub struct PathPoint {
    pub lambda: f64,
    pub val_acc: f64,
    /// L-BFGS steps of this fit (warm-started from its neighbour on the path).
    pub iterations: usize,
    /// The fit met the gradient tolerance (else it stopped at the iteration limit).
    pub converged: bool,
}

/// One probe's result.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeResult {
    /// Layer index (0 = embeddings), or None for the raw-pixel baseline.
    pub layer: Option<usize>,
    pub lambda: f64,
    pub train_acc: f64,
    pub val_acc: f64,
    pub test_acc: Option<f64>,
    /// Every strength fitted, strong to weak.
    pub path: Vec<PathPoint>,
    /// The chosen strength is the strongest or the weakest one fitted: accuracy might
    /// improve beyond the path.
    pub lambda_on_edge: bool,
    /// The chosen fit met the gradient tolerance within the iteration limit (else the
    /// accuracies are those of an unfinished fit: raise `--max-iter`).
    pub converged: bool,
}

/// The decades fitted first, strong to weak.
pub const LAMBDAS: [f64; 7] = [1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6];
/// Decades the path may extend past either end.
const EXTEND: usize = 3;

/// One point of the path: the strength, its fit, its val accuracy.
struct PathFit {
    lambda: f64,
    fit: Fit,
    val_acc: f64,
}

/// The fits of a path, strong to weak, on standardised features.
struct Path<'a> {
    train: Split<'a>,
    val: Split<'a>,
    cov: &'a Covariance<'a>,
    d: usize,
    k: usize,
    stop: Stop,
    fits: Vec<PathFit>,
}

impl Path<'_> {
    fn fit(&self, lambda: f64, from: Option<usize>) -> PathFit {
        let init = from.map(|i| &self.fits[i].fit.model);
        let (x, y) = (self.train.x, self.train.y);
        let fit = logreg::fit_from(x, y, (self.d, self.k), lambda, self.stop, init, Some(self.cov));
        let val_acc = fit.model.accuracy(self.val.x, self.val.y);
        PathFit { lambda, fit, val_acc }
    }

    /// Index of the best validation accuracy (the stronger strength on ties).
    fn best(&self) -> usize {
        let mut b = 0;
        for (i, f) in self.fits.iter().enumerate() {
            if f.val_acc > self.fits[b].val_acc {
                b = i;
            }
        }
        b
    }

    /// Fits `lambda`, warm-started from fit `from`, and keeps the fits sorted strong to weak.
    fn add(&mut self, lambda: f64, from: usize) {
        let f = self.fit(lambda, Some(from));
        let at = self.fits.iter().position(|g| g.lambda < lambda).unwrap_or(self.fits.len());
        self.fits.insert(at, f);
    }
}

/// Fits the probe on the train split, picks lambda on val, reports every split. The
/// features are standardised with the train split's statistics; their covariance
/// preconditions the fits.
pub fn fit_probe(
    layer: Option<usize>,
    (d, k): (usize, usize),
    (train, val, test): (Split, Split, Option<Split>),
    stop: Stop,
) -> ProbeResult {
    let st = Standardizer::fit(train.x, d);
    let std = |x: &[f32]| {
        let mut v = x.to_vec();
        st.apply(&mut v);
        v
    };
    let (xtr, xva) = (std(train.x), std(val.x));
    let xte = test.as_ref().map(|t| std(t.x));
    let cov = Covariance::of(&xtr, d);
    let (train_s, val_s) = (Split { x: &xtr, y: train.y }, Split { x: &xva, y: val.y });
    let mut p = Path { train: train_s, val: val_s, cov: &cov, d, k, stop, fits: Vec::new() };
    for &lambda in &LAMBDAS {
        let f = p.fit(lambda, p.fits.len().checked_sub(1));
        p.fits.push(f);
    }
    for _ in 0..EXTEND {
        let (b, last) = (p.best(), p.fits.len() - 1);
        match b {
            _ if b == last => p.add(p.fits[last].lambda / 10.0, last),
            0 => p.add(p.fits[0].lambda * 10.0, 0),
            _ => break,
        }
    }
    // half decades either side of the best, where the path has room
    let b = p.best();
    let lam = p.fits[b].lambda;
    // (the weaker side first: inserting after b keeps b in place for the stronger side)
    for (f, ok) in [(1.0 / 10f64.sqrt(), b + 1 < p.fits.len()), (10f64.sqrt(), b > 0)] {
        if ok {
            p.add(lam * f, b);
        }
    }
    let b = p.best();
    let PathFit { lambda, fit, val_acc } = &p.fits[b];
    ProbeResult {
        layer,
        lambda: *lambda,
        train_acc: fit.model.accuracy(&xtr, train.y),
        val_acc: *val_acc,
        test_acc: xte.as_ref().zip(test.as_ref()).map(|(x, t)| fit.model.accuracy(x, t.y)),
        path: p
            .fits
            .iter()
            .map(|f| PathPoint {
                lambda: f.lambda,
                val_acc: f.val_acc,
                iterations: f.fit.outcome.iterations,
                converged: f.fit.outcome.converged,
            })
            .collect(),
        lambda_on_edge: b == 0 || b == p.fits.len() - 1,
        converged: fit.outcome.converged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// (N, 2) points of two classes around (+-sep, 0) with unit noise, and labels.
    fn blobs(n: usize, sep: f64, seed: u64) -> (Vec<f32>, Vec<u16>) {
        let mut rng = Rng::new(seed);
        let y: Vec<u16> = (0..n).map(|i| (i % 2) as u16).collect();
        let x = y
            .iter()
            .flat_map(|&c| [(rng.normal() + if c == 1 { sep } else { -sep }) as f32, rng.normal() as f32])
            .collect();
        (x, y)
    }

    /// On separable and on overlapping classes: the path runs strong to weak over at least
    /// the seven decades, half decades are fitted beside the chosen strength (or it lies on
    /// an edge, flagged as such), and the chosen fit has the best validation accuracy.
    #[test]
    fn the_path_is_ordered_refined_and_its_edges_flagged() {
        let fit = |sep: f64, n: usize| {
            let ((xtr, ytr), (xva, yva)) = (blobs(n, sep, 1), blobs(400, sep, 2));
            fit_probe(None, (2, 2), (Split { x: &xtr, y: &ytr }, Split { x: &xva, y: &yva }, None), Stop::default())
        };
        let easy = fit(6.0, 40);
        assert!(easy.val_acc > 0.99, "{easy:?}");
        for p in [&easy, &fit(0.3, 20)] {
            assert!(p.path.len() > LAMBDAS.len(), "{p:?}");
            assert!(p.path.windows(2).all(|w| w[0].lambda > w[1].lambda), "{p:?}");
            let best = p.path.iter().position(|q| q.lambda == p.lambda).unwrap();
            assert_eq!(p.lambda_on_edge, best == 0 || best + 1 == p.path.len(), "{p:?}");
            assert!(p.path.iter().all(|q| q.val_acc <= p.val_acc));
            let half = |f: f64| p.path.iter().any(|q| (q.lambda / p.lambda - f).abs() < 1e-9);
            assert!(p.lambda_on_edge || half(10f64.sqrt()) || half(1.0 / 10f64.sqrt()) || half(10.0), "{p:?}");
        }
    }
}
