//! `ImageGptConfig`: Hugging Face's `config.json` for ImageGPT, field for field
//! (transformers `configuration_imagegpt.py`), with its defaults, so an HF file
//! deserialises directly and what we write loads in transformers.
//!
//! Unknown fields are ignored; inconsistent ones (`n_embd % n_head != 0`, ...) are
//! rejected by [`ImageGptConfig::validate`].

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::backend::attention::{Form, Mask};
use crate::error::{Error, Result};

fn d_vocab() -> usize {
    513
}
fn d_positions() -> usize {
    1024
}
fn d_embd() -> usize {
    512
}
fn d_layer() -> usize {
    24
}
fn d_head() -> usize {
    8
}
fn d_act() -> String {
    "quick_gelu".into()
}
fn d_pdrop() -> f32 {
    0.1
}
fn d_eps() -> f64 {
    1e-5
}
fn d_init() -> f64 {
    0.02
}
fn d_true() -> bool {
    true
}
fn d_model_type() -> String {
    "imagegpt".into()
}
fn d_theta() -> f64 {
    100.0
}
fn d_window() -> i64 {
    8
}
fn is_default<T: Default + PartialEq>(x: &T) -> bool {
    *x == T::default()
}
fn is_d_theta(x: &f64) -> bool {
    *x == d_theta()
}
fn is_d_window(x: &i64) -> bool {
    *x == d_window()
}

/// How slot positions enter the model (`../shared/design/architectures.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PositionEmbedding {
    /// HF's `wpe`: one learned vector per slot.
    #[default]
    #[serde(rename = "learned_1d")]
    Learned1d,
    /// `wpe_row[r] + wpe_col[c]` of the slot's row and column.
    #[serde(rename = "learned_2d")]
    Learned2d,
    /// Axial 2D rotary: q and k of every head rotated by the slot's row (first half) and
    /// column (second half); no position tensor.
    #[serde(rename = "rope_2d")]
    Rope2d,
}

/// Which pretraining objective a model was trained with (paper, section 2.2); it decides the
/// attention of every pass: GPT causal, BERT bidirectional.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// Next-pixel prediction, causal attention (HF ImageGPT).
    #[default]
    Gpt,
    /// Masked-pixel prediction, bidirectional attention.
    Bert,
}

impl Objective {
    pub fn name(self) -> &'static str {
        match self {
            Objective::Gpt => "gpt",
            Objective::Bert => "bert",
        }
    }
}

/// Which keys a query attends to, and how.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionKind {
    /// HF: softmax over every visible key.
    #[default]
    Dense,
    /// Softmax over the keys within `local_rows` rows above and `local_cols` columns either side.
    #[serde(rename = "local_2d")]
    Local2d,
    /// elu + 1 feature maps, no softmax (Katharopoulos et al. 2020).
    Linear,
}

impl std::str::FromStr for PositionEmbedding {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.into()))
            .map_err(|_| format!("unknown position embedding `{s}`: use learned_1d, learned_2d or rope_2d"))
    }
}

impl std::str::FromStr for AttentionKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.into()))
            .map_err(|_| format!("unknown attention `{s}`: use dense, local_2d or linear"))
    }
}

impl PositionEmbedding {
    pub fn name(self) -> &'static str {
        match self {
            PositionEmbedding::Learned1d => "learned_1d",
            PositionEmbedding::Learned2d => "learned_2d",
            PositionEmbedding::Rope2d => "rope_2d",
        }
    }
}

impl AttentionKind {
    pub fn name(self) -> &'static str {
        match self {
            AttentionKind::Dense => "dense",
            AttentionKind::Local2d => "local_2d",
            AttentionKind::Linear => "linear",
        }
    }
}

