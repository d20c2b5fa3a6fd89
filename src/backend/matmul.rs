//! Matrix products through the `gemm` crate (BLIS-style kernels, runtime SIMD dispatch).
//!
//! Weights are used in the orientation HF stores them, so no transpose is ever made:
//! `Conv1D` weights are (in, out) = [`WeightLayout::InOut`]; `nn.Linear` weights
//! (`lm_head`, `score`) are (out, in) = [`WeightLayout::OutIn`].

use gemm::{Parallelism, gemm};

use super::isa::{self, KernelSet, multiversion};

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
    if m * n * k < 32 * 32 * 32 { Parallelism::None } else { Parallelism::Rayon(rayon::current_num_threads()) }
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
    if m <= SMALL_M && layout == WeightLayout::OutIn {
        // Decoding's output head: gemm would pack the whole (n, k) matrix for a few rows;
        // dot products against its rows (each read once, reused from L1 by every row) are
        // several times faster.
        matmul_small_m_out_in(&mut out[..m * n], &inp[..m * k], &w[..k * n], (m, k, n), read_dst);
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
/// Column granularity of the small-m kernels (one AVX-512 vector, two AVX2 ones).
const NC: usize = 16;

/// out (m, n) (+)= inp (m, k) @ W (k, n) for small m (decoding). Each task owns a
/// contiguous range of columns and streams W row by row through it (long sequential reads
/// the prefetcher follows; column panels of a few cache lines per row were latency-bound),
/// accumulating the m output rows in a cache-resident buffer. Every output accumulates over
/// k in order from zero with FMAs, whatever the thread count: results do not depend on it.
fn matmul_small_m(out: &mut [f32], inp: &[f32], w: &[f32], (m, k, n): (usize, usize, usize), accumulate: bool) {
    use rayon::prelude::*;
    let tasks = rayon::current_num_threads().max(1);
    let width = n.div_ceil(tasks).next_multiple_of(NC).min(n);
    let out_ptr = OutPtr(out.as_mut_ptr());
    let out_ptr = &out_ptr;
    (0..n.div_ceil(width)).into_par_iter().for_each(|t| {
        let (j0, j1) = (t * width, ((t + 1) * width).min(n));
        let cols = j1 - j0;
        // y (m, cols): this task's part of the output rows.
        let mut y = vec![0f32; m * cols];
        small_m_range(&mut y, inp, w, (m, k, n), j0, cols);
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

multiversion! {
/// out (m, n) (+)= inp (m, k) @ W^T for W stored (n, k) (nn.Linear), small m: every output
/// is one dot product (16 partial sums, then their total), columns split between tasks.
fn matmul_small_m_out_in(out: &mut [f32], inp: &[f32], w: &[f32], mkn: (usize, usize, usize), accumulate: bool) {
    use rayon::prelude::*;
    let (m, k, n) = mkn;
    let per_task = n.div_ceil(rayon::current_num_threads().max(1));
    let out_ptr = OutPtr(out.as_mut_ptr());
    let out_ptr = &out_ptr;
    (0..n).into_par_iter().with_min_len(per_task.max(16)).for_each(|j| {
        let wr = &w[j * k..(j + 1) * k];
        for i in 0..m {
            let d = dot(&inp[i * k..(i + 1) * k], wr);
            // SAFETY: the task of column j is the only writer of out[i, j].
            unsafe {
                let o = out_ptr.0.add(i * n + j);
                *o = if accumulate { *o + d } else { d };
            }
        }
    });
}
}

/// a . b in 16 interleaved partial sums (vectorises).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// y (m, cols) += inp (m, k) @ W[:, j0..j0+cols], y accumulating over k in order.
fn small_m_range(y: &mut [f32], inp: &[f32], w: &[f32], mkn: (usize, usize, usize), j0: usize, cols: usize) {
    small_m_range_on(isa::active(), y, inp, w, mkn, j0, cols)
}

/// [`small_m_range`] with the kernels of `set` (which this CPU must support); every set
/// gives the plain loop's bits.
fn small_m_range_on(
    set: KernelSet,
    y: &mut [f32],
    inp: &[f32],
    w: &[f32],
    mkn: (usize, usize, usize),
    j0: usize,
    cols: usize,
) {
    assert!(set.supported());
    match set {
        // SAFETY: the CPU has the set's features (asserted); the kernels check the bounds.
        #[cfg(target_arch = "x86_64")]
        KernelSet::Avx512 if cols.is_multiple_of(NC) => unsafe { super::avx512::small_m(y, inp, w, mkn, j0, cols) },
        #[cfg(target_arch = "x86_64")]
        KernelSet::Avx2 if cols.is_multiple_of(NC) => unsafe { super::avx2::small_m(y, inp, w, mkn, j0, cols) },
        _ => small_m_plain(y, inp, w, mkn, j0, cols),
    }
}

/// [`small_m_range`] as plain loops (other targets, ragged widths, and the tests' reference).
fn small_m_plain(y: &mut [f32], inp: &[f32], w: &[f32], (m, k, n): (usize, usize, usize), j0: usize, cols: usize) {
    for kk in 0..k {
        let wr = &w[kk * n + j0..kk * n + j0 + cols];
        for i in 0..m {
            let xv = inp[i * k + kk];
            for (a, &b) in y[i * cols..(i + 1) * cols].iter_mut().zip(wr) {
                *a = xv.mul_add(b, *a);
            }
        }
    }
}

struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

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

multiversion! {
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
}

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
            for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
                let want = naive(&inp, &w, (m, k, n), layout);
                let mut out = vec![1f32; m * n];
                matmul_forward(&mut out, &inp, &w, None, (m, k, n), layout, true);
                for i in 0..m * n {
                    assert!((out[i] - want[i] - 1.0).abs() < 1e-4, "({m},{k},{n}) {layout:?} at {i}");
                }
            }
        }
    }

    #[test]
    fn small_m_kernel_is_bit_identical_to_the_plain_loop() {
        // every row count 1..=16 (register blocks of 8 plus a ragged rest), 16-wide tails,
        // k not a multiple of the kernel's row block
        for (m, k, n, j0, cols) in
            [(8, 256, 768, 384, 384), (13, 37, 96, 16, 80), (1, 9, 48, 0, 48), (16, 64, 64, 32, 32)]
        {
            let inp: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 313.0).collect();
            let w: Vec<f32> = (0..k * n).map(|i| ((i * 104_729 % 997) as f32 - 498.0) / 211.0).collect();
            let mut plain = vec![0.25f32; m * cols];
            small_m_plain(&mut plain, &inp, &w, (m, k, n), j0, cols);
            for set in KernelSet::available() {
                let mut fast = vec![0.25f32; m * cols];
                small_m_range_on(set, &mut fast, &inp, &w, (m, k, n), j0, cols);
                assert!(fast.iter().zip(&plain).all(|(a, b)| a.to_bits() == b.to_bits()), "{set} ({m},{k},{n})");
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
