//! The data term of the probe's objective: the cross-entropy of a linear classifier and its
//! gradient, by a fused pass over the rows for up to 16 classes, by the gemm beyond.

use rayon::prelude::*;

use crate::backend::WeightLayout;
use crate::backend::isa::multiversion;
use crate::backend::math;
use crate::backend::matmul::{bias_backward, matmul_backward_weight, matmul_forward};

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
#[allow(clippy::too_many_arguments)]
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
            for (d, &z) in dz[r][..k].iter_mut().zip(&zr[..k]) {
                *d = math::exp(z - m);
                sum += *d;
            }
            loss += (sum.ln() - (zr[yi] - m)) as f64;
            let scale = inv_n / sum;
            dz[r][..k].iter_mut().for_each(|d| *d *= scale);
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
#[allow(clippy::too_many_arguments)]
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

/// The summed cross-entropy of logits x W + b against y, and its gradient gw (D, K), gb (K)
/// (overwritten). Up to 16 classes: the fused pass. Else: logits through the gemm, the
/// softmax rows, then dW = X^T dlogits (the gemm again) and db = the column sums.
///
/// # Shapes
/// w: (D, K); b: (K); x: (N, D); y: (N) labels < K.
#[allow(clippy::too_many_arguments)]
pub(super) fn data_loss_grad(
    w: &[f32],
    b: &[f32],
    x: &[f32],
    y: &[u16],
    d: usize,
    k: usize,
    gw: &mut [f32],
    gb: &mut [f32],
) -> f64 {
    if k <= KP {
        return fused_loss_grad(w, b, x, y, d, k, gw, gb);
    }
    let n = y.len();
    let mut logits = vec![0f32; n * k];
    matmul_forward(&mut logits, x, w, Some(b), (n, d, k), WeightLayout::InOut, false);
    let ce = softmax_rows(&mut logits, y, k);
    gw.fill(0.0);
    gb.fill(0.0);
    matmul_backward_weight(gw, x, &logits, (n, d, k));
    bias_backward(gb, &logits, k);
    ce
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
}
