//! Axial 2D rotary position embedding (`rope_2d`, Heo et al. 2024; architectures.md): in
//! every head, q and k are rotated in place after c_attn, the first half of the head (dims
//! 0..2m, m = hs/4) by the slot's image row, the second half (2m..4m) by its column. Within a
//! half u rotated by coordinate a, for j < m, with phi = a theta^(-j/m):
//!     u'[j] = u[j] cos(phi) - u[j+m] sin(phi),   u'[j+m] = u[j+m] cos(phi) + u[j] sin(phi).
//! The rotation is orthogonal: its backward is the inverse rotation (phi -> -phi) of the
//! gradients of the rotated q and k.

use rayon::prelude::*;

/// The geometry of a rotation call.
#[derive(Clone, Copy, Debug)]
pub struct Rope {
    pub nh: usize,
    pub hs: usize,
    /// Image width W: slot p is at row p div W, column p mod W.
    pub width: usize,
    pub theta: f64,
}

impl Rope {
    /// (cos, sin) of coordinate a for j < m, angles in f64.
    fn table(&self, a: usize, m: usize, sign: f64) -> Vec<(f32, f32)> {
        (0..m)
            .map(|j| {
                let phi = a as f64 * self.theta.powf(-(j as f64) / m as f64);
                (phi.cos() as f32, (sign * phi.sin()) as f32)
            })
            .collect()
    }

    /// Rotates q and k of every head of qkv (B, T, 3C) = [q | k | v] rows for slots
    /// pos0..pos0+T; `inverse` applies the transpose (for gradients).
    pub fn apply(&self, qkv: &mut [f32], t: usize, pos0: usize, inverse: bool) {
        let (hs, c) = (self.hs, self.nh * self.hs);
        let m = hs / 4;
        assert!(hs.is_multiple_of(4) && qkv.len().is_multiple_of(3 * c));
        let sign = if inverse { -1.0 } else { 1.0 };
        let (r0, r1) = (pos0 / self.width, (pos0 + t - 1) / self.width);
        let rows: Vec<Vec<(f32, f32)>> = (r0..=r1).map(|r| self.table(r, m, sign)).collect();
        let cols: Vec<Vec<(f32, f32)>> = (0..self.width).map(|col| self.table(col, m, sign)).collect();
        qkv.par_chunks_mut(3 * c).enumerate().with_min_len(16).for_each(|(i, row)| {
            let p = pos0 + i % t;
            let (rt, ct) = (&rows[p / self.width - r0], &cols[p % self.width]);
            for head in row[..2 * c].chunks_exact_mut(hs) {
                rotate_half(&mut head[..2 * m], rt);
                rotate_half(&mut head[2 * m..], ct);
            }
        });
    }
}

/// u (2m values) rotated pairwise (j, j + m) by the angles of `cs`.
#[inline]
fn rotate_half(u: &mut [f32], cs: &[(f32, f32)]) {
    let m = cs.len();
    let (a, b) = u.split_at_mut(m);
    for ((x, y), &(cos, sin)) in a.iter_mut().zip(b.iter_mut()).zip(cs) {
        let (x0, y0) = (*x, *y);
        *x = x0 * cos - y0 * sin;
        *y = y0 * cos + x0 * sin;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inverse undoes the rotation, slot 0 is the identity, and a rotation keeps norms.
    #[test]
    fn inverse_undoes_and_norms_are_kept() {
        let rope = Rope { nh: 2, hs: 8, width: 5, theta: 100.0 };
        let (b, t, c) = (2, 15, 16);
        let x: Vec<f32> = (0..b * t * 3 * c).map(|i| ((i * 7919 % 101) as f32 - 50.0) / 25.0).collect();
        let mut y = x.clone();
        rope.apply(&mut y, t, 0, false);
        assert_eq!(&y[..2 * c], &x[..2 * c], "slot 0 (row 0, column 0) is not rotated");
        assert_eq!(&y[2 * c..3 * c], &x[2 * c..3 * c], "v is never rotated");
        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
        let r = 7 * 3 * c;
        assert!((norm(&y[r..r + 8]) - norm(&x[r..r + 8])).abs() < 1e-4);
        assert!(y[r..r + 8] != x[r..r + 8]);
        rope.apply(&mut y, t, 0, true);
        assert!(y.iter().zip(&x).all(|(a, b)| (a - b).abs() < 1e-5));
    }
}
