//! Batches from a token file: a seeded permutation per epoch and a cursor (epoch, position)
//! that a checkpoint stores, so a resumed run sees exactly the batches it would have seen.

use serde::{Deserialize, Serialize};

use crate::data::tokens::TokenFile;
use crate::rng::Rng;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: u64,
    pub pos: usize,
}

/// The order of epoch `epoch`: a Fisher-Yates shuffle seeded by (seed, epoch).
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng =
        Rng::new(seed.wrapping_mul(0x9e37_79b9).wrapping_add(epoch.wrapping_mul(0x7f4a_7c15)).wrapping_add(1));
    let mut idx: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        idx.swap(i, rng.below(i as u64 + 1) as usize);
    }
    idx
}

/// Fills `tokens` (B, T) with the next `b` images, advances the cursor, and returns the
/// images' indices in the file (for their labels).
pub fn next_batch(
    data: &TokenFile,
    cursor: &mut Cursor,
    order: &mut Vec<usize>,
    seed: u64,
    b: usize,
    tokens: &mut Vec<u32>,
) -> Vec<usize> {
    let t = data.seq_len();
    tokens.resize(b * t, 0);
    if order.len() != data.count {
        *order = epoch_order(data.count, seed, cursor.epoch);
    }
    let mut picked = Vec::with_capacity(b);
    for i in 0..b {
        if cursor.pos >= data.count {
            cursor.epoch += 1;
            cursor.pos = 0;
            *order = epoch_order(data.count, seed, cursor.epoch);
        }
        let idx = order[cursor.pos];
        data.image_into(idx, &mut tokens[i * t..(i + 1) * t]);
        picked.push(idx);
        cursor.pos += 1;
    }
    picked
}

/// Mirrors each image left-right with probability 1/2.
pub fn hflip(tokens: &mut [u32], w: usize, h: usize, rng: &mut Rng) {
    for img in tokens.chunks_mut(w * h) {
        if rng.below(2) == 1 {
            for row in img.chunks_mut(w) {
                row.reverse();
            }
        }
    }
}

/// BERT mask: each position masked independently with probability p; at least one per batch.
pub fn bert_mask(n: usize, p: f64, rng: &mut Rng) -> Vec<bool> {
    let mut m: Vec<bool> = (0..n).map(|_| rng.uniform() < p).collect();
    if !m.iter().any(|&x| x) {
        m[rng.below(n as u64) as usize] = true;
    }
    m
}
