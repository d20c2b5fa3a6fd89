//! Token + position embeddings: x = s * wte[token] + the slot's rows of the position tables
//! (one table `wpe` for learned_1d, `wpe_row` and `wpe_col` for learned_2d, none for rope_2d).

use std::ops::Range;

use rayon::prelude::*;

use super::isa::multiversion;

/// Which row of a position table slot p reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Axis {
    /// Row p (learned_1d).
    Slot,
    /// The image row p div W.
    Row(usize),
    /// The image column p mod W.
    Col(usize),
}

impl Axis {
    #[inline(always)]
    pub fn of(self, p: usize) -> usize {
        match self {
            Axis::Slot => p,
            Axis::Row(w) => p / w,
            Axis::Col(w) => p % w,
        }
    }
}

multiversion! {
/// out[i] = s_i wte[tokens[i]] + sum of tables[k][axis_k(slot_i)], slot_i = pos0 + i mod t,
/// s_i = token_scale[i] (1 when None; BERT's masked positions have 0).
///
/// # Shapes
/// tokens: (B, T); wte: (V + 1, C); each table: (rows, C); out: (B, T, C).
/// Tokens must already be checked to be < V + 1, and every slot's rows to exist.
#[allow(clippy::too_many_arguments)]
pub fn embed_forward(
    out: &mut [f32],
    tokens: &[u32],
    wte: &[f32],
    token_scale: Option<&[f32]>,
    tables: &[(&[f32], Axis)],
    t: usize,
    pos0: usize,
    c: usize,
) {
    out.par_chunks_mut(c).zip(tokens.par_iter()).enumerate().with_min_len(64).for_each(|(i, (o, &tok))| {
        let pos = pos0 + i % t;
        let te = &wte[tok as usize * c..][..c];
        let s = token_scale.map_or(1.0, |s| s[i]);
        if s == 1.0 {
            o.copy_from_slice(te);
        } else {
            o.iter_mut().zip(te).for_each(|(o, &w)| *o = s * w);
        }
        for &(table, axis) in tables {
            let pe = &table[axis.of(pos) * c..][..c];
            o.iter_mut().zip(pe).for_each(|(o, &p)| *o += p);
        }
    });
}
}

multiversion! {
/// Backward of [`embed_forward`] (position 0 start) into a gradient arena: the token rows at
/// `wte` get s_i dout_i, each table at its range gets dout_i at the slot's row.
///
/// # Shapes
/// dout: (B, T, C); tokens: (B, T); grads holds (V + 1, C) at `wte` and (rows, C) per table.
#[allow(clippy::too_many_arguments)]
pub fn embed_backward(
    grads: &mut [f32],
    wte: Range<usize>,
    tables: &[(Range<usize>, Axis)],
    dout: &[f32],
    tokens: &[u32],
    token_scale: Option<&[f32]>,
    t: usize,
    c: usize,
) {
    for (i, (g, &tok)) in dout.chunks_exact(c).zip(tokens).enumerate() {
        let s = token_scale.map_or(1.0, |m| m[i]);
        let pos = i % t;
        if s != 0.0 {
            let at = wte.start + tok as usize * c;
            for (d, &gv) in grads[at..at + c].iter_mut().zip(g) {
                *d += s * gv;
            }
        }
        for (range, axis) in tables {
            let at = range.start + axis.of(pos) * c;
            for (d, &gv) in grads[at..at + c].iter_mut().zip(g) {
                *d += gv;
            }
        }
    }
}
}
