//! The decoding state of linear attention: S = sum phi(k_s) v_s^T (hs x hs) and
//! z = sum phi(k_s) (hs) per batch row and head, whatever the position. One step adds the new
//! key and value and reads the new query against the sums: constant work per position.

use rayon::prelude::*;

use super::linear::{EPS, phi};
use super::view::SeqView;
use crate::backend::isa::multiversion;

/// S and z of B sequences and nh heads.
#[derive(Clone, Debug)]
pub struct LinearState {
    nh: usize,
    hs: usize,
    s: Vec<f32>,
    z: Vec<f32>,
}

impl LinearState {
    pub fn new(b: usize, nh: usize, hs: usize) -> Self {
        LinearState { nh, hs, s: vec![0.0; b * nh * hs * hs], z: vec![0.0; b * nh * hs] }
    }

    pub fn bytes(&self) -> usize {
        4 * (self.s.len() + self.z.len())
    }

    /// Adds the keys and values of row r of (B, t, nh*hs) views, then writes the attention of
    /// that row's queries into out (B, nh*hs): one step of the recurrent form.
    pub fn step(&mut self, out: &mut [f32], q: SeqView, k: SeqView, v: SeqView, r: usize) {
        let (nh, hs) = (self.nh, self.hs);
        let b = self.z.len() / (nh * hs);
        // one task per thread: a step of one head is a few hundred FMAs
        let per_task = (b * nh).div_ceil(rayon::current_num_threads().max(1));
        self.s
            .par_chunks_mut(per_task * hs * hs)
            .zip(self.z.par_chunks_mut(per_task * hs))
            .zip(out[..b * nh * hs].par_chunks_mut(per_task * hs))
            .enumerate()
            .for_each(|(task, ((s, z), o))| {
                let mut scratch = vec![0f32; 3 * hs];
                let heads = s.chunks_mut(hs * hs).zip(z.chunks_mut(hs)).zip(o.chunks_mut(hs));
                for (i, ((s, z), o)) in heads.enumerate() {
                    let bh = task * per_task + i;
                    let (bi, col) = (bh / nh, (bh % nh) * hs);
                    let qkv = (q.row(bi, r, col, hs), k.row(bi, r, col, hs), v.row(bi, r, col, hs));
                    step_head(s, z, o, qkv, &mut scratch);
                }
            });
    }

    /// Forgets every position.
    pub fn reset(&mut self) {
        self.s.fill(0.0);
        self.z.fill(0.0);
    }
}

multiversion! {
/// One head: S += phi(k) v^T, z += phi(k), then y = phi(q) S / (phi(q) . z + eps), row i of
/// S updated and read in the same pass; y sums the even rows and the odd rows apart (two
/// FMA chains), then adds them. `scratch` (3 hs) holds phi(q), phi(k) and the odd sum.
fn step_head(s: &mut [f32], z: &mut [f32], y: &mut [f32], qkv: (&[f32], &[f32], &[f32]), scratch: &mut [f32]) {
    let (q, k, v) = qkv;
    let hs = z.len();
    let (fq, rest) = scratch.split_at_mut(hs);
    let (fk, y1) = rest.split_at_mut(hs);
    fq.iter_mut().zip(q).for_each(|(o, &x)| *o = phi(x));
    fk.iter_mut().zip(k).for_each(|(o, &x)| *o = phi(x));
    let mut den = 0f32;
    for i in 0..hs {
        z[i] += fk[i];
        den += fq[i] * z[i];
    }
    match hs {
        16 => rows_fixed::<16>(s, y, y1, fq, fk, v),
        32 => rows_fixed::<32>(s, y, y1, fq, fk, v),
        64 => rows_fixed::<64>(s, y, y1, fq, fk, v),
        _ => rows_any(s, y, y1, fq, fk, v),
    }
    let inv = 1.0 / (den + EPS);
    y.iter_mut().zip(y1.iter()).for_each(|(o, &b)| *o = (*o + b) * inv);
}
}

/// S_i += phi(k)_i v and y0 (even i) / y1 (odd i) += phi(q)_i S_i for a head size known at
/// compile time (the accumulators stay in registers).
#[inline(always)]
fn rows_fixed<const HS: usize>(s: &mut [f32], y0: &mut [f32], y1: &mut [f32], fq: &[f32], fk: &[f32], v: &[f32]) {
    let (mut a0, mut a1) = ([0f32; HS], [0f32; HS]);
    let v: &[f32; HS] = v[..HS].try_into().unwrap();
    // rows two at a time (HS is even): row 2i into a0, row 2i + 1 into a1
    for (i, pair) in s[..HS * HS].chunks_exact_mut(2 * HS).enumerate() {
        let (r0, r1) = pair.split_at_mut(HS);
        let (r0, r1): (&mut [f32; HS], &mut [f32; HS]) = (r0.try_into().unwrap(), r1.try_into().unwrap());
        let (k0, k1, q0, q1) = (fk[2 * i], fk[2 * i + 1], fq[2 * i], fq[2 * i + 1]);
        for j in 0..HS {
            r0[j] = k0.mul_add(v[j], r0[j]);
            a0[j] = q0.mul_add(r0[j], a0[j]);
            r1[j] = k1.mul_add(v[j], r1[j]);
            a1[j] = q1.mul_add(r1[j], a1[j]);
        }
    }
    y0[..HS].copy_from_slice(&a0);
    y1[..HS].copy_from_slice(&a1);
}

/// [`rows_fixed`] for any head size.
#[inline(always)]
fn rows_any(s: &mut [f32], y0: &mut [f32], y1: &mut [f32], fq: &[f32], fk: &[f32], v: &[f32]) {
    let hs = fq.len();
    y0.fill(0.0);
    y1.fill(0.0);
    for (i, row) in s[..hs * hs].chunks_exact_mut(hs).enumerate() {
        let acc = if i % 2 == 0 { &mut *y0 } else { &mut *y1 };
        for ((sj, &vj), aj) in row.iter_mut().zip(v).zip(acc.iter_mut()) {
            *sj = fk[i].mul_add(vj, *sj);
            *aj = fq[i].mul_add(*sj, *aj);
        }
    }
}
