//! Where every parameter lives: one flat `f32` arena (llm.c style), with the HF key name,
//! shape and range of each tensor. Gradients and AdamW moments use the same layout, so an
//! optimizer step is one loop and checkpoints are keyed by HF names.
//!
//! Order: wte, the position tables (wpe; or wpe_row, wpe_col; none for rope_2d), then per block ln_1, attn.c_attn.{weight,bias}, attn.c_proj.{weight,bias},
//! ln_2, mlp.c_fc.{weight,bias}, mlp.c_proj.{weight,bias}; then ln_f and the head.

use std::ops::Range;

use crate::config::{ImageGptConfig, PositionEmbedding};

/// Which HF class a checkpoint is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// `ImageGPTForCausalImageModeling`: transformer + `lm_head` (V - 1 outputs).
    CausalLm,
    /// `ImageGPTModel`: the bare transformer, keys without the `transformer.` prefix.
    Base,
    /// `ImageGPTForImageClassification`: transformer + `score` over mean-pooled states.
    Classifier,
}

impl ModelKind {
    pub fn hf_architecture(self) -> &'static str {
        match self {
            ModelKind::CausalLm => "ImageGPTForCausalImageModeling",
            ModelKind::Base => "ImageGPTModel",
            ModelKind::Classifier => "ImageGPTForImageClassification",
        }
    }

    pub fn from_hf_architecture(name: &str) -> Option<Self> {
        match name {
            "ImageGPTForCausalImageModeling" | "ImageGPTForCausalLM" => Some(ModelKind::CausalLm),
            "ImageGPTModel" => Some(ModelKind::Base),
            "ImageGPTForImageClassification" => Some(ModelKind::Classifier),
            _ => None,
        }
    }

    /// Key prefix of the transformer's tensors.
    pub fn prefix(self) -> &'static str {
        if self == ModelKind::Base { "" } else { "transformer." }
    }
}

/// One named tensor of the arena.
#[derive(Clone, Debug)]
pub struct ParamEntry {
    pub name: String,
    pub shape: Vec<usize>,
    pub range: Range<usize>,
    /// HF Conv1D weights: stored (in, out).
    pub conv1d: bool,
}

impl ParamEntry {
    /// Matrices get weight decay; norms and biases do not (nanoGPT's rule: dim >= 2).
    pub fn is_matrix(&self) -> bool {
        self.shape.len() >= 2
    }
}

/// Ranges of one block's tensors.
#[derive(Clone, Debug)]
pub struct LayerOffsets {
    pub ln_1: Range<usize>,
    pub c_attn_w: Range<usize>,
    pub c_attn_b: Range<usize>,
    pub c_proj_w: Range<usize>,
    pub c_proj_b: Range<usize>,
    pub ln_2: Range<usize>,
    pub c_fc_w: Range<usize>,
    pub c_fc_b: Range<usize>,
    pub mlp_proj_w: Range<usize>,
    pub mlp_proj_b: Range<usize>,
}

/// The position tensors of a model (`position_embedding`).
#[derive(Clone, Debug, PartialEq)]
pub enum PositionTables {
    /// `wpe` (n_positions, C), HF's.
    Learned1d(Range<usize>),
    /// `wpe_row` (H, C) and `wpe_col` (W, C).
    Learned2d { row: Range<usize>, col: Range<usize> },
    /// None: `rope_2d` rotates q and k instead.
    Rotary,
}

/// The complete layout of a model's parameters.
#[derive(Clone, Debug)]
pub struct ParamLayout {
    pub entries: Vec<ParamEntry>,
    pub wte: Range<usize>,
    pub positions: PositionTables,
    pub layers: Vec<LayerOffsets>,
    pub ln_f: Range<usize>,
    /// `lm_head.weight` (V-1, C) or `score.weight` (num_labels, C); None for the bare model.
    pub head: Option<Range<usize>>,
    pub total: usize,
}

struct Builder {
    entries: Vec<ParamEntry>,
    total: usize,
}

impl Builder {
    fn add(&mut self, name: String, shape: &[usize], conv1d: bool) -> Range<usize> {
        let n: usize = shape.iter().product();
        let range = self.total..self.total + n;
        self.total += n;
        self.entries.push(ParamEntry { name, shape: shape.to_vec(), range: range.clone(), conv1d });
        range
    }
}

impl ParamLayout {
    pub fn new(cfg: &ImageGptConfig, kind: ModelKind) -> Self {
        let (c, i, v) = (cfg.n_embd, cfg.n_inner(), cfg.vocab_size);
        let p = kind.prefix();
        let mut b = Builder { entries: Vec::new(), total: 0 };
        let wte = b.add(format!("{p}wte.weight"), &[v, c], false);
        let positions = match cfg.position_embedding {
            PositionEmbedding::Learned1d => {
                PositionTables::Learned1d(b.add(format!("{p}wpe.weight"), &[cfg.n_positions, c], false))
            }
            PositionEmbedding::Learned2d => PositionTables::Learned2d {
                row: b.add(format!("{p}wpe_row.weight"), &[cfg.height(), c], false),
                col: b.add(format!("{p}wpe_col.weight"), &[cfg.width(), c], false),
            },
            PositionEmbedding::Rope2d => PositionTables::Rotary,
        };
        let layers = (0..cfg.n_layer)
            .map(|l| {
                let h = format!("{p}h.{l}.");
                LayerOffsets {
                    ln_1: b.add(format!("{h}ln_1.weight"), &[c], false),
                    c_attn_w: b.add(format!("{h}attn.c_attn.weight"), &[c, 3 * c], true),
                    c_attn_b: b.add(format!("{h}attn.c_attn.bias"), &[3 * c], false),
                    c_proj_w: b.add(format!("{h}attn.c_proj.weight"), &[c, c], true),
                    c_proj_b: b.add(format!("{h}attn.c_proj.bias"), &[c], false),
                    ln_2: b.add(format!("{h}ln_2.weight"), &[c], false),
                    c_fc_w: b.add(format!("{h}mlp.c_fc.weight"), &[c, i], true),
                    c_fc_b: b.add(format!("{h}mlp.c_fc.bias"), &[i], false),
                    mlp_proj_w: b.add(format!("{h}mlp.c_proj.weight"), &[i, c], true),
                    mlp_proj_b: b.add(format!("{h}mlp.c_proj.bias"), &[c], false),
                }
            })
            .collect();
        let ln_f = b.add(format!("{p}ln_f.weight"), &[c], false);
        let head = match kind {
            ModelKind::CausalLm => Some(b.add("lm_head.weight".into(), &[v - 1, c], false)),
            ModelKind::Classifier => Some(b.add("score.weight".into(), &[cfg.num_labels(), c], false)),
            ModelKind::Base => None,
        };
        ParamLayout { entries: b.entries, wte, positions, layers, ln_f, head, total: b.total }
    }

    pub fn find(&self, name: &str) -> Option<&ParamEntry> {
        self.entries.iter().find(|e| e.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_names_and_sizes() {
        let cfg = ImageGptConfig::tiny().with_image(8, 16);
        let l = ParamLayout::new(&cfg, ModelKind::CausalLm);
        assert_eq!(l.total, cfg.n_params(16));
        assert_eq!(l.entries.len(), 2 + 2 * 10 + 2);
        assert_eq!(l.find("transformer.h.1.mlp.c_fc.weight").unwrap().shape, vec![32, 128]);
        assert_eq!(l.find("lm_head.weight").unwrap().shape, vec![16, 32]);
        let base = ParamLayout::new(&cfg, ModelKind::Base);
        assert!(base.find("h.0.ln_1.weight").is_some() && base.head.is_none());
    }
}
