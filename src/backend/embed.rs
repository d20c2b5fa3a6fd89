//! Token + position embeddings.

use rayon::prelude::*;

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
