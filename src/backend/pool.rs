//! Mean pooling over the positions of each sequence: HF `ImageGPTForImageClassification`'s
//! pooling of ln_f's output (fine-tuning, classifiers), and the probe's pooling of the
//! residual stream with each row first normalised (ImageGPT's norm without its gain).
//! Sums run in f64.

/// out (B, C) = the mean over t of x (B, T, C), each row multiplied by `scale(row)` first.
fn pool(x: &[f32], (b, t, c): (usize, usize, usize), scale: impl Fn(&[f32]) -> f64) -> Vec<f32> {
    assert!(x.len() >= b * t * c, "pool: x holds fewer than B x T x C values");
    let mut out = Vec::with_capacity(b * c);
    for seq in x[..b * t * c].chunks_exact(t * c) {
        let mut acc = vec![0f64; c];
        for row in seq.chunks_exact(c) {
            let s = scale(row);
            acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v as f64 * s);
        }
        out.extend(acc.iter().map(|&a| (a / t as f64) as f32));
    }
    out
}

/// out (B, C) = mean over positions of x (B, T, C).
pub fn mean_over_positions(x: &[f32], b: usize, t: usize, c: usize) -> Vec<f32> {
    pool(x, (b, t, c), |_| 1.0)
}

/// out (B, C) = mean over positions of x / sqrt(mean(x^2) + eps), row by row.
pub fn normalised_mean_over_positions(x: &[f32], b: usize, t: usize, c: usize, eps: f64) -> Vec<f32> {
    pool(x, (b, t, c), |row| {
        let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / c as f64;
        1.0 / (ms + eps).sqrt()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn means_and_normalised_means() {
        // B=2, T=2, C=2
        let x = [1.0, 2.0, 3.0, 4.0, -1.0, 0.0, 1.0, 0.0];
        assert_eq!(super::mean_over_positions(&x, 2, 2, 2), vec![2.0, 3.0, 0.0, 0.0]);
        let n = super::normalised_mean_over_positions(&x, 2, 2, 2, 0.0);
        let r = |a: f64, b: f64| 1.0 / ((a * a + b * b) / 2.0).sqrt();
        let want0 = (1.0 * r(1.0, 2.0) + 3.0 * r(3.0, 4.0)) / 2.0;
        assert!((n[0] as f64 - want0).abs() < 1e-6 && (n[2] as f64 - 0.0).abs() < 1e-6, "{n:?}");
    }
}
