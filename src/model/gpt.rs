//! The ImageGPT transformer (HF `ImageGPTModel` + heads), computed by the engine in
//! `backend/`. Reads top to bottom like nanoGPT's `model.py`:
//!
//! ```text
//! x = wte[tokens] + position rows (wpe[pos]; or wpe_row[r] + wpe_col[c]; rope_2d: none)
//! for each block:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
//! h = ln_f(x);  logits = h @ lm_head^T  (or pooled = mean_t h; logits = pooled @ score^T)
//! ```
//!
//! The model is `&self`; all activations live in a [`Workspace`] allocated once per
//! (B, T) and reused across calls.

use std::ops::Range;

use crate::backend::attention::{self, AttnDims, SeqView};
use crate::backend::dropout::Dropout;
use crate::backend::profile::{Kernel, timed};
use crate::backend::{Activation, Backend, Cpu, WeightLayout};
use crate::config::ImageGptConfig;
use crate::error::{Error, Result};
use crate::rng::Rng;

use super::kv_cache::KvCache;
use super::params::{LayerOffsets, ModelKind, ParamLayout};

/// An ImageGPT model: config, class, and all parameters in one arena.
#[derive(Clone, Debug)]
pub struct ImageGpt {
    pub config: ImageGptConfig,
    pub kind: ModelKind,
    pub layout: ParamLayout,
    pub params: Vec<f32>,
    pub act: Activation,
    /// Packed copies of the block matrices and the output head for decoding steps, when asked
    /// ([`ImageGpt::set_decode_weights`]).
    pub(crate) decode_matrices: Option<crate::backend::matmul_f16::DecodeMatrices>,
}

/// Which logits a forward pass computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    None,
    /// Every position: (B, T, V-1).
    All,
    /// Only the last position of each row: (B, V-1). What greedy decoding needs.
    Last,
}

/// Activations of one forward pass, reused between calls of the same or smaller size.
#[derive(Default)]
pub struct Workspace {
    b: usize,
    t: usize,
    /// Residual stream (B, T, C).
    x: Vec<f32>,
    /// Norm output (B, T, C) and its 1/rms (B, T).
    ln: Vec<f32>,
    rstd: Vec<f32>,
    ln2: Vec<f32>,
    rstd2: Vec<f32>,
    /// (B, T, 3C): [q | k | v] per row.
    qkv: Vec<f32>,
    /// Attention output (B, T, C) and what the attention keeps of it.
    att: Vec<f32>,
    saved: attention::Saved,
    /// MLP hidden (B, T, I).
    fc: Vec<f32>,
    /// ln_f output (B, T, C): HF's last_hidden_state.
    pub last_hidden: Vec<f32>,
    /// Logits, (B, T, V-1) or (B, V-1) per [`Logits`].
    pub logits: Vec<f32>,
    /// With `collect_hidden`: HF's `hidden_states` (n_layer + 1 entries of (B, T, C)) and the
    /// raw output of the last block before ln_f.
    pub hidden_states: Vec<Vec<f32>>,
    pub last_block_output: Vec<f32>,
    /// Set to true to record HF's `attentions` (per layer, (B, nh, T, T)): for inspection
    /// and tests only, it stores T x T matrices.
    pub want_attentions: bool,
    pub attentions: Vec<Vec<f32>>,
}

impl Workspace {
    pub fn new() -> Self {
        Self::default()
    }

    fn ensure(&mut self, cfg: &ImageGptConfig, b: usize, t: usize) {
        let (c, i, n) = (cfg.n_embd, cfg.n_inner(), b * t);
        let grow = |v: &mut Vec<f32>, len: usize| {
            if v.len() < len {
                v.resize(len, 0.0);
            }
        };
        grow(&mut self.x, n * c);
        grow(&mut self.ln, n * c);
        grow(&mut self.rstd, n);
        grow(&mut self.ln2, n * c);
        grow(&mut self.rstd2, n);
        grow(&mut self.qkv, n * 3 * c);
        grow(&mut self.att, n * c);
        grow(&mut self.fc, n * i);
        grow(&mut self.last_hidden, n * c);
        self.b = b;
        self.t = t;
    }

    pub fn batch(&self) -> usize {
        self.b
    }
    pub fn seq_len(&self) -> usize {
        self.t
    }
}

