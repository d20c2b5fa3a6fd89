//! Inverted dropout with counter-based masks: element i of a site (one tensor of one
//! micro-batch: the embeddings, a layer's attention probabilities, a residual branch) is
//! kept when a hash of (the site's key, i) lands at or above p in [0, 1), and is then scaled
//! by 1 / (1 - p) (transformers' `nn.Dropout` in training). Nothing is stored: the backward
//! recomputes the same mask from the same key, and a run resumed at step s draws the masks
//! an uninterrupted run draws (the key is a function of the seed, the step and the site).
//!
//! Forward y = x * m / (1 - p), m in {0, 1}; backward dx = dy * m / (1 - p): [`Dropout::apply`]
//! is both.

use rayon::prelude::*;

/// One site's dropout: probability `p` of zeroing an element, and the key of its mask.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    pub p: f32,
    pub key: u64,
    /// p as a 32-bit threshold, and the survivors' scale 1 / (1 - p).
    threshold: u32,
    scale: f32,
}

/// splitmix64's finaliser: a bijective 64-bit mix.
#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Dropout {
    /// None when p is 0 (no dropout at all, not a mask of ones).
    pub fn new(p: f32, key: u64) -> Option<Self> {
        (p > 0.0).then(|| {
            let threshold = ((p as f64) * 4_294_967_296.0).min(u32::MAX as f64) as u32;
            Dropout { p, key: mix(key), threshold, scale: 1.0 / (1.0 - p) }
        })
    }

    /// The dropout of sub-site `id` (a layer, a branch), with its own mask.
    pub fn site(self, id: u64) -> Self {
        Dropout { key: mix(self.key ^ mix(id.wrapping_add(0x9e37_79b9_7f4a_7c15))), ..self }
    }

    /// The mask's parts, for an engine that computes it elsewhere: (key, threshold, scale);
    /// element i is kept, times scale, when the high half of the hash of (key, i) is at
    /// least the threshold ([`Dropout::factor`]).
    pub fn parts(&self) -> (u64, u32, f32) {
        (self.key, self.threshold, self.scale)
    }

    /// The factor of element i: 0 (dropped) or 1 / (1 - p).
    #[inline(always)]
    pub fn factor(&self, i: u64) -> f32 {
        let h = mix(self.key.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        if (h >> 32) as u32 >= self.threshold { self.scale } else { 0.0 }
    }

    /// x[i] *= factor(i): the forward on activations and the backward on their gradients.
    pub fn apply(&self, x: &mut [f32]) {
        const CHUNK: usize = 1 << 14;
        x.par_chunks_mut(CHUNK).enumerate().for_each(|(c, xs)| {
            let base = (c * CHUNK) as u64;
            for (j, v) in xs.iter_mut().enumerate() {
                *v *= self.factor(base + j as u64);
            }
        });
    }
}

/// The three dropout sites of HF's ImageGPT in training, for one micro-batch (None where the
/// probability is 0).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DropoutSites {
    /// `embd_pdrop`: on wte + wpe.
    pub embd: Option<Dropout>,
    /// `attn_pdrop`: on every layer's attention probabilities (after the softmax).
    pub attn: Option<Dropout>,
    /// `resid_pdrop`: on every layer's attention output (after c_proj) and MLP output.
    pub resid: Option<Dropout>,
}

impl DropoutSites {
    /// The sites of a micro-batch whose masks derive from `key`.
    pub fn new(key: u64, embd_p: f32, attn_p: f32, resid_p: f32) -> Self {
        let base = mix(key);
        DropoutSites {
            embd: Dropout::new(embd_p, base ^ 1),
            attn: Dropout::new(attn_p, base ^ 2),
            resid: Dropout::new(resid_p, base ^ 3),
        }
    }

    /// Layer l's attention-probability dropout.
    pub fn attn_of(&self, l: usize) -> Option<Dropout> {
        self.attn.map(|d| d.site(l as u64))
    }

    /// Layer l's residual dropout of the attention branch (`mlp: false`) or the MLP branch.
    pub fn resid_of(&self, l: usize, mlp: bool) -> Option<Dropout> {
        self.resid.map(|d| d.site(2 * l as u64 + mlp as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_one_minus_p_scaled_and_repeats_its_mask() {
        for p in [0.1f32, 0.5, 0.9] {
            let d = Dropout::new(p, 42).unwrap();
            let mut x = vec![1f32; 200_000];
            d.apply(&mut x);
            let kept = x.iter().filter(|&&v| v != 0.0).count() as f64 / x.len() as f64;
            assert!((kept - (1.0 - p as f64)).abs() < 0.005, "p {p}: kept {kept}");
            assert!(x.iter().all(|&v| v == 0.0 || (v - 1.0 / (1.0 - p)).abs() < 1e-6));
            let mean = x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
            assert!((mean - 1.0).abs() < 0.02, "p {p}: mean {mean}");
            // the same key gives the same mask; another site another one
            let mut y = vec![1f32; 200_000];
            d.apply(&mut y);
            assert_eq!(x, y);
            let mut z = vec![1f32; 200_000];
            d.site(1).apply(&mut z);
            let same = x.iter().zip(&z).filter(|(a, b)| (**a == 0.0) == (**b == 0.0)).count();
            assert!(same < 200_000 * 99 / 100);
        }
        assert!(Dropout::new(0.0, 1).is_none());
    }
}
