//! Matrix products through the `gemm` crate (BLIS-style kernels, runtime SIMD dispatch).
//!
//! Weights are used in the orientation HF stores them, so no transpose is ever made:
//! `Conv1D` weights are (in, out) = [`WeightLayout::InOut`]; `nn.Linear` weights
//! (`lm_head`, `score`) are (out, in) = [`WeightLayout::OutIn`].

use gemm::{Parallelism, gemm};

/// How a weight matrix is stored in memory (row-major).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    /// (k, n): HF Conv1D, y = x @ W.
    InOut,
    /// (n, k): HF nn.Linear, y = x @ W^T.
    OutIn,
}

fn parallelism(m: usize, n: usize, k: usize) -> Parallelism {
    // Small products are not worth waking the other threads for.
    if m * n * k < 32 * 32 * 32 || rayon::current_thread_index().is_some() {
        Parallelism::None
    } else {
        Parallelism::Rayon(rayon::current_num_threads())
    }
}

/// Strides (row, col) of the (k, n) right-hand side for a weight stored in `layout`.
fn rhs_strides(layout: WeightLayout, k: usize, n: usize) -> (isize, isize) {
    match layout {
        WeightLayout::InOut => (n as isize, 1),
        WeightLayout::OutIn => (1, k as isize),
    }
}

/// out (m, n) = inp (m, k) @ W (+ bias), or out += ... when `accumulate`.
///
/// # Shapes
/// inp: (m, k) row-major; w: (k, n) or (n, k) per `layout`; bias: (n); out: (m, n).
pub fn matmul_forward(
    out: &mut [f32],
    inp: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    (m, k, n): (usize, usize, usize),
    layout: WeightLayout,
    accumulate: bool,
) {
    assert!(out.len() >= m * n && inp.len() >= m * k && w.len() >= k * n, "matmul_forward: buffers too small");
    let mut read_dst = accumulate;
    if let Some(b) = bias {
        assert_eq!(b.len(), n);
        for row in out[..m * n].chunks_exact_mut(n) {
            if accumulate {
                row.iter_mut().zip(b).for_each(|(o, &bb)| *o += bb);
            } else {
                row.copy_from_slice(b);
            }
        }
        read_dst = true;
    }
    if m <= SMALL_M && layout == WeightLayout::InOut && n % NC == 0 {
        // Decoding: a few rows against a big matrix. gemm would repack the whole weight
        // matrix on every call; streaming it once through registers is several times faster.
        matmul_small_m(&mut out[..m * n], &inp[..m * k], &w[..k * n], (m, k, n), read_dst);
        return;
    }
    let (rhs_rs, rhs_cs) = rhs_strides(layout, k, n);
    // SAFETY: all three buffers were checked to hold the (m, n), (m, k), (k, n) matrices
    // addressed by these strides, and `out` does not alias the inputs (&mut borrow).
    unsafe {
        gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            read_dst,
            inp.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            rhs_cs,
            rhs_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism(m, n, k),
        );
    }
}

/// Row count up to which [`matmul_small_m`] is used.
const SMALL_M: usize = 16;
/// Column granularity of the small-m kernel.
const NC: usize = 16;

/// out (m, n) (+)= inp (m, k) @ W (k, n) for small m (decoding). Each task owns a
/// contiguous range of columns and streams W row by row through it (long sequential reads
/// the prefetcher follows; column panels of a few cache lines per row were latency-bound),
/// accumulating the m output rows in a cache-resident buffer. Every output accumulates over
/// k in order from zero with FMAs, whatever the thread count: results do not depend on it.
fn matmul_small_m(out: &mut [f32], inp: &[f32], w: &[f32], (m, k, n): (usize, usize, usize), accumulate: bool) {
    use rayon::prelude::*;
    let tasks = if rayon::current_thread_index().is_some() { 1 } else { rayon::current_num_threads().max(1) };
    let width = n.div_ceil(tasks).next_multiple_of(NC).min(n);
    let out_ptr = OutPtr(out.as_mut_ptr());
    let out_ptr = &out_ptr;
    (0..n.div_ceil(width)).into_par_iter().for_each(|t| {
        let (j0, j1) = (t * width, ((t + 1) * width).min(n));
        let cols = j1 - j0;
        // y (m, cols): this task's part of the output rows.
        let mut y = vec![0f32; m * cols];
        for kk in 0..k {
            let wr = &w[kk * n + j0..kk * n + j1];
            for i in 0..m {
                let xv = inp[i * k + kk];
                for (a, &b) in y[i * cols..(i + 1) * cols].iter_mut().zip(wr) {
                    *a = xv.mul_add(b, *a);
                }
            }
        }
        for i in 0..m {
            // SAFETY: task t owns columns j0..j1 of every row; no other task writes them.
            let dst = unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add(i * n + j0), cols) };
            let src = &y[i * cols..(i + 1) * cols];
            if accumulate {
                dst.iter_mut().zip(src).for_each(|(d, a)| *d += a);
            } else {
                dst.copy_from_slice(src);
            }
        }
    });
}

struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(inp: &[f32], w: &[f32], (m, k, n): (usize, usize, usize), layout: WeightLayout) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for p in 0..k {
                    let wv = match layout {
                        WeightLayout::InOut => w[p * n + j],
                        WeightLayout::OutIn => w[j * k + p],
                    };
                    s += inp[i * k + p] as f64 * wv as f64;
                }
                out[i * n + j] = s as f32;
            }
        }
        out
    }

    #[test]
    fn small_m_matches_naive() {
        for (m, k, n) in [(1, 40, 64), (5, 33, 192), (16, 8, 96), (11, 20, 32)] {
            let inp: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
            let w: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 7.0).collect();
            let want = naive(&inp, &w, (m, k, n), WeightLayout::InOut);
            let mut out = vec![1f32; m * n];
            matmul_forward(&mut out, &inp, &w, None, (m, k, n), WeightLayout::InOut, true);
            for i in 0..m * n {
                assert!((out[i] - want[i] - 1.0).abs() < 1e-4, "({m},{k},{n}) at {i}");
            }
        }
    }

    #[test]
    fn both_layouts_match_naive() {
        let (m, k, n) = (37, 45, 29);
        let inp: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
        let w: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 7.0).collect();
        let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.1).collect();
        for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
            let want = naive(&inp, &w, (m, k, n), layout);
            let mut out = vec![0f32; m * n];
            matmul_forward(&mut out, &inp, &w, Some(&bias), (m, k, n), layout, false);
            for i in 0..m * n {
                assert!((out[i] - want[i] - bias[i % n]).abs() < 1e-4);
            }
            // accumulate: out += inp @ w (no bias)
            matmul_forward(&mut out, &inp, &w, None, (m, k, n), layout, true);
            for i in 0..m * n {
                assert!((out[i] - 2.0 * want[i] - bias[i % n]).abs() < 1e-4);
            }
        }
    }
}

/// dW (k, n) += x^T (k, m) @ dy (m, n): the weight gradient of y = x @ W.
///
/// # Shapes
/// x: (m, k); dy: (m, n); dw: (k, n), all row-major.
pub fn matmul_backward_weight(dw: &mut [f32], x: &[f32], dy: &[f32], (m, k, n): (usize, usize, usize)) {
    assert!(dw.len() >= k * n && x.len() >= m * k && dy.len() >= m * n);
    // SAFETY: the buffers hold the matrices these strides address; dw does not alias x or dy.
    unsafe {
        gemm(
            k,
            n,
            m,
            dw.as_mut_ptr(),
            1,
            n as isize,
            true,
            x.as_ptr(),
            k as isize,
            1, // x^T: element [i, p] = x[p * k + i]
            dy.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism(k, n, m),
        );
    }
}

/// db (n) += column sums of dy (m, n).
pub fn bias_backward(db: &mut [f32], dy: &[f32], n: usize) {
    use rayon::prelude::*;
    // Fixed chunks summed in order: deterministic whatever the scheduling.
    let partials: Vec<Vec<f32>> = dy
        .par_chunks(n * 64)
        .map(|rows| {
            let mut acc = vec![0f32; n];
            for row in rows.chunks(n) {
                acc.iter_mut().zip(row).for_each(|(a, &g)| *a += g);
            }
            acc
        })
        .collect();
    let mut sums = vec![0f32; n];
    for p in partials {
        sums.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    db.iter_mut().zip(sums).for_each(|(d, s)| *d += s);
}