/// The buffers one block reads and writes, shapes for N = B*T rows: x (N, C) residual,
/// ln1/ln2 (N, C), rstd1/rstd2 (N), qkv (N, 3C), att (N, C), the attention's saved state, fc (N, I);
/// x_mid (N, C) receives the residual after attention and fc_act (N, I) the activation
/// when given (training), else the activation is applied to fc in place.
pub(crate) struct BlockBufs<'a> {
    pub x: &'a mut [f32],
    pub ln1: &'a mut [f32],
    pub rstd1: &'a mut [f32],
    pub qkv: &'a mut [f32],
    pub att: &'a mut [f32],
    pub saved: &'a mut attention::Saved,
    pub x_mid: Option<&'a mut [f32]>,
    pub ln2: &'a mut [f32],
    pub rstd2: &'a mut [f32],
    pub fc: &'a mut [f32],
    pub fc_act: Option<&'a mut [f32]>,
    /// Training with dropout: the block's masks and an (N, C) scratch for a dropped branch.
    pub drop: BlockDropout<'a>,
}

/// One block's dropout in training (HF: `attn_dropout` on the probabilities, `resid_dropout`
/// on c_proj's output, the MLP's `dropout` on its output); all None in inference.
#[derive(Default)]
pub(crate) struct BlockDropout<'a> {
    pub attn: Option<Dropout>,
    /// [attention branch, MLP branch]
    pub resid: [Option<Dropout>; 2],
    pub branch: Option<&'a mut Vec<f32>>,
}

impl ImageGpt {
    /// A model with all parameters zero (to be loaded or initialised).
    pub fn zeros(config: ImageGptConfig, kind: ModelKind) -> Result<Self> {
        config.validate("model config")?;
        let act = Activation::from_hf(&config.activation_function)?;
        let layout = ParamLayout::new(&config, kind);
        let params = vec![0.0; layout.total];
        Ok(ImageGpt { config, kind, layout, params, act, decode_matrices: None })
    }

    /// GPT-2 initialisation (nanoGPT `_init_weights`): matrices and embeddings ~ N(0, 0.02)
    /// (`initializer_range`), residual projections (attn.c_proj, mlp.c_proj) scaled by
    /// 1/sqrt(2 n_layer), biases 0, norm gains 1.
    pub fn init_random(config: ImageGptConfig, kind: ModelKind, seed: u64) -> Result<Self> {
        let mut m = Self::zeros(config, kind)?;
        let mut rng = Rng::new(seed);
        let std = m.config.initializer_range;
        let resid_std = std / (2.0 * m.config.n_layer as f64).sqrt();
        for e in m.layout.entries.clone() {
            let slice = &mut m.params[e.range.clone()];
            if e.name.ends_with("ln_1.weight") || e.name.ends_with("ln_2.weight") || e.name.ends_with("ln_f.weight") {
                slice.fill(1.0);
            } else if e.name.ends_with(".bias") {
                slice.fill(0.0);
            } else {
                let s = if e.name.ends_with("c_proj.weight") { resid_std } else { std };
                slice.iter_mut().for_each(|w| *w = (rng.normal() * s) as f32);
            }
        }
        Ok(m)
    }

    /// The engine this model's buffers live in and its kernels run on (the CPU engine;
    /// a model generic over the engine is the next step of issue #16).
    pub fn engine(&self) -> Cpu {
        Cpu
    }

    pub fn param(&self, r: &Range<usize>) -> &[f32] {
        &self.params[r.clone()]
    }

    /// Scale of layer `l`'s attention scores (HF `_attn`): 1/sqrt(hs) and 1/(l+1) when asked.
    pub fn attn_scale(&self, l: usize) -> f32 {
        let mut s = 1.0f64;
        if self.config.scale_attn_weights {
            s /= (self.config.head_dim() as f64).sqrt();
        }
        if self.config.scale_attn_by_inverse_layer_idx {
            s /= (l + 1) as f64;
        }
        s as f32
    }

    /// Checks tokens and sequence length before any buffer is touched.
    pub fn check_input(&self, tokens: &[u32], b: usize, t: usize, pos0: usize) -> Result<()> {
        if tokens.len() != b * t || t == 0 {
            return Err(Error::Invalid(format!("expected {b} x {t} tokens, got {}", tokens.len())));
        }
        if pos0 + t > self.config.n_positions {
            return Err(Error::Invalid(format!(
                "sequence of {} positions exceeds n_positions = {}",
                pos0 + t,
                self.config.n_positions
            )));
        }
        if let Some(&bad) = tokens.iter().find(|&&x| x as usize >= self.config.vocab_size) {
            return Err(Error::Invalid(format!(
                "token id {bad} is out of range: vocab_size is {} (colours 0..{}, SOS {})",
                self.config.vocab_size,
                self.config.vocab_size - 2,
                self.config.vocab_size - 1
            )));
        }
        Ok(())
    }

