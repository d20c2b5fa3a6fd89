//! ImageGPT's norm (HF `ImageGPTLayerNorm`): y = x / sqrt(mean(x^2) + eps) * w.
//! No mean subtraction and no bias: an RMS norm with eps inside the square root.

use super::isa::multiversion;
use rayon::prelude::*;

multiversion! {
/// # Shapes
/// inp, out: (N, C) row-major; w: (C); rstd: (N) receives 1 / sqrt(mean(x^2) + eps)
/// for the backward pass.
pub fn rmsnorm_forward(out: &mut [f32], rstd: &mut [f32], inp: &[f32], w: &[f32], eps: f64) {
    let c = w.len();
    out.par_chunks_mut(c).zip(rstd.par_iter_mut()).zip(inp.par_chunks(c)).with_min_len(64).for_each(|((o, r), x)| {
        let ss: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let rs = (1.0 / (ss / c as f64 + eps).sqrt()) as f32;
        *r = rs;
        for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
            *o = x * rs * w;
        }
    });
}
}

multiversion! {
/// Backward of [`rmsnorm_forward`]: with y = x * r * w and r = (mean(x^2) + eps)^-1/2,
/// dx_j = r * w_j * dy_j - x_j * r^3 / C * sum_i(dy_i * w_i * x_i), and dw += sum_rows dy * x * r.
///
/// # Shapes
/// dout, inp, dinp: (N, C); rstd: (N); w, dw: (C). `dinp` is accumulated into (+=).
pub fn rmsnorm_backward(dinp: &mut [f32], dw: &mut [f32], dout: &[f32], inp: &[f32], rstd: &[f32], w: &[f32]) {
    let c = w.len();
    // Fixed chunks of rows, summed in order: the result does not depend on scheduling,
    // so training is bit-for-bit reproducible for a given thread count.
    const ROWS: usize = 64;
    let partials: Vec<Vec<f64>> = dinp
        .par_chunks_mut(c * ROWS)
        .zip(dout.par_chunks(c * ROWS))
        .zip(inp.par_chunks(c * ROWS))
        .zip(rstd.par_chunks(ROWS))
        .map(|(((dxs, dys), xs), rs)| {
            let mut acc = vec![0f64; c];
            for (((dx, dy), x), &r) in dxs.chunks_mut(c).zip(dys.chunks(c)).zip(xs.chunks(c)).zip(rs) {
                let dot: f64 = dy.iter().zip(w).zip(x).map(|((&g, &w), &x)| (g * w) as f64 * x as f64).sum();
                let k = (dot * (r as f64).powi(3) / c as f64) as f32;
                for j in 0..c {
                    dx[j] += r * w[j] * dy[j] - x[j] * k;
                    acc[j] += (dy[j] * x[j] * r) as f64;
                }
            }
            acc
        })
        .collect();
    let mut partial = vec![0f64; c];
    for p in partials {
        partial.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    dw.iter_mut().zip(partial).for_each(|(d, p)| *d += p as f32);
}
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_formula() {
        // torch: x / torch.sqrt(torch.mean(x**2, -1, keepdim=True) + 1e-5) * w
        // for x = [[1, 2, 3, 4]], w = [1, 0.5, 2, 1] -> [0.36514813, 0.36514813, 2.1908889, 1.4605925]
        let x = [1.0, 2.0, 3.0, 4.0];
        let w = [1.0, 0.5, 2.0, 1.0];
        let mut out = [0f32; 4];
        let mut rstd = [0f32; 1];
        super::rmsnorm_forward(&mut out, &mut rstd, &x, &w, 1e-5);
        let want = [0.365_148_13, 0.365_148_13, 2.190_889, 1.460_592_5];
        for i in 0..4 {
            assert!((out[i] - want[i]).abs() < 1e-6, "{out:?}");
        }
    }
}
