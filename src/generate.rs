//! Decoding loops. `greedy_uncached` recomputes the whole prefix at every step: slow, but
//! the plainest possible reference (HF `generate(do_sample=False)`), against which the
//! KV-cached sampler is checked.

use crate::backend::loss::argmax;
use crate::error::{Error, Result};
use crate::model::{ImageGpt, Logits, ModelKind, Workspace};

/// Extends each of the B prompts (B, T0) by `steps` greedy tokens, without a cache.
///
/// # Shapes
/// prompts: (B, T0) -> returns (B, T0 + steps).
pub fn greedy_uncached(model: &ImageGpt, prompts: &[u32], b: usize, steps: usize) -> Result<Vec<u32>> {
    if model.kind != ModelKind::CausalLm {
        return Err(Error::Invalid("greedy decoding needs a causal model with an lm_head".into()));
    }
    if !model.config.is_causal() {
        return Err(Error::Invalid("greedy decoding needs a GPT model; this one is BERT (bidirectional)".into()));
    }
    let t0 = prompts.len() / b.max(1);
    let v = model.config.n_colors();
    let mut seqs: Vec<Vec<u32>> = prompts.chunks(t0).map(|c| c.to_vec()).collect();
    let mut ws = Workspace::new();
    for step in 0..steps {
        let t = t0 + step;
        let flat: Vec<u32> = seqs.iter().flatten().copied().collect();
        model.forward(&mut ws, &flat, b, t, Logits::Last, false)?;
        for (i, s) in seqs.iter_mut().enumerate() {
            s.push(argmax(&ws.logits[i * v..(i + 1) * v]));
        }
    }
    Ok(seqs.concat())
}
