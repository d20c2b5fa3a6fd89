//! What the architecture options (`architectures.md`) change in the model, in one place:
//! which position tables the embedding adds, the rotation of q and k for `rope_2d`, and the
//! attention mask of an objective. The forward and training passes call these and never
//! branch on the option themselves.

use crate::backend::Backend;
use crate::backend::attention::Mask;
use crate::backend::embed::Axis;
use crate::backend::rope::Rope;
use crate::config::PositionEmbedding;

use super::gpt::ImageGpt;
use super::params::PositionTables;

impl<B: Backend> ImageGpt<B> {
    /// The attention mask of this model for the objective.
    pub fn attention_mask(&self, causal: bool) -> Mask {
        self.config.attention_mask(causal)
    }

    /// The position tables with the axis each is read along (parameter ranges).
    fn position_tables(&self) -> Vec<(std::ops::Range<usize>, Axis)> {
        let w = self.config.width();
        match &self.layout.positions {
            PositionTables::Learned1d(r) => vec![(r.clone(), Axis::Slot)],
            PositionTables::Learned2d { row, col } => vec![(row.clone(), Axis::Row(w)), (col.clone(), Axis::Col(w))],
            PositionTables::Rotary => Vec::new(),
        }
    }

    /// x (B*T, C) = s_i wte[tokens_i] + the position rows of slots pos0..pos0+T.
    pub(crate) fn embed(&self, x: B::ViewMut<'_>, tokens: &[u32], token_scale: Option<&[f32]>, t: usize, pos0: usize) {
        let tables: Vec<(B::View<'_>, Axis)> =
            self.position_tables().into_iter().map(|(r, a)| (self.param(&r), a)).collect();
        let (wte, c) = (self.param(&self.layout.wte), self.config.n_embd);
        self.be.embed_forward(x, tokens, wte, token_scale, &tables, t, pos0, c);
    }

    /// Adds the embedding's gradients (token rows, position tables) for dx (B*T, C).
    pub(crate) fn embed_backward(
        &self,
        grads: B::ViewMut<'_>,
        dx: B::View<'_>,
        tokens: &[u32],
        token_scale: Option<&[f32]>,
        t: usize,
    ) {
        let tables = self.position_tables();
        let (wte, c) = (self.layout.wte.clone(), self.config.n_embd);
        self.be.embed_backward(grads, wte, &tables, dx, tokens, token_scale, t, c);
    }

    /// rope_2d: rotates q and k of qkv (B, T, 3C) for slots pos0..pos0+T (`inverse`: the
    /// transpose, for their gradients); other position options leave qkv as it is.
    pub(crate) fn rotate_qk(&self, qkv: B::ViewMut<'_>, t: usize, pos0: usize, inverse: bool) {
        let cfg = &self.config;
        if cfg.position_embedding == PositionEmbedding::Rope2d {
            let rope = Rope { nh: cfg.n_head, hs: cfg.head_dim(), width: cfg.width(), theta: cfg.rope_theta };
            self.be.rope(&rope, qkv, t, pos0, inverse);
        }
    }
}
