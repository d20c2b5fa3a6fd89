//! Multi-head attention and its variants: one module owns the masks ([`Mask`]), the forms
//! ([`Form`]: softmax, linear), the block-wise softmax forward and its backward, linear
//! attention, the decoding steps and what each variant keeps between them.
//!
//! HF semantics (`modeling_imagegpt.py` `ImageGPTAttention._attn`): scores q.k are divided
//! by sqrt(hs) when `scale_attn_weights` and by (layer_idx + 1) when
//! `scale_attn_by_inverse_layer_idx`; query row r of a chunk that follows `past` cached
//! positions is slot past + r.
//!
//! Layering (no cycles): `view` (the shapes), `mask` and `kernels` (micro-kernels) are
//! leaves; `kv_blocks` holds keys and values; `decode` reads them one query row at a time;
//! `forward` runs the block-wise pass (and hands single rows to `decode`); `backward`
//! recomputes from `forward`'s saved log-sum-exp; `linear` is linear attention's
//! chunked forward, `linear_backward` its backward, `linear_state` its decoding state;
//! `state` is the per-layer decoding state the model talks to.

pub mod backward;
pub mod decode;
pub mod forward;
pub mod kernels;
pub mod kv_blocks;
pub mod linear;
pub mod linear_backward;
pub mod linear_state;
pub mod mask;
pub mod state;
mod view;

pub use backward::attention_backward;
pub use forward::{attention_forward, attention_probs, attention_with_kv};
pub use kv_blocks::{KvBlocks, KvPrecision};
pub use mask::Mask;
pub use state::{DecodeInfo, DecodeState, new_state};
pub use view::{AttnDims, Form, Saved, Seq, SeqView};

/// The attention of a full sequence: out (B, T, nh*hs) from q, k, v views, keeping what the
/// backward needs in `saved`.
pub fn forward(out: &mut [f32], saved: &mut Saved, q: SeqView, k: SeqView, v: SeqView, d: AttnDims) {
    match d.form {
        Form::Softmax => attention_forward(out, saved.sized(&d), q, k, v, d),
        Form::Linear => linear::linear_forward(out, q, k, v, d),
    }
}

/// The gradients dqkv (B, T, 3 nh hs) of a [`forward`] from dout.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dqkv: &mut [f32],
    dout: &[f32],
    out: &[f32],
    saved: &Saved,
    q: SeqView,
    k: SeqView,
    v: SeqView,
    d: AttnDims,
) {
    match d.form {
        Form::Softmax => attention_backward(dqkv, dout, out, &saved.lse, q, k, v, d),
        Form::Linear => linear_backward::linear_backward(dqkv, dout, out, q, k, v, d),
    }
}

/// The attention probabilities (T, Tk) of batch row b, head h of the last [`forward`] (HF's
/// `output_attentions`, for inspection).
pub fn probs(q: SeqView, k: SeqView, saved: &Saved, d: AttnDims, b: usize, h: usize) -> Vec<f32> {
    match d.form {
        Form::Softmax => attention_probs(q, k, &saved.lse, d, b, h),
        Form::Linear => linear::linear_probs(q, k, d, b, h),
    }
}
