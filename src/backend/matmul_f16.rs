//! Half-precision weights packed for decoding products: out (m, n) = inp (m, k) @ W (k, n)
//! for a few rows m. Such a product streams W from memory once, so its speed is the speed
//! of reading W: stored in f16 it is half the bytes, and packed in column panels of 32
//! ((n/32, k, 32), one 64-byte line per row of a panel) it is read front to back, while each
//! panel's (m, 32) accumulators stay in registers for the whole of k.

use rayon::prelude::*;

use super::elem::{Elem, to_f16};
use super::isa::{self, KernelSet};

/// Columns per panel: two AVX-512 vectors of f32, one cache line of f16.
pub const PANEL: usize = 32;
/// Output rows per register block (2 x ROWS accumulators).
const ROWS: usize = 8;

/// A (k, n) weight matrix stored as `E` (f16 or f32), packed as (ceil(n/32), k, 32); columns
/// past n are zero.
#[derive(Clone, Debug)]
pub struct Packed<E> {
    pub k: usize,
    pub n: usize,
    data: Vec<E>,
}

/// Half-precision packed weights.
pub type PackedF16 = Packed<half::f16>;
/// f32 packed weights: the f32 parameters' exact values, in the panel layout.
pub type PackedF32 = Packed<f32>;

/// How a packed element is made from an f32 parameter.
pub trait PackElem: Elem + Default {
    fn from_f32(x: f32) -> Self;
}
impl PackElem for half::f16 {
    fn from_f32(x: f32) -> Self {
        to_f16(x)
    }
}
impl PackElem for f32 {
    fn from_f32(x: f32) -> Self {
        x
    }
}

impl<E: PackElem> Packed<E> {
    /// Packs a row-major (k, n) f32 matrix (HF Conv1D layout), rounding to half precision
    /// (saturating at +-65504).
    pub fn pack(w: &[f32], k: usize, n: usize) -> Self {
        assert!(w.len() >= k * n, "Packed::pack: {} values for a {k} x {n} matrix", w.len());
        let panels = n.div_ceil(PANEL);
        let mut data = vec![E::default(); panels * k * PANEL];
        for (p, panel) in data.chunks_exact_mut(k * PANEL).enumerate() {
            for (kk, row) in panel.chunks_exact_mut(PANEL).enumerate() {
                let cols = PANEL.min(n - p * PANEL);
                for (d, &x) in row.iter_mut().zip(&w[kk * n + p * PANEL..kk * n + p * PANEL + cols]) {
                    *d = E::from_f32(x);
                }
            }
        }
        Packed { k, n, data }
    }

    pub fn bytes(&self) -> usize {
        std::mem::size_of::<E>() * self.data.len()
    }
}

/// The values a packed matrix holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackAs {
    /// The f32 values as they are (the same products as the unpacked matrix).
    F32,
    /// IEEE half (half the bytes to read; products move by about 1e-3).
    F16,
}

/// The CPU engine's packed matrix: f32 or f16 panels.
#[derive(Clone, Debug)]
pub enum PackedMatrix {
    F32(PackedF32),
    F16(PackedF16),
}

impl PackedMatrix {
    /// Packs a row-major (k, n) matrix (HF Conv1D layout) as `elem`.
    pub fn pack(w: &[f32], k: usize, n: usize, elem: PackAs) -> Self {
        match elem {
            PackAs::F32 => PackedMatrix::F32(Packed::pack(w, k, n)),
            PackAs::F16 => PackedMatrix::F16(Packed::pack(w, k, n)),
        }
    }

    /// out (m, n) (+)= inp (m, k) @ W (+ bias): [`matmul_packed`] on either element.
    pub fn product(&self, out: &mut [f32], inp: &[f32], bias: Option<&[f32]>, m: usize, accumulate: bool) {
        match self {
            PackedMatrix::F32(p) => matmul_packed(out, inp, p, bias, m, accumulate),
            PackedMatrix::F16(p) => matmul_packed(out, inp, p, bias, m, accumulate),
        }
    }
}

/// out (m, n) = inp (m, k) @ W + bias, or out += ... when `accumulate`. Each output
/// accumulates over k in order from zero (f32 FMAs), then joins the bias and `out`, so the
/// result does not depend on the number of threads.
///
/// # Shapes
/// inp: (m, k); bias: (n); out: (m, n).
pub fn matmul_packed<E: PackElem>(
    out: &mut [f32],
    inp: &[f32],
    w: &Packed<E>,
    bias: Option<&[f32]>,
    m: usize,
    accumulate: bool,
) {
    let (k, n) = (w.k, w.n);
    assert!(out.len() >= m * n && inp.len() >= m * k && bias.is_none_or(|b| b.len() == n));
    let panels = n.div_ceil(PANEL);
    let per_task = panels.div_ceil(rayon::current_num_threads().max(1));
    let out_ptr = OutPtr(out.as_mut_ptr());
    let out_ptr = &out_ptr;
    (0..panels).into_par_iter().with_min_len(per_task).for_each(|p| {
        let j0 = p * PANEL;
        let cols = PANEL.min(n - j0);
        let panel = &w.data[p * k * PANEL..(p + 1) * k * PANEL];
        let mut y = [0f32; ROWS * PANEL];
        for r0 in (0..m).step_by(ROWS) {
            let rows = ROWS.min(m - r0);
            panel_product(&mut y[..rows * PANEL], &inp[r0 * k..(r0 + rows) * k], panel, k);
            for i in 0..rows {
                // SAFETY: panel p owns columns j0..j0+cols of every output row.
                let dst = unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add((r0 + i) * n + j0), cols) };
                store(dst, &y[i * PANEL..i * PANEL + cols], bias.map(|b| &b[j0..j0 + cols]), accumulate);
            }
        }
    });
}