/// The HF ImageGPT configuration. Field names are HF's; see `hf-imagegpt-spec.md` section 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageGptConfig {
    /// Number of rows of `wte` = colours + 1; the SOS id is `vocab_size - 1`.
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    /// Sequence length = image height x width.
    #[serde(default = "d_positions")]
    pub n_positions: usize,
    #[serde(default = "d_embd")]
    pub n_embd: usize,
    #[serde(default = "d_layer")]
    pub n_layer: usize,
    #[serde(default = "d_head")]
    pub n_head: usize,
    /// MLP width; `None` means 4 * n_embd.
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "d_act")]
    pub activation_function: String,
    #[serde(default = "d_pdrop")]
    pub resid_pdrop: f32,
    #[serde(default = "d_pdrop")]
    pub embd_pdrop: f32,
    #[serde(default = "d_pdrop")]
    pub attn_pdrop: f32,
    #[serde(default = "d_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "d_init")]
    pub initializer_range: f64,
    #[serde(default = "d_true")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Mixed-precision attention path in HF; mathematically identical, ignored here.
    #[serde(default)]
    pub reorder_and_upcast_attn: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub add_cross_attention: bool,
    #[serde(default = "d_true")]
    pub use_cache: bool,
    /// Class names of a classifier, HF style (`{"0": "cat", ...}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id2label: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label2id: Option<BTreeMap<String, usize>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
    #[serde(default = "d_model_type")]
    pub model_type: String,
    // igpt's architecture options (`architectures.md`); each is written only when it differs
    // from its default, so a plain model's config.json stays transformers' own.
    /// Pixels per image row W (H = n_positions / W); None = sqrt(n_positions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_width: Option<usize>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub position_embedding: PositionEmbedding,
    /// Base of the rotary frequencies (`rope_2d`).
    #[serde(default = "d_theta", skip_serializing_if = "is_d_theta")]
    pub rope_theta: f64,
    #[serde(default, skip_serializing_if = "is_default")]
    pub attention: AttentionKind,
    /// Rows above the query's row that stay visible (`local_2d`).
    #[serde(default = "d_window", skip_serializing_if = "is_d_window")]
    pub local_rows: i64,
    /// Columns either side of the query's column that stay visible (`local_2d`).
    #[serde(default = "d_window", skip_serializing_if = "is_d_window")]
    pub local_cols: i64,
    /// The objective the weights were trained with; `bert` makes every pass bidirectional
    /// (written only for BERT models, which transformers' ImageGPT would run causally).
    #[serde(default, skip_serializing_if = "is_default")]
    pub objective: Objective,
}

impl Default for ImageGptConfig {
    /// HF's defaults: the released iGPT-S shape (24 layers, 512 wide, 8 heads, 32x32, 512 colours).
    fn default() -> Self {
        serde_json::from_str("{}").expect("an empty object deserialises with defaults")
    }
}

impl ImageGptConfig {
    /// A shape with explicit depth, width and heads; 32x32 and 512 colours unless changed.
    /// No dropout (the paper's); HF's default is 0.1 for all three.
    pub fn with_shape(n_layer: usize, n_embd: usize, n_head: usize) -> Self {
        let (resid_pdrop, embd_pdrop, attn_pdrop) = (0.0, 0.0, 0.0);
        ImageGptConfig { n_layer, n_embd, n_head, resid_pdrop, embd_pdrop, attn_pdrop, ..Default::default() }
    }

    /// `tiny`: the shape of the test fixtures (2 layers, 32 wide, 4 heads).
    pub fn tiny() -> Self {
        Self::with_shape(2, 32, 4)
    }
    /// `s`: iGPT-S (paper, Table 1): 24 layers, 512 wide, 8 heads, 76M parameters.
    pub fn s() -> Self {
        Self::with_shape(24, 512, 8)
    }
    /// `m`: iGPT-M: 36 layers, 1024 wide, 8 heads, 455M parameters.
    pub fn m() -> Self {
        Self::with_shape(36, 1024, 8)
    }
    /// `l`: iGPT-L: 48 layers, 1536 wide, 16 heads, 1.4B parameters.
    pub fn l() -> Self {
        Self::with_shape(48, 1536, 16)
    }

