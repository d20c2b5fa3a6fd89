//! The KV cache of incremental decoding: one [`KvBlocks`] per layer, preallocated for the
//! whole sequence (no growth per step), plus the number of positions already computed.
//! The attention module owns the layout; callers only create, advance and reset the cache,
//! so an attention variant with another cache can sit behind the same interface.

use crate::backend::attention::KvBlocks;
use crate::config::ImageGptConfig;

#[derive(Clone, Debug)]
pub struct KvCache {
    pub(crate) layers: Vec<KvBlocks>,
    batch: usize,
    len: usize,
}

impl KvCache {
    /// A cache for `batch` sequences of up to n_positions tokens.
    pub fn new(cfg: &ImageGptConfig, batch: usize) -> Self {
        let layers =
            (0..cfg.n_layer).map(|_| KvBlocks::new(batch, cfg.n_head, cfg.head_dim(), cfg.n_positions)).collect();
        KvCache { layers, batch, len: 0 }
    }

    /// Positions already in the cache (the next token's position).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Forgets every position (the memory is kept and overwritten).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }
}
