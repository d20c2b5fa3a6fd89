//! Which weights decoding steps read ([`WeightPrecision`]) and the packed copies a model
//! keeps for them (`DecodeMatrices`); `decode_weights` makes and uses them.

use std::collections::BTreeMap;

/// The weight matrices that decoding steps read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightPrecision {
    /// An f32 copy of the block matrices and the output head packed for decoding (4 more
    /// bytes per parameter): cached decoding gives the full forward's logits (to rounding).
    #[default]
    F32,
    /// The f32 parameters as they are (no copy; slower decoding, the same results).
    F32Unpacked,
    /// An IEEE half copy of the transformer blocks' matrices and the output head (biases,
    /// norms and embeddings stay f32): faster decoding, logits move by about 1e-3.
    F16,
}

impl std::str::FromStr for WeightPrecision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" | "fp32" | "float32" => Ok(WeightPrecision::F32),
            "f32-unpacked" => Ok(WeightPrecision::F32Unpacked),
            "f16" | "fp16" | "float16" | "half" => Ok(WeightPrecision::F16),
            other => Err(format!("unknown weight precision `{other}`: use f32, f32-unpacked or f16")),
        }
    }
}

impl WeightPrecision {
    /// The name the `--weights` flag takes.
    pub fn name(self) -> &'static str {
        match self {
            WeightPrecision::F32 => "f32",
            WeightPrecision::F32Unpacked => "f32-unpacked",
            WeightPrecision::F16 => "f16",
        }
    }
}

/// A model's packed copies for decoding steps, by the offset of their matrix in its
/// parameters.
#[derive(Clone, Debug)]
pub(crate) struct DecodeMatrices<P> {
    pub(crate) precision: WeightPrecision,
    pub(crate) by_offset: BTreeMap<usize, P>,
}