/// dst = (dst +) bias + y, the bias 0 when absent (one loop per case, so each vectorises).
fn store(dst: &mut [f32], y: &[f32], bias: Option<&[f32]>, accumulate: bool) {
    match (bias, accumulate) {
        (Some(b), true) => dst.iter_mut().zip(y).zip(b).for_each(|((d, &a), &b)| *d = *d + b + a),
        (Some(b), false) => dst.iter_mut().zip(y).zip(b).for_each(|((d, &a), &b)| *d = b + a),
        (None, true) => dst.iter_mut().zip(y).for_each(|(d, &a)| *d = *d + 0.0 + a),
        (None, false) => dst.iter_mut().zip(y).for_each(|(d, &a)| *d = 0.0 + a),
    }
}

struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// y (rows, 32) = x (rows, k) @ panel (k, 32), rows <= ROWS.
fn panel_product<E: Elem>(y: &mut [f32], x: &[f32], panel: &[E], k: usize) {
    panel_product_on(isa::active(), y, x, panel, k)
}

/// [`panel_product`] with the kernels of `set` (which this CPU must support); every set
/// accumulates each output over k in order from zero: the plain loop's bits.
fn panel_product_on<E: Elem>(set: KernelSet, y: &mut [f32], x: &[f32], panel: &[E], k: usize) {
    let rows = y.len() / PANEL;
    assert!(rows <= ROWS && x.len() >= rows * k && panel.len() >= k * PANEL && set.supported());
    match set {
        // SAFETY: the CPU has the set's features (asserted); the kernels check the bounds.
        #[cfg(target_arch = "x86_64")]
        KernelSet::Avx512 => unsafe { super::avx512::panel(y, x, panel, k) },
        #[cfg(target_arch = "x86_64")]
        KernelSet::Avx2 => unsafe { super::avx2::panel::<E, PANEL>(y, x, panel, k) },
        _ => panel_plain(y, x, panel, k),
    }
}

/// [`panel_product`] as plain loops (other targets, and the tests' reference).
fn panel_plain<E: Elem>(y: &mut [f32], x: &[f32], panel: &[E], k: usize) {
    for (i, yr) in y.chunks_exact_mut(PANEL).enumerate() {
        let mut acc = [0f32; PANEL];
        for kk in 0..k {
            let xv = x[i * k + kk];
            for (a, w) in acc.iter_mut().zip(&panel[kk * PANEL..(kk + 1) * PANEL]) {
                *a = xv.mul_add(w.f32(), *a);
            }
        }
        yr.copy_from_slice(&acc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a float64 product of the f16-rounded weights: every row count 1..=19 (register
    /// blocks of 8 and ragged ones), n not a multiple of the panel, bias and accumulation;
    /// k below and above the AVX2 kernel's 64-row blocks.
    #[test]
    fn packed_product_matches_the_rounded_weights() {
        for (k, n) in [(37, 72), (150, 64)] {
            packed_case(k, n);
        }
    }

    fn packed_case(k: usize, n: usize) {
        let w: Vec<f32> = (0..k * n).map(|i| ((i * 104_729 % 997) as f32 - 498.0) / 211.0).collect();
        let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.01).collect();
        let packed = PackedF16::pack(&w, k, n);
        for m in 1..=19 {
            let inp: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 313.0).collect();
            let mut out = vec![0.5f32; m * n];
            matmul_packed(&mut out, &inp, &packed, Some(&bias), m, true);
            for i in 0..m {
                for j in 0..n {
                    let dot: f64 = (0..k).map(|kk| inp[i * k + kk] as f64 * to_f16(w[kk * n + j]).to_f64()).sum();
                    let want = 0.5 + bias[j] as f64 + dot;
                    assert!((out[i * n + j] as f64 - want).abs() < 1e-4, "m={m} ({i},{j})");
                }
            }
            // and the vector kernel gives the plain loop's bits
            let rows = m.min(ROWS);
            let mut plain = vec![1f32; rows * PANEL];
            panel_plain(&mut plain, &inp, &packed.data[..k * PANEL], k);
            for set in KernelSet::available() {
                let mut fast = vec![0f32; rows * PANEL];
                panel_product_on(set, &mut fast, &inp, &packed.data[..k * PANEL], k);
                assert!(fast.iter().zip(&plain).all(|(a, b)| a.to_bits() == b.to_bits()), "{set} m={m}");
            }
        }
    }
}
