//! Multi-head softmax attention and its variants: one module owns the masks ([`Mask`]),
//! the block-wise forward and its backward, the decoding step and the KV storage.
//!
//! HF semantics (`modeling_imagegpt.py` `ImageGPTAttention._attn`): scores q.k are divided
//! by sqrt(hs) when `scale_attn_weights` and by (layer_idx + 1) when
//! `scale_attn_by_inverse_layer_idx`; query row r of a chunk that follows `past` cached
//! positions is slot past + r.
//!
//! Layering (no cycles): `view` (the shapes), `mask` and `kernels` (micro-kernels) are leaves; `kv_blocks` holds
//! keys and values; `decode` reads them one query row at a time; `forward` runs the
//! block-wise pass (and hands single rows to `decode`); `backward` recomputes from `forward`'s
//! saved log-sum-exp; `state` is the per-layer decoding state the model talks to.

pub mod backward;
pub mod decode;
pub mod forward;
pub mod kernels;
pub mod kv_blocks;
pub mod mask;
pub mod state;
mod view;

pub use backward::attention_backward;
pub use forward::{attention_forward, attention_probs, attention_with_kv};
pub use kv_blocks::{KvBlocks, KvPrecision};
pub use mask::Mask;
pub use state::{DecodeState, new_state};
pub use view::{AttnDims, SeqView};
