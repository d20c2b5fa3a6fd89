//! The decoding state of one attention layer, behind one small interface: the model appends
//! the new positions and asks for their attention, whatever the variant keeps between steps
//! (dense softmax: every key and value so far; `local_2d`: a ring of the last rows its window
//! can reach, so the memory does not grow with the image).

use super::forward::{attention_forward, attention_with_kv};
use super::kv_blocks::{KvBlocks, KvPrecision};
use super::linear_state::LinearState;
use super::mask::Mask;
use super::view::{AttnDims, Form, Saved, SeqView};

/// What a layer keeps between decoding steps.
pub trait DecodeState: Send + Sync + std::fmt::Debug {
    /// Stores the keys and values of the new slots past..past+t and writes the attention of
    /// their queries into `out` (B, t, nh*hs), keeping what a backward or an inspection needs
    /// in `saved`. d.tk = past + t.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &mut self,
        out: &mut [f32],
        saved: &mut Saved,
        q: SeqView,
        k: SeqView,
        v: SeqView,
        past: usize,
        d: AttnDims,
    );
    /// Bytes held.
    fn bytes(&self) -> usize;
    fn precision(&self) -> KvPrecision;
    fn clone_box(&self) -> Box<dyn DecodeState>;
}

/// What a KV cache reports of a layer's decoding state, whichever engine holds it.
pub trait DecodeInfo {
    /// Bytes held.
    fn bytes(&self) -> usize;
    fn precision(&self) -> KvPrecision;
}

impl DecodeInfo for Box<dyn DecodeState> {
    fn bytes(&self) -> usize {
        self.as_ref().bytes()
    }
    fn precision(&self) -> KvPrecision {
        self.as_ref().precision()
    }
}

impl Clone for Box<dyn DecodeState> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// The state a layer with `mask` and `form` needs for `batch` sequences of up to `positions`
/// slots (linear attention: S and z in f32, whatever `prec`).
pub fn new_state(
    (mask, form): (Mask, Form),
    batch: usize,
    nh: usize,
    hs: usize,
    positions: usize,
    prec: KvPrecision,
) -> Box<dyn DecodeState> {
    if form == Form::Linear {
        return Box::new(LinearState::new(batch, nh, hs));
    }
    match mask.window() {
        Some(w) if w < positions => Box::new(KvBlocks::ring(batch, nh, hs, w, prec)),
        _ => Box::new(KvBlocks::with_precision(batch, nh, hs, positions, prec)),
    }
}

/// Row r of every sequence of a view, as a view of one row.
fn row(x: SeqView<'_>, r: usize) -> SeqView<'_> {
    SeqView { offset: x.offset + r * x.row_stride, ..x }
}

impl DecodeState for KvBlocks {
    fn attend(
        &mut self,
        out: &mut [f32],
        saved: &mut Saved,
        q: SeqView,
        k: SeqView,
        v: SeqView,
        past: usize,
        d: AttnDims,
    ) {
        let lse = saved.sized(&d);
        if !self.ring || d.t == 1 || (past + d.t <= self.cap) {
            self.write(k, v, past, d.t);
            return attention_with_kv(out, lse, q, self, d);
        }
        if past == 0 {
            // a prompt longer than the ring: attend within it, keep its last positions
            attention_forward(out, lse, q, k, v, d);
            return self.write(k, v, 0, d.t);
        }
        // a later multi-row chunk: one row at a time through the ring
        let c = d.nh * d.hs;
        let (mut o1, mut l1) = (vec![0f32; d.b * c], vec![0f32; d.b * d.nh]);
        for r in 0..d.t {
            self.write(row(k, r), row(v, r), past + r, 1);
            attention_with_kv(&mut o1, &mut l1, row(q, r), self, AttnDims { t: 1, tk: past + r + 1, ..d });
            for b in 0..d.b {
                out[(b * d.t + r) * c..(b * d.t + r + 1) * c].copy_from_slice(&o1[b * c..(b + 1) * c]);
                for h in 0..d.nh {
                    lse[(b * d.nh + h) * d.t + r] = l1[b * d.nh + h];
                }
            }
        }
    }

    fn bytes(&self) -> usize {
        KvBlocks::bytes(self)
    }

    fn precision(&self) -> KvPrecision {
        KvBlocks::precision(self)
    }

    fn clone_box(&self) -> Box<dyn DecodeState> {
        Box::new(self.clone())
    }
}

impl DecodeState for LinearState {
    fn attend(
        &mut self,
        out: &mut [f32],
        _saved: &mut Saved,
        q: SeqView,
        k: SeqView,
        v: SeqView,
        _past: usize,
        d: AttnDims,
    ) {
        // one position at a time: constant work per position, whatever the length
        let c = d.nh * d.hs;
        let mut o1 = vec![0f32; d.b * c];
        for r in 0..d.t {
            self.step(&mut o1, q, k, v, r);
            for b in 0..d.b {
                out[(b * d.t + r) * c..(b * d.t + r + 1) * c].copy_from_slice(&o1[b * c..(b + 1) * c]);
            }
        }
    }

    fn bytes(&self) -> usize {
        LinearState::bytes(self)
    }

    fn precision(&self) -> KvPrecision {
        KvPrecision::F32
    }

    fn clone_box(&self) -> Box<dyn DecodeState> {
        Box::new(self.clone())
    }
}