    /// Full forward pass over (B, T) tokens starting at position 0.
    ///
    /// # Shapes
    /// tokens: (B, T). Afterwards `ws.last_hidden` is (B, T, C); `ws.logits` is (B, T, V-1)
    /// for [`Logits::All`] or (B, V-1) for [`Logits::Last`]; with `collect_hidden`,
    /// `ws.hidden_states` holds n_layer + 1 tensors (B, T, C) in HF's convention.
    pub fn forward(
        &self,
        ws: &mut Workspace,
        tokens: &[u32],
        b: usize,
        t: usize,
        logits: Logits,
        collect_hidden: bool,
    ) -> Result<()> {
        self.run(ws, None, (tokens, None), b, t, logits, collect_hidden)
    }

    /// The BERT pass: tokens (B, T) as they are (no SOS) with the token embedding of every
    /// position where `masked` is true multiplied by 0 (position embeddings kept), attention
    /// bidirectional as for any BERT model; `ws.logits` (B, T, V-1) predicts every position.
    pub fn forward_masked(
        &self,
        ws: &mut Workspace,
        tokens: &[u32],
        masked: &[bool],
        b: usize,
        t: usize,
    ) -> Result<()> {
        if self.config.is_causal() {
            return Err(Error::Invalid("a masked-token pass needs a BERT model (objective \"bert\")".into()));
        }
        if masked.len() != tokens.len() {
            return Err(Error::Invalid(format!("{} mask entries for {} tokens", masked.len(), tokens.len())));
        }
        let scale: Vec<f32> = masked.iter().map(|&m| if m { 0.0 } else { 1.0 }).collect();
        self.run(ws, None, (tokens, Some(&scale)), b, t, Logits::All, false)
    }

    /// Incremental forward: T new tokens per row at positions cache.len()..cache.len()+T,
    /// attending to everything cached before them; their keys and values join the cache.
    /// A prompt is one call (prefill); decoding is one call per token (T = 1).
    ///
    /// # Shapes
    /// tokens: (B, T) with B = cache.batch(); outputs as [`ImageGpt::forward`].
    pub fn forward_cached(
        &self,
        ws: &mut Workspace,
        cache: &mut KvCache,
        tokens: &[u32],
        t: usize,
        logits: Logits,
    ) -> Result<()> {
        if !self.config.is_causal() {
            return Err(Error::Invalid(
                "this is a BERT model (bidirectional attention): it has no causal decoding, so it cannot sample or \
                 complete images; use a GPT model (train with --objective gpt)"
                    .into(),
            ));
        }
        let b = cache.batch();
        self.run(ws, Some(cache), (tokens, None), b, t, logits, false)
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        ws: &mut Workspace,
        cache: Option<&mut KvCache>,
        input: (&[u32], Option<&[f32]>),
        b: usize,
        t: usize,
        logits: Logits,
        collect_hidden: bool,
    ) -> Result<()> {
        // The whole pass runs on a pool thread: its dozens of parallel kernels then fork from
        // a worker (cheap) instead of each waking the pool from outside (a futex round trip
        // per kernel, which dominated small decoding steps).
        crate::backend::on_pool(|| self.run_on_pool(ws, cache, input, b, t, logits, collect_hidden))
    }

