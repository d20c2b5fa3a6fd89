//! Weights packed for decoding steps. A decoding step (one new token per sequence) streams
//! every weight matrix from memory once for a handful of rows, so it is bound by how fast it
//! reads them: a copy of the block matrices and of the output head packed for it (the CPU
//! engine's 32-column panels: each thread reads one contiguous region front to back, with
//! its accumulators in registers for all of k) reads them at nearly the machine's streaming
//! rate, in f32 (the same values and sums: the parameters' results) or in f16 (half the
//! bytes). Prompts (prefill), full forwards and training use the f32 parameters.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::backend::matmul_f16::PackAs;
use crate::backend::{Backend, WeightLayout};
use crate::error::Result;

use super::decode_matrices::{DecodeMatrices, WeightPrecision};
use super::gpt::ImageGpt;
use super::params::ModelKind;

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
