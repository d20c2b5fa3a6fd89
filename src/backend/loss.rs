//! What a row of logits gives: cross-entropy fused with its gradient (the logits buffer is
//! turned into dlogits in place, so a (B*T, V) probability matrix is never stored twice), and
//! the arg-max (greedy decoding, classifier predictions).

use super::isa::multiversion;
use rayon::prelude::*;

/// Index of the largest value; the first one on ties (as torch.argmax).
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// The reference NLL (eval, tests): mean cross-entropy (nats) of predicting `targets` from logits (N, V), computed in f64;
/// also returns each row's loss.
pub fn cross_entropy(logits: &[f32], targets: &[u32], v: usize) -> (f64, Vec<f64>) {
    let rows: Vec<f64> = logits
        .chunks_exact(v)
        .zip(targets)
        .map(|(row, &tg)| {
            let mx = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let z: f64 = row.iter().map(|&x| (x as f64 - mx).exp()).sum();
            mx + z.ln() - row[tg as usize] as f64
        })
        .collect();
    let mean = rows.iter().sum::<f64>() / rows.len().max(1) as f64;
    (mean, rows)
}

multiversion! {
/// For each row r with weight w_r > 0: loss_r = logsumexp(row) - row[target_r], and the row
/// becomes w_r * (softmax(row) - onehot(target_r)). Rows with weight 0 become 0. Returns
/// sum_r w_r * loss_r (the weighted mean when the weights are 1/count).
///
/// # Shapes
/// logits: (N, V) in, dlogits out; targets, weights: (N).
pub fn cross_entropy_fused(logits: &mut [f32], targets: &[u32], weights: &[f32], v: usize) -> f64 {
    logits
        .par_chunks_mut(v)
        .zip(targets.par_iter())
        .zip(weights.par_iter())
        .map(|((row, &tg), &w)| {
            if w == 0.0 {
                row.fill(0.0);
                return 0.0;
            }
            let mx = super::math::max(row);
            let mut z = 0f64;
            for x in row.iter_mut() {
                let e = ((*x - mx) as f64).exp();
                z += e;
                *x = e as f32;
            }
            let target_p = row[tg as usize] as f64 / z;
            let inv = (1.0 / z) as f32;
            row.iter_mut().for_each(|x| *x *= inv * w);
            row[tg as usize] -= w;
            -(target_p.ln()) * w as f64
        })
        .collect::<Vec<f64>>()
        .iter()
        .sum() // in row order: deterministic
}
}

#[cfg(test)]
mod tests {
    #[test]
    fn loss_and_gradient() {
        // torch: F.cross_entropy(tensor([[1., 2., 0.5]]), tensor([1])) = 0.46436879
        // grad = softmax - onehot = [0.2312239, -0.3714683, 0.1402444]
        let mut l = vec![1.0, 2.0, 0.5, 3.0, 3.0, 3.0];
        let loss = super::cross_entropy_fused(&mut l, &[1, 0], &[1.0, 0.0], 3);
        assert!((loss - 0.464_368_79).abs() < 1e-6, "{loss}");
        let want = [0.231_223_9, -0.371_468_3, 0.140_244_4, 0.0, 0.0, 0.0];
        for (a, b) in l.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{l:?}");
        }
    }
}