    #[allow(clippy::too_many_arguments)]
    fn run_on_pool(
        &self,
        ws: &mut Workspace,
        mut cache: Option<&mut KvCache>,
        (tokens, token_scale): (&[u32], Option<&[f32]>),
        b: usize,
        t: usize,
        logits: Logits,
        collect_hidden: bool,
    ) -> Result<()> {
        let pos0 = cache.as_ref().map_or(0, |c| c.len());
        self.check_input(tokens, b, t, pos0)?;
        let cfg = &self.config;
        let (c, n) = (cfg.n_embd, b * t);
        ws.ensure(cfg, b, t);
        ws.hidden_states.clear();
        ws.attentions.clear();

        let x = &mut ws.x[..n * c];
        timed(Kernel::Embed, || self.embed(x, tokens, token_scale, t, pos0));
        for (l, lo) in self.layout.layers.iter().enumerate() {
            if collect_hidden {
                ws.hidden_states.push(ws.x[..n * c].to_vec());
            }
            let kv = cache.as_mut().map(|c| (&mut c.layers[l], pos0));
            let cached = kv.is_some();
            let i = cfg.n_inner();
            let bufs = BlockBufs {
                x: &mut ws.x[..n * c],
                ln1: &mut ws.ln[..n * c],
                rstd1: &mut ws.rstd[..n],
                qkv: &mut ws.qkv[..n * 3 * c],
                att: &mut ws.att[..n * c],
                saved: &mut ws.saved,
                x_mid: None,
                ln2: &mut ws.ln2[..n * c],
                rstd2: &mut ws.rstd2[..n],
                fc: &mut ws.fc[..n * i],
                fc_act: None,
                drop: BlockDropout::default(),
            };
            self.block_forward(l, lo, b, t, bufs, kv, cfg.is_causal());
            if ws.want_attentions && !cached {
                self.record_attentions(ws, l, b, t);
            }
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        if collect_hidden {
            ws.last_block_output = ws.x[..n * c].to_vec();
        }
        timed(Kernel::Norm, || {
            self.engine().rmsnorm_forward(
                &mut ws.last_hidden[..n * c],
                &mut ws.rstd[..n],
                &ws.x[..n * c],
                self.param(&self.layout.ln_f),
                cfg.layer_norm_epsilon,
            )
        });
        if collect_hidden {
            ws.hidden_states.push(ws.last_hidden[..n * c].to_vec());
        }
        timed(Kernel::Head, || self.head_forward(ws, b, t, logits));
        Ok(())
    }

    /// One block: x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)), over the buffers in `bufs`
    /// (one scratch set for inference, one saved set per layer for training).
    /// With `kv` = (this layer's cache, past length), the new keys and values are appended
    /// to the cache and attention runs over past + new positions.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn block_forward(
        &self,
        l: usize,
        lo: &LayerOffsets,
        b: usize,
        t: usize,
        bufs: BlockBufs,
        kv: Option<(&mut <Cpu as Backend>::Decode, usize)>,
        causal: bool,
    ) {
        let cfg = &self.config;
        let (c, inner, n, eps) = (cfg.n_embd, cfg.n_inner(), b * t, cfg.layer_norm_epsilon);
        let BlockBufs { x, ln1, rstd1, qkv, att, saved, x_mid, ln2, rstd2, fc, fc_act, mut drop } = bufs;
        timed(Kernel::Norm, || self.engine().rmsnorm_forward(ln1, rstd1, x, self.param(&lo.ln_1), eps));
        timed(Kernel::Matmul, || self.dense(qkv, ln1, (&lo.c_attn_w, &lo.c_attn_b), (n, c, 3 * c), t, false));
        let past = kv.as_ref().map_or(0, |kv| kv.1);
        timed(Kernel::Attention, || self.rotate_qk(qkv, t, past, false));
        let qkv = &*qkv;
        let view = |part: usize| SeqView { data: qkv, offset: part * c, batch_stride: t * 3 * c, row_stride: 3 * c };
        let mask = self.attention_mask(causal);
        let mut dims = AttnDims {
            b,
            t,
            tk: t,
            nh: cfg.n_head,
            hs: cfg.head_dim(),
            mask,
            form: self.config.attention_form(),
            scale: self.attn_scale(l),
            dropout: drop.attn,
        };
        match kv {
            Some((state, past)) => {
                dims.tk = past + t;
                let (q, k, v) = (view(0), view(1), view(2));
                timed(Kernel::Attention, || self.engine().attend_cached(state, att, saved, q, k, v, past, dims));
            }
            None => timed(Kernel::Attention, || {
                self.engine().attention_forward(att, saved, view(0), view(1), view(2), dims)
            }),
        }
        // x += att @ c_proj + b  (the gemm accumulates straight into the residual stream)
        let proj = (&lo.c_proj_w, &lo.c_proj_b);
        timed(Kernel::Matmul, || self.add_branch(x, att, proj, (n, c, c), t, drop.resid[0], &mut drop.branch));
        if let Some(m) = x_mid {
            m.copy_from_slice(x);
        }
        timed(Kernel::Norm, || self.engine().rmsnorm_forward(ln2, rstd2, x, self.param(&lo.ln_2), eps));
        timed(Kernel::Matmul, || self.dense(fc, ln2, (&lo.c_fc_w, &lo.c_fc_b), (n, c, inner), t, false));
        // training keeps the pre-activation; inference applies the activation in place
        let h: &[f32] = match fc_act {
            Some(out) => {
                timed(Kernel::Act, || self.engine().act_forward(self.act, out, fc));
                out
            }
            None => {
                timed(Kernel::Act, || self.engine().act_inplace(self.act, fc));
                fc
            }
        };
        let proj = (&lo.mlp_proj_w, &lo.mlp_proj_b);
        timed(Kernel::Matmul, || self.add_branch(x, h, proj, (n, inner, c), t, drop.resid[1], &mut drop.branch));
    }

