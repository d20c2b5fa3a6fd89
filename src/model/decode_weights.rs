//! Weights packed for decoding steps. A decoding step (one new token per sequence) streams
//! every weight matrix from memory once for a handful of rows, so it is bound by how fast it
//! reads them: a copy of the block matrices and of the output head packed in 32-column panels
//! ([`Packed`]: each thread reads one contiguous region front to back, with its accumulators
//! in registers for all of k) reads them at nearly the machine's streaming rate, in f32 (the
//! same values and sums: the parameters' results) or in f16 (half the bytes). Prompts
//! (prefill), full forwards and training use the f32 parameters.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::backend::matmul_f16::PackAs;
use crate::backend::{Backend, WeightLayout};
use crate::error::Result;

use super::gpt::ImageGpt;
use super::params::ModelKind;

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
    precision: WeightPrecision,
    by_offset: BTreeMap<usize, P>,
}

impl<B: Backend> ImageGpt<B> {
    /// Chooses the weights decoding steps read. F32 and F16 take a packed copy of the current
    /// block matrices and output head (4 or 2 bytes more memory per parameter); change the
    /// parameters afterwards (training) and the copy is stale: set the precision again.
    pub fn set_decode_weights(&mut self, prec: WeightPrecision) -> Result<()> {
        self.decode_matrices = match prec {
            WeightPrecision::F32Unpacked => None,
            WeightPrecision::F32 => {
                Some(DecodeMatrices { precision: prec, by_offset: self.pack_matrices(PackAs::F32)? })
            }
            WeightPrecision::F16 => {
                Some(DecodeMatrices { precision: prec, by_offset: self.pack_matrices(PackAs::F16)? })
            }
        };
        Ok(())
    }

    /// Every block matrix and the output head packed as `elem`, by offset in `params`.
    fn pack_matrices(&self, elem: PackAs) -> Result<BTreeMap<usize, B::Packed>> {
        let (c, inner) = (self.config.n_embd, self.config.n_inner());
        let mut packed = BTreeMap::new();
        for lo in &self.layout.layers {
            for (w, k, n) in
                [(&lo.c_attn_w, c, 3 * c), (&lo.c_proj_w, c, c), (&lo.c_fc_w, c, inner), (&lo.mlp_proj_w, inner, c)]
            {
                packed.insert(w.start, self.be.pack(self.param(w), (k, n), WeightLayout::InOut, elem)?);
            }
        }
        if let (Some(head), ModelKind::CausalLm) = (&self.layout.head, self.kind) {
            // lm_head is (V-1, C) (nn.Linear): packed as its (C, V-1) transpose
            let v = self.config.n_colors();
            packed.insert(head.start, self.be.pack(self.param(head), (c, v), WeightLayout::OutIn, elem)?);
        }
        Ok(packed)
    }

    pub fn decode_weights(&self) -> WeightPrecision {
        self.decode_matrices.as_ref().map_or(WeightPrecision::F32Unpacked, |d| d.precision)
    }

    /// out (rows, n) (+)= inp (rows, k) @ W (+ bias) from the packed copy of the matrix at
    /// `w`, when there is one; false when there is none.
    pub(crate) fn packed_product(
        &self,
        out: B::ViewMut<'_>,
        inp: B::View<'_>,
        w: &Range<usize>,
        bias: Option<B::View<'_>>,
        rows: usize,
        accumulate: bool,
    ) -> bool {
        let Some(m) = self.decode_matrices.as_ref().and_then(|d| d.by_offset.get(&w.start)) else {
            return false;
        };
        self.be.matmul_packed(out, inp, m, bias, rows, accumulate);
        true
    }

    /// out (N, n) (+)= inp (N, k) @ W + bias for a block's Conv1D weight `w` and bias `b`:
    /// from the packed copy in decoding steps (`t` == 1) when there is one, else from the
    /// parameters.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn dense(
        &self,
        mut out: B::ViewMut<'_>,
        inp: B::View<'_>,
        (w, b): (&Range<usize>, &Range<usize>),
        dims: (usize, usize, usize),
        t: usize,
        accumulate: bool,
    ) {
        let bias = Some(self.param(b));
        if t != 1 || !self.packed_product(self.be.reborrow(&mut out), inp, w, bias, dims.0, accumulate) {
            self.be.matmul_forward(out, inp, self.param(w), bias, dims, WeightLayout::InOut, accumulate)
        }
    }
}
