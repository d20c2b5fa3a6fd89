//! Sampling and completion with the KV cache: one prefill over the prompt, then one token
//! per step for the whole batch. Known pixels (completion) are forced instead of sampled.
//!
//! ```text
//! igpt sample   --model DIR --num 16 --out grid.png        # from [SOS]
//! igpt complete --model DIR --images a.png --out grid.png  # keep the top half, sample the rest
//! ```

use crate::backend::Backend;
use crate::backend::loss::argmax;
use crate::error::{Error, Result};
use crate::model::{ImageGpt, KvCache, KvPrecision, Logits, ModelKind, Workspace};
use crate::rng::Rng;

/// How a token is drawn from a row of logits.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// Divides the logits; 1.0 samples the model's distribution.
    pub temperature: f64,
    /// Keep only the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1.0 = all).
    pub top_p: f64,
    /// Take the most likely token (ignores the rest).
    pub greedy: bool,
    /// How the KV cache stores keys and values (f32 exact, f16 half the memory).
    pub kv_cache: KvPrecision,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling { temperature: 1.0, top_k: 0, top_p: 1.0, greedy: false, kv_cache: KvPrecision::F32 }
    }
}

impl Sampling {
    pub fn validate(&self) -> Result<()> {
        if self.temperature.is_nan() || self.temperature <= 0.0 || self.temperature.is_infinite() {
            return Err(Error::Invalid(format!("temperature must be > 0 (got {})", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Invalid(format!("top-p must be in (0, 1] (got {})", self.top_p)));
        }
        Ok(())
    }
}

/// Draws tokens from logits with a seeded RNG (same seed, same tokens).
pub struct Sampler {
    pub rng: Rng,
    pub sampling: Sampling,
    probs: Vec<(f64, u32)>,
}

impl Sampler {
    pub fn new(seed: u64, sampling: Sampling) -> Self {
        Sampler { rng: Rng::new(seed), sampling, probs: Vec::new() }
    }

    /// One token from one row of logits (V).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let s = &self.sampling;
        if s.greedy {
            return argmax(logits);
        }
        let mx = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        self.probs.clear();
        self.probs.extend(logits.iter().enumerate().map(|(i, &x)| (((x as f64 - mx) / s.temperature).exp(), i as u32)));
        let filtered = s.top_k > 0 && s.top_k < logits.len() || s.top_p < 1.0;
        if filtered {
            // Most likely first; ties keep the lower id first.
            self.probs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            if s.top_k > 0 {
                self.probs.truncate(s.top_k);
            }
            if s.top_p < 1.0 {
                let total: f64 = self.probs.iter().map(|p| p.0).sum();
                let mut acc = 0.0;
                let mut keep = self.probs.len();
                for (i, p) in self.probs.iter().enumerate() {
                    acc += p.0 / total;
                    if acc >= s.top_p {
                        keep = i + 1;
                        break;
                    }
                }
                self.probs.truncate(keep);
            }
        }
        let total: f64 = self.probs.iter().map(|p| p.0).sum();
        let mut u = self.rng.uniform() * total;
        for &(p, i) in &self.probs {
            if u < p {
                return i;
            }
            u -= p;
        }
        self.probs.last().map_or(0, |p| p.1)
    }
}

/// What is known of each image: `known[b][i]` = Some(token) forces pixel i of row b.
/// Sampling fills the rest. All rows have n_positions pixels.
pub struct Prompt {
    pub known: Vec<Vec<Option<u32>>>,
}

impl Prompt {
    /// Nothing known: unconditional samples.
    pub fn empty(batch: usize, n: usize) -> Self {
        Prompt { known: vec![vec![None; n]; batch] }
    }

    /// The first `keep` pixels of each image known (raster order).
    pub fn prefix(images: &[Vec<u32>], keep: usize) -> Self {
        Prompt {
            known: images
                .iter()
                .map(|im| im.iter().enumerate().map(|(i, &t)| (i < keep).then_some(t)).collect())
                .collect(),
        }
    }

