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

/// The backward of [`mean_over_positions`]: dx (B, T, C) += dmean (B, C) / T at every
/// position (d mean_i / d x_{i,t} = 1/T).
pub fn mean_over_positions_backward(dx: &mut [f32], dmean: &[f32], b: usize, t: usize, c: usize) {
    assert!(dx.len() >= b * t * c && dmean.len() >= b * c, "mean_over_positions_backward: buffers of B x T x C");
    for (seq, d) in dx[..b * t * c].chunks_exact_mut(t * c).zip(dmean.chunks_exact(c)) {
        for row in seq.chunks_exact_mut(c) {
            row.iter_mut().zip(d).for_each(|(x, &g)| *x += g / t as f32);
        }
    }
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

    #[test]
    fn the_mean_spreads_its_gradient_over_the_positions() {
        // B=1, T=2, C=2: each position receives dmean / 2, added to what dx held
        let mut dx = [1.0, 0.0, 0.0, 0.0];
        super::mean_over_positions_backward(&mut dx, &[2.0, -4.0], 1, 2, 2);
        assert_eq!(dx, [2.0, -2.0, 1.0, -2.0]);
    }
}
