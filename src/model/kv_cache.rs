//! The KV cache of incremental decoding: one decoding state per layer (dense: keys and values
//! of the whole sequence, preallocated; local_2d: a ring of the rows its window reaches),
//! plus the number of positions already computed.
//! The attention module owns the layout and the engine holds the states; callers only
//! create, advance and reset the cache, so an attention variant with another cache can sit
//! behind the same interface.

use crate::backend::attention::{DecodeInfo, KvPrecision};
use crate::backend::{Backend, Cpu};
use crate::config::ImageGptConfig;

#[derive(Clone, Debug)]
pub struct KvCache<B: Backend = Cpu> {
    /// Each layer's decoding state (what its attention variant keeps between steps).
    pub(crate) layers: Vec<B::Decode>,
    batch: usize,
    len: usize,
}

impl KvCache {
    /// An f32 cache for `batch` sequences of up to n_positions tokens.
    pub fn new(cfg: &ImageGptConfig, batch: usize) -> Self {
        Self::with_precision(cfg, batch, KvPrecision::F32)
    }

    /// A cache that stores keys and values in `prec`.
    pub fn with_precision(cfg: &ImageGptConfig, batch: usize, prec: KvPrecision) -> Self {
        Self::on(&Cpu, cfg, batch, prec)
    }
}

impl<B: Backend> KvCache<B> {
    /// A cache in engine `be`'s memory for `batch` sequences of up to n_positions tokens,
    /// keys and values in `prec`.
    pub fn on(be: &B, cfg: &ImageGptConfig, batch: usize, prec: KvPrecision) -> Self {
        let (nh, hs, t) = (cfg.n_head, cfg.head_dim(), cfg.n_positions);
        let spec = (cfg.attention_mask(true), cfg.attention_form());
        let layers = (0..cfg.n_layer).map(|_| be.decode_state(spec, batch, (nh, hs), t, prec)).collect();
        KvCache { layers, batch, len: 0 }
    }

    pub fn precision(&self) -> KvPrecision {
        self.layers.first().map_or(KvPrecision::F32, |l| l.precision())
    }

    /// Memory held by the keys and values of every layer.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| l.bytes()).sum()
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