    /// x += dropout(inp @ W + b): straight into x without dropout, else through `scratch`.
    #[allow(clippy::too_many_arguments)]
    fn add_branch(
        &self,
        x: &mut [f32],
        inp: &[f32],
        wb: (&Range<usize>, &Range<usize>),
        dims: (usize, usize, usize),
        t: usize,
        drop: Option<Dropout>,
        scratch: &mut Option<&mut Vec<f32>>,
    ) {
        match (drop, scratch) {
            (Some(d), Some(buf)) => {
                buf.resize(x.len(), 0.0);
                self.dense(buf, inp, wb, dims, t, false);
                self.engine().dropout(d, buf);
                self.engine().add_inplace(x, buf);
            }
            _ => self.dense(x, inp, wb, dims, t, true),
        }
    }

    /// HF's `output_attentions` for layer `l`, recomputed from the workspace (uncached only).
    fn record_attentions(&self, ws: &mut Workspace, l: usize, b: usize, t: usize) {
        let (c, nh) = (self.config.n_embd, self.config.n_head);
        let qkv = &ws.qkv[..b * t * 3 * c];
        let view = |part: usize| SeqView { data: qkv, offset: part * c, batch_stride: t * 3 * c, row_stride: 3 * c };
        let mask = self.attention_mask(self.config.is_causal());
        let dims = AttnDims {
            b,
            t,
            tk: t,
            nh,
            hs: self.config.head_dim(),
            mask,
            form: self.config.attention_form(),
            scale: self.attn_scale(l),
            dropout: None,
        };
        let mut probs = Vec::with_capacity(b * nh * t * t);
        for bi in 0..b {
            for h in 0..nh {
                probs.extend(attention::probs(view(0), view(1), &ws.saved, dims, bi, h));
            }
        }
        ws.attentions.push(probs);
    }

    fn head_forward(&self, ws: &mut Workspace, b: usize, t: usize, logits: Logits) {
        let (c, n) = (self.config.n_embd, b * t);
        let (Some(head), ModelKind::CausalLm) = (&self.layout.head, self.kind) else {
            ws.logits.clear();
            return;
        };
        let v = self.config.n_colors();
        match logits {
            Logits::None => ws.logits.clear(),
            Logits::All => {
                ws.logits.resize(n * v, 0.0);
                self.engine().matmul_forward(
                    &mut ws.logits,
                    &ws.last_hidden[..n * c],
                    self.param(head),
                    None,
                    (n, c, v),
                    WeightLayout::OutIn,
                    false,
                );
            }
            Logits::Last => {
                // gather the last row of each sequence: (B, C)
                let last: Vec<f32> = (0..b)
                    .flat_map(|i| ws.last_hidden[((i + 1) * t - 1) * c..(i + 1) * t * c].iter().copied())
                    .collect();
                ws.logits.resize(b * v, 0.0);
                if t != 1 || !self.packed_product(&mut ws.logits, &last, head, None, b, false) {
                    self.engine().matmul_forward(
                        &mut ws.logits,
                        &last,
                        self.param(head),
                        None,
                        (b, c, v),
                        WeightLayout::OutIn,
                        false,
                    )
                }
            }
        }
    }

    /// Mean over positions of `ws.last_hidden` (HF `ImageGPTForImageClassification` pooling).
    ///
    /// # Shapes
    /// returns (B, C).
    pub fn pooled(&self, ws: &Workspace) -> Vec<f32> {
        self.engine().mean_over_positions(&ws.last_hidden, ws.b, ws.t, self.config.n_embd)
    }

    /// Classifier logits from pooled features (B, C) -> (B, num_labels). Needs a `score` head.
    pub fn classify(&self, pooled: &[f32]) -> Result<Vec<f32>> {
        let (ModelKind::Classifier, Some(head)) = (self.kind, &self.layout.head) else {
            return Err(Error::Invalid("this model has no classification head (`score.weight`)".into()));
        };
        let (c, k) = (self.config.n_embd, self.config.num_labels());
        let b = pooled.len() / c;
        let mut out = vec![0f32; b * k];
        self.engine().matmul_forward(&mut out, pooled, self.param(head), None, (b, c, k), WeightLayout::OutIn, false);
        Ok(out)
    }
}