    /// Longest prefix known in every row.
    fn common_prefix(&self) -> usize {
        self.known.iter().map(|row| row.iter().take_while(|k| k.is_some()).count()).min().unwrap_or(0)
    }
}

/// Generates full images (B, n_positions) for a prompt: prefill [SOS] + the common known
/// prefix in one pass, then one cached step per pixel, forcing known pixels. `progress` is
/// called after each step with (pixels done, pixels total).
pub fn generate<B: Backend>(
    model: &ImageGpt<B>,
    prompt: &Prompt,
    sampler: &mut Sampler,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<Vec<u32>>> {
    if model.kind != ModelKind::CausalLm {
        return Err(Error::Invalid("sampling needs a causal model with an lm_head".into()));
    }
    sampler.sampling.validate()?;
    if model.config.attention == crate::config::AttentionKind::Linear && sampler.sampling.kv_cache != KvPrecision::F32 {
        return Err(Error::Invalid(format!(
            "--kv-cache {:?} does not apply to linear attention: its decoding state (S and z per head) is f32 and does not grow with the image; use --kv-cache f32",
            sampler.sampling.kv_cache
        )
        .to_lowercase()));
    }
    let (b, n, v) = (prompt.known.len(), model.config.n_positions, model.config.n_colors());
    if b == 0 {
        return Ok(Vec::new());
    }
    if let Some(row) = prompt.known.iter().find(|r| r.len() != n) {
        return Err(Error::Invalid(format!("prompt has {} pixels, the model {} (n_positions)", row.len(), n)));
    }
    let be = &model.be;
    let mut cache = KvCache::on(be, &model.config, b, sampler.sampling.kv_cache);
    let mut ws = Workspace::<B>::new();
    let mut out: Vec<Vec<u32>> = vec![Vec::with_capacity(n); b];
    // Prefill: [SOS] + the common known prefix, minus the last pixel (it never needs to be fed).
    let pre = prompt.common_prefix().min(n - 1);
    let sos = model.config.sos_token();
    let mut input: Vec<u32> = Vec::with_capacity(b * (pre + 1));
    for (row, o) in prompt.known.iter().zip(out.iter_mut()) {
        input.push(sos);
        for k in row.iter().take(pre) {
            let tok = k.expect("inside the common prefix");
            input.push(tok);
            o.push(tok);
        }
    }
    model.forward_cached(&mut ws, &mut cache, &input, pre + 1, Logits::Last)?;
    progress(pre, n);
    // Each step: choose pixel i of every row from the logits at position i, then feed it.
    for i in pre..n {
        let mut next = Vec::with_capacity(b);
        let logits = be.download(&ws.logits, 0..b * v)?;
        for (r, o) in out.iter_mut().enumerate() {
            let tok = match prompt.known[r][i] {
                Some(t) => t,
                None => sampler.sample(&logits[r * v..(r + 1) * v]),
            };
            o.push(tok);
            next.push(tok);
        }
        if i + 1 < n {
            model.forward_cached(&mut ws, &mut cache, &next, 1, Logits::Last)?;
        }
        progress(i + 1, n);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_and_top_p_restrict_the_support() {
        let logits = [0.0f32, 3.0, 2.9, -1.0, 1.0];
        let mut s = Sampler::new(1, Sampling { top_k: 2, ..Default::default() });
        for _ in 0..200 {
            let t = s.sample(&logits);
            assert!(t == 1 || t == 2, "{t}");
        }
        let mut s = Sampler::new(1, Sampling { top_p: 0.3, ..Default::default() });
        assert!((0..100).all(|_| s.sample(&logits) == 1));
        let mut s = Sampler::new(1, Sampling { greedy: true, ..Default::default() });
        assert_eq!(s.sample(&logits), 1);
        // Frequencies follow the softmax: p(1) = e^3 / sum.
        let mut s = Sampler::new(9, Sampling::default());
        let z: f64 = logits.iter().map(|&x| (x as f64).exp()).sum();
        let n = 20_000;
        let hits = (0..n).filter(|_| s.sample(&logits) == 1).count() as f64 / n as f64;
        assert!((hits - 3f64.exp() / z).abs() < 0.015, "{hits}");
        assert!(Sampling { temperature: 0.0, ..Default::default() }.validate().is_err());
    }
}
