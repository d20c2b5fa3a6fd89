//! Half-precision weights for decoding steps. A decoding step (one new token per sequence)
//! streams every weight matrix from memory once for a handful of rows, so it is bound by
//! the bytes it reads: an f16 copy of the block matrices and of the output head, packed for
//! the decoding kernel ([`PackedF16`]), halves them. Prompts (prefill), full forwards and training keep using
//! the f32 parameters.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::backend::WeightLayout;
use crate::backend::matmul::matmul_forward;
use crate::backend::matmul_f16::{PackedF16, matmul_packed_f16};

use super::gpt::ImageGpt;
use super::params::ModelKind;

/// Precision of the weight matrices that decoding steps read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightPrecision {
    /// The f32 parameters: cached decoding gives the full forward's logits (to rounding).
    #[default]
    F32,
    /// An IEEE half copy of the transformer blocks' matrices and the output head (biases,
    /// norms and embeddings stay f32): faster decoding, logits move by about 1e-3.
    F16,
}

impl std::str::FromStr for WeightPrecision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" | "fp32" | "float32" => Ok(WeightPrecision::F32),
            "f16" | "fp16" | "float16" | "half" => Ok(WeightPrecision::F16),
            other => Err(format!("unknown weight precision `{other}`: use f32 or f16")),
        }
    }
}

impl ImageGpt {
    /// The half copy of the matrix at `w`, when decoding weights are f16.
    pub(crate) fn half_matrix(&self, w: &Range<usize>) -> Option<&PackedF16> {
        self.params_f16.as_ref().and_then(|p| p.get(&w.start))
    }

    /// Chooses the weights decoding steps read. F16 takes a packed half copy of the current
    /// block matrices and output head (2 bytes more memory per parameter); change the
    /// parameters afterwards (training) and the copy is stale: set F32, or F16 again.
    pub fn set_decode_weights(&mut self, prec: WeightPrecision) {
        self.params_f16 = match prec {
            WeightPrecision::F32 => None,
            WeightPrecision::F16 => {
                let (c, inner) = (self.config.n_embd, self.config.n_inner());
                let mut packed = BTreeMap::new();
                for lo in &self.layout.layers {
                    for (w, k, n) in [
                        (&lo.c_attn_w, c, 3 * c),
                        (&lo.c_proj_w, c, c),
                        (&lo.c_fc_w, c, inner),
                        (&lo.mlp_proj_w, inner, c),
                    ] {
                        packed.insert(w.start, PackedF16::pack(self.param(w), k, n));
                    }
                }
                if let (Some(head), ModelKind::CausalLm) = (&self.layout.head, self.kind) {
                    // lm_head is (V-1, C) (nn.Linear): packed transposed, as a (C, V-1) matrix
                    let (v, w) = (self.config.n_colors(), self.param(head));
                    let wt: Vec<f32> = (0..c * v).map(|i| w[(i % v) * c + i / v]).collect();
                    packed.insert(head.start, PackedF16::pack(&wt, c, v));
                }
                Some(packed)
            }
        };
    }

    pub fn decode_weights(&self) -> WeightPrecision {
        if self.params_f16.is_some() { WeightPrecision::F16 } else { WeightPrecision::F32 }
    }

    /// out (N, n) (+)= inp (N, k) @ W + bias for a block's Conv1D weight `w` and bias `b`:
    /// from the half copy in decoding steps (`t` == 1) when there is one, else in f32.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn dense(
        &self,
        out: &mut [f32],
        inp: &[f32],
        (w, b): (&Range<usize>, &Range<usize>),
        dims: (usize, usize, usize),
        t: usize,
        accumulate: bool,
    ) {
        let bias = Some(self.param(b));
        match self.half_matrix(w) {
            Some(half) if t == 1 => matmul_packed_f16(out, inp, half, bias, dims.0, accumulate),
            _ => matmul_forward(out, inp, self.param(w), bias, dims, WeightLayout::InOut, accumulate),
        }
    }
}