    /// A preset by name (`tiny`, `s`, `m`, `l`).
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "tiny" => Ok(Self::tiny()),
            "s" | "small" => Ok(Self::s()),
            "m" | "medium" => Ok(Self::m()),
            "l" | "large" => Ok(Self::l()),
            other => Err(Error::config("preset", format!("unknown preset `{other}`; use one of tiny, s, m, l"))),
        }
    }

    /// Sets image side and palette size (n_positions = side^2, vocab_size = colors + 1).
    pub fn with_image(mut self, side: usize, colors: usize) -> Self {
        self.n_positions = side * side;
        self.vocab_size = colors + 1;
        self
    }

    /// Whether this is transformers' ImageGPT (no igpt architecture option in use, and the
    /// GPT objective: transformers runs every ImageGPT causally).
    pub fn is_plain(&self) -> bool {
        self.position_embedding == PositionEmbedding::Learned1d
            && self.attention == AttentionKind::Dense
            && self.objective == Objective::Gpt
    }

    /// Whether every pass attends causally (the GPT objective).
    pub fn is_causal(&self) -> bool {
        self.objective == Objective::Gpt
    }

    /// Pixels per row W: `image_width`, else the integer square root of n_positions.
    pub fn width(&self) -> usize {
        self.image_width.unwrap_or_else(|| {
            let w = (self.n_positions as f64).sqrt().round() as usize;
            if w * w == self.n_positions { w } else { self.n_positions }
        })
    }

    /// Image rows H = n_positions / W.
    pub fn height(&self) -> usize {
        self.n_positions / self.width().max(1)
    }

    /// The attention mask under the GPT (`causal`) or BERT objective (linear attention has
    /// kernels of its own, not a softmax mask).
    pub fn attention_mask(&self, causal: bool) -> Mask {
        match self.attention {
            AttentionKind::Local2d => {
                let (rows, cols) = self.local_window();
                Mask::Local2d { rows, cols, width: self.width(), causal }
            }
            AttentionKind::Dense | AttentionKind::Linear if causal => Mask::Causal,
            AttentionKind::Dense | AttentionKind::Linear => Mask::Full,
        }
    }

    /// How attention weighs the keys its mask shows.
    pub fn attention_form(&self) -> Form {
        if self.attention == AttentionKind::Linear { Form::Linear } else { Form::Softmax }
    }

    /// `local_rows`, `local_cols` as counts (validated non-negative).
    pub fn local_window(&self) -> (usize, usize) {
        (self.local_rows.max(0) as usize, self.local_cols.max(0) as usize)
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }
    pub fn n_inner(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }
    /// Colours = outputs of `lm_head` = vocab_size - 1.
    pub fn n_colors(&self) -> usize {
        self.vocab_size - 1
    }
    /// The start-of-sequence token id.
    pub fn sos_token(&self) -> u32 {
        (self.vocab_size - 1) as u32
    }
    /// Number of classes of a classifier (HF: len(id2label), default 2).
    pub fn num_labels(&self) -> usize {
        self.id2label.as_ref().map_or(2, |m| m.len())
    }

    /// Rejects configurations the model cannot be built from, with a message naming the field.
    pub fn validate(&self, what: &str) -> Result<()> {
        let bad = |msg: String| Err(Error::config(what, msg));
        if self.n_head == 0 || self.n_embd == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            return bad(format!("n_embd ({}) must be a positive multiple of n_head ({})", self.n_embd, self.n_head));
        }
        if self.vocab_size < 2 {
            return bad(format!("vocab_size ({}) must be at least 2 (colours + SOS)", self.vocab_size));
        }
        if self.n_positions == 0 || self.n_layer == 0 {
            return bad("n_positions and n_layer must be at least 1".into());
        }
        if self.vocab_size - 1 > u16::MAX as usize {
            return bad(format!("vocab_size ({}) is too large (at most 65536)", self.vocab_size));
        }
        if self.n_inner == Some(0) {
            return bad("n_inner must be at least 1 (or null for 4 * n_embd)".into());
        }
        // caps far above any ImageGPT (iGPT-XL: 60 layers, n_embd 3072): a size beyond them
        // is a corrupt or hostile file, refused before anything is allocated
        for (name, v, cap) in [
            ("n_layer", self.n_layer, 1024),
            ("n_embd", self.n_embd, 1 << 16),
            ("n_inner", self.n_inner(), 1 << 18),
            ("n_positions", self.n_positions, 1 << 20),
        ] {
            if v > cap {
                return bad(format!("{name} ({v}) is over igpt's limit of {cap}"));
            }
        }
        if !matches!(
            self.activation_function.as_str(),
            "quick_gelu" | "gelu_new" | "gelu" | "gelu_pytorch_tanh" | "relu"
        ) {
            return bad(format!(
                "activation_function `{}` is not supported (use quick_gelu, gelu, gelu_new or relu)",
                self.activation_function
            ));
        }
        if self.add_cross_attention {
            return bad("add_cross_attention = true is not supported (ImageGPT checkpoints never use it)".into());
        }
        for (name, p) in
            [("resid_pdrop", self.resid_pdrop), ("embd_pdrop", self.embd_pdrop), ("attn_pdrop", self.attn_pdrop)]
        {
            if !(0.0..1.0).contains(&p) {
                return bad(format!("{name} ({p}) must be a dropout probability in [0, 1)"));
            }
        }
        if !(self.layer_norm_epsilon >= 0.0 && self.layer_norm_epsilon.is_finite()) {
            return bad("layer_norm_epsilon must be a finite number >= 0".into());
        }
        self.validate_variant(what)
    }

    /// The igpt fields: a width that tiles n_positions, a head size rope_2d can split in
    /// four, a positive theta, non-negative windows.
    fn validate_variant(&self, what: &str) -> Result<()> {
        let bad = |msg: String| Err(Error::config(what, msg));
        match self.image_width {
            Some(0) => return bad("image_width must be at least 1".into()),
            Some(w) if !self.n_positions.is_multiple_of(w) => {
                return bad(format!(
                    "image_width ({w}) must divide n_positions ({}): set it to the images' width in pixels",
                    self.n_positions
                ));
            }
            None if self.needs_width() && self.width() * self.width() != self.n_positions => {
                return bad(format!(
                    "n_positions ({}) is not a square: set image_width to the images' width in pixels",
                    self.n_positions
                ));
            }
            _ => {}
        }
        if self.position_embedding == PositionEmbedding::Rope2d && !self.head_dim().is_multiple_of(4) {
            return bad(format!(
                "rope_2d needs a head size divisible by 4 (n_embd / n_head = {}); change n_embd or n_head",
                self.head_dim()
            ));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return bad(format!("rope_theta must be a finite number > 0 (got {})", self.rope_theta));
        }
        for (name, v) in [("local_rows", self.local_rows), ("local_cols", self.local_cols)] {
            if v < 0 {
                return bad(format!("{name} must be >= 0 (got {v}): the number of rows or columns that stay visible"));
            }
        }
        if !matches!(self.model_type.as_str(), "imagegpt" | "igpt") {
            return bad(format!("model_type `{}` is neither imagegpt nor igpt", self.model_type));
        }
        Ok(())
    }

    /// Whether the model uses the image's 2D layout (a 2D position code or local attention).
    fn needs_width(&self) -> bool {
        self.position_embedding != PositionEmbedding::Learned1d || self.attention == AttentionKind::Local2d
    }

    /// Reads and validates a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: ImageGptConfig = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, format!("not a valid ImageGPT config.json: {e}")))?;
        cfg.validate(&path.display().to_string())?;
        Ok(cfg)
    }

    /// Number of parameters of the transformer plus a head with `head_rows` rows.
    pub fn n_params(&self, head_rows: usize) -> usize {
        let (e, i) = (self.n_embd, self.n_inner());
        let per_layer = 2 * e + (e * 3 * e + 3 * e) + (e * e + e) + (e * i + i) + (i * e + e);
        let positions = match self.position_embedding {
            PositionEmbedding::Learned1d => self.n_positions,
            PositionEmbedding::Learned2d => self.height() + self.width(),
            PositionEmbedding::Rope2d => 0,
        };
        self.vocab_size * e + positions * e + self.n_layer * per_layer + e + head_rows * e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_hf() {
        let c = ImageGptConfig::default();
        assert_eq!((c.vocab_size, c.n_positions, c.n_embd, c.n_layer, c.n_head), (513, 1024, 512, 24, 8));
        assert_eq!(c.n_inner(), 2048);
        assert_eq!(c.activation_function, "quick_gelu");
        assert!(c.scale_attn_weights && !c.scale_attn_by_inverse_layer_idx);
        assert_eq!(c.num_labels(), 2);
        // iGPT-S has 76M parameters (openai/image-gpt download.py help string).
        let n = ImageGptConfig::s().n_params(512);
        assert!((75_000_000..78_000_000).contains(&n), "{n}");
    }

    #[test]
    fn rejects_inconsistent() {
        let mut c = ImageGptConfig::tiny();
        c.n_head = 5;
        let err = c.validate("x").unwrap_err().to_string();
        assert!(err.contains("n_embd (32) must be a positive multiple of n_head (5)"), "{err}");
        let c: ImageGptConfig = serde_json::from_str(r#"{"n_embd": 64, "unknown_field": [1,2]}"#).unwrap();
        assert_eq!(c.n_embd, 64);
        assert!(ImageGptConfig::preset("xl").is_err());
    }
}
