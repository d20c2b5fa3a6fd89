//! Token + position embeddings.

use super::isa::multiversion;
use rayon::prelude::*;

multiversion! {
/// out[b, t] = wte[tokens[b, t]] + wpe[pos0 + t].
///
/// # Shapes
/// tokens: (B, T); wte: (V + 1, C); wpe: (n_positions, C); out: (B, T, C).
/// Tokens must already be checked to be < V + 1 and pos0 + T <= n_positions.
pub fn embed_forward(out: &mut [f32], tokens: &[u32], wte: &[f32], wpe: &[f32], t: usize, pos0: usize, c: usize) {
    out.par_chunks_mut(c).zip(tokens.par_iter()).enumerate().with_min_len(64).for_each(|(i, (o, &tok))| {
        let pos = pos0 + i % t;
        let te = &wte[tok as usize * c..][..c];
        let pe = &wpe[pos * c..][..c];
        for ((o, &a), &b) in o.iter_mut().zip(te).zip(pe) {
            *o = a + b;
        }
    });
}
}

multiversion! {
/// Backward of [`embed_forward`] (position 0 start), with an optional per-token multiplier
/// on the token embedding (BERT: 0 for masked positions).
///
/// # Shapes
/// dout: (B, T, C); tokens: (B, T); dwte: (V + 1, C); dwpe: (n_positions, C).
pub fn embed_backward(
    dwte: &mut [f32],
    dwpe: &mut [f32],
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
            for (d, &gv) in dwte[tok as usize * c..][..c].iter_mut().zip(g) {
                *d += s * gv;
            }
        }
        for (d, &gv) in dwpe[pos * c..][..c].iter_mut().zip(g) {
            *d += gv;
        }
    }
}
}
