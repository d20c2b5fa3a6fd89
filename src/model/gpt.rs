//! The ImageGPT transformer (HF `ImageGPTModel` + heads), computed by an engine of
//! `backend/` (`B`, the CPU one unless named). Reads top to bottom like nanoGPT's `model.py`:
//!
//! ```text
//! x = wte[tokens] + position rows (wpe[pos]; or wpe_row[r] + wpe_col[c]; rope_2d: none)
//! for each block:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
//! h = ln_f(x);  logits = h @ lm_head^T  (or pooled = mean_t h; logits = pooled @ score^T)
//! ```
//!
//! The model is `&self`; all activations live in a [`Workspace`] allocated once per
//! (B, T) and reused across calls. Every buffer is the engine's, and every kernel is reached
//! through it (`self.be`): the pass is written once for every engine.

use std::ops::Range;

use crate::backend::attention::{AttnDims, Seq};
use crate::backend::dropout::Dropout;
use crate::backend::profile::{Kernel, timed};
use crate::backend::{Activation, Backend, Cpu, WeightLayout};
use crate::config::ImageGptConfig;
use crate::error::{Error, Result};
use crate::rng::Rng;

use super::decode_matrices::DecodeMatrices;
use super::kv_cache::KvCache;
use super::params::{LayerOffsets, ModelKind, ParamLayout};

/// An ImageGPT model: config, class, and all parameters in one arena of engine `B`.
#[derive(Clone, Debug)]
pub struct ImageGpt<B: Backend = Cpu> {
    pub config: ImageGptConfig,
    pub kind: ModelKind,
    pub layout: ParamLayout,
    /// Every parameter, in the layout's order (HF names, `layout.entries`).
    pub params: B::Buf,
    pub act: Activation,
    /// The engine the parameters live in and the kernels run on.
    pub be: B,
    /// Packed copies of the block matrices and the output head for decoding steps, when asked
    /// ([`ImageGpt::set_decode_weights`]).
    pub(crate) decode_matrices: Option<DecodeMatrices<B::Packed>>,
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
pub struct Workspace<B: Backend = Cpu> {
    b: usize,
    t: usize,
    /// Residual stream (B, T, C).
    x: B::Buf,
    /// Norm output (B, T, C) and its 1/rms (B, T).
    ln: B::Buf,
    rstd: B::Buf,
    ln2: B::Buf,
    rstd2: B::Buf,
    /// (B, T, 3C): [q | k | v] per row.
    qkv: B::Buf,
    /// Attention output (B, T, C) and what the attention keeps of it.
    att: B::Buf,
    saved: B::Saved,
    /// MLP hidden (B, T, I).
    fc: B::Buf,
    /// The last position's row of each sequence (B, C), for [`Logits::Last`].
    last_rows: B::Buf,
    /// ln_f output (B, T, C): HF's last_hidden_state.
    pub last_hidden: B::Buf,
    /// Logits, (B, T, V-1) or (B, V-1) per [`Logits`] (empty for none).
    pub logits: B::Buf,
    /// With `collect_hidden`: HF's `hidden_states` (n_layer + 1 entries of (B, T, C)) and the
    /// raw output of the last block before ln_f, on the host.
    pub hidden_states: Vec<Vec<f32>>,
    pub last_block_output: Vec<f32>,
    /// Set to true to record HF's `attentions` (per layer, (B, nh, T, T)): for inspection
    /// and tests only, it stores T x T matrices.
    pub want_attentions: bool,
    pub attentions: Vec<Vec<f32>>,
}

impl<B: Backend> Default for Workspace<B> {
    fn default() -> Self {
        Workspace {
            b: 0,
            t: 0,
            x: Default::default(),
            ln: Default::default(),
            rstd: Default::default(),
            ln2: Default::default(),
            rstd2: Default::default(),
            qkv: Default::default(),
            att: Default::default(),
            saved: Default::default(),
            fc: Default::default(),
            last_rows: Default::default(),
            last_hidden: Default::default(),
            logits: Default::default(),
            hidden_states: Vec::new(),
            last_block_output: Vec::new(),
            want_attentions: false,
            attentions: Vec::new(),
        }
    }
}

impl<B: Backend> Workspace<B> {
    pub fn new() -> Self {
        Self::default()
    }

    fn ensure(&mut self, be: &B, cfg: &ImageGptConfig, b: usize, t: usize) -> Result<()> {
        let (c, i, n) = (cfg.n_embd, cfg.n_inner(), b * t);
        let bufs = [
            (&mut self.x, n * c),
            (&mut self.ln, n * c),
            (&mut self.rstd, n),
            (&mut self.ln2, n * c),
            (&mut self.rstd2, n),
            (&mut self.qkv, n * 3 * c),
            (&mut self.att, n * c),
            (&mut self.fc, n * i),
            (&mut self.last_hidden, n * c),
        ];
        for (buf, len) in bufs {
            grow(be, buf, len)?;
        }
        self.b = b;
        self.t = t;
        Ok(())
    }

    pub fn batch(&self) -> usize {
        self.b
    }
    pub fn seq_len(&self) -> usize {
        self.t
    }
}

/// Makes `buf` hold at least `len` values (a workspace only grows).
pub(crate) fn grow<B: Backend>(be: &B, buf: &mut B::Buf, len: usize) -> Result<()> {
    if be.size(buf) < len { be.resize(buf, len) } else { Ok(()) }
}

/// The buffers one block reads and writes, shapes for N = B*T rows: x (N, C) residual,
/// ln1/ln2 (N, C), rstd1/rstd2 (N), qkv (N, 3C), att (N, C), the attention's saved state, fc (N, I);
/// x_mid (N, C) receives the residual after attention and fc_act (N, I) the activation
/// when given (training), else the activation is applied to fc in place.
pub(crate) struct BlockBufs<'a, B: Backend> {
    pub x: B::ViewMut<'a>,
    pub ln1: B::ViewMut<'a>,
    pub rstd1: B::ViewMut<'a>,
    pub qkv: B::ViewMut<'a>,
    pub att: B::ViewMut<'a>,
    pub saved: &'a mut B::Saved,
    pub x_mid: Option<B::ViewMut<'a>>,
    pub ln2: B::ViewMut<'a>,
    pub rstd2: B::ViewMut<'a>,
    pub fc: B::ViewMut<'a>,
    pub fc_act: Option<B::ViewMut<'a>>,
    /// Training with dropout: the block's masks and an (N, C) scratch for a dropped branch.
    pub drop: BlockDropout<'a, B>,
}

/// One block's dropout in training (HF: `attn_dropout` on the probabilities, `resid_dropout`
/// on c_proj's output, the MLP's `dropout` on its output); all None in inference.
pub(crate) struct BlockDropout<'a, B: Backend> {
    pub attn: Option<Dropout>,
    /// [attention branch, MLP branch]
    pub resid: [Option<Dropout>; 2],
    /// At least (N, C) values.
    pub branch: Option<&'a mut B::Buf>,
}

impl<B: Backend> Default for BlockDropout<'_, B> {
    fn default() -> Self {
        BlockDropout { attn: None, resid: [None, None], branch: None }
    }
}

impl ImageGpt {
    /// A model on the CPU engine with all parameters zero (to be loaded or initialised).
    pub fn zeros(config: ImageGptConfig, kind: ModelKind) -> Result<Self> {
        Self::zeros_on(Cpu, config, kind)
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
}

impl<B: Backend> ImageGpt<B> {
    /// A model in engine `be` with all parameters zero.
    pub fn zeros_on(be: B, config: ImageGptConfig, kind: ModelKind) -> Result<Self> {
        config.validate("model config")?;
        let act = Activation::from_hf(&config.activation_function)?;
        let layout = ParamLayout::new(&config, kind);
        let params = be.zeros(layout.total)?;
        Ok(ImageGpt { config, kind, layout, params, act, be, decode_matrices: None })
    }

    /// The same model in engine `be` (its parameters copied there; decoding's packed
    /// matrices are not: set them again with [`ImageGpt::set_decode_weights`]).
    pub fn to_engine<E: Backend>(&self, be: E) -> Result<ImageGpt<E>> {
        let host = self.be.download(&self.params, 0..self.be.size(&self.params))?;
        let params = be.upload(&host)?;
        let (config, layout) = (self.config.clone(), self.layout.clone());
        Ok(ImageGpt { config, kind: self.kind, layout, params, act: self.act, be, decode_matrices: None })
    }

    /// The parameters at `r` (an entry's range of the layout).
    pub fn param(&self, r: &Range<usize>) -> B::View<'_> {
        self.be.view(&self.params, r.clone())
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

    /// The shapes and options of layer `l`'s attention over (B, T) rows.
    pub(crate) fn attn_dims(
        &self,
        l: usize,
        (b, t): (usize, usize),
        causal: bool,
        dropout: Option<Dropout>,
    ) -> AttnDims {
        AttnDims {
            b,
            t,
            tk: t,
            nh: self.config.n_head,
            hs: self.config.head_dim(),
            mask: self.attention_mask(causal),
            form: self.config.attention_form(),
            scale: self.attn_scale(l),
            dropout,
        }
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
        ws: &mut Workspace<B>,
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
        ws: &mut Workspace<B>,
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
        ws: &mut Workspace<B>,
        cache: &mut KvCache<B>,
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
        ws: &mut Workspace<B>,
        cache: Option<&mut KvCache<B>>,
        input: (&[u32], Option<&[f32]>),
        b: usize,
        t: usize,
        logits: Logits,
        collect_hidden: bool,
    ) -> Result<()> {
        // The CPU runs the whole pass on a pool thread: its dozens of parallel kernels then
        // fork from a worker (cheap) instead of each waking the pool from outside (a futex
        // round trip per kernel, which dominated small decoding steps).
        self.be.enter(|| self.run_entered(ws, cache, input, b, t, logits, collect_hidden))
    }

    #[allow(clippy::too_many_arguments)]
    fn run_entered(
        &self,
        ws: &mut Workspace<B>,
        mut cache: Option<&mut KvCache<B>>,
        (tokens, token_scale): (&[u32], Option<&[f32]>),
        b: usize,
        t: usize,
        logits: Logits,
        collect_hidden: bool,
    ) -> Result<()> {
        let pos0 = cache.as_ref().map_or(0, |c| c.len());
        self.check_input(tokens, b, t, pos0)?;
        let (be, cfg) = (&self.be, &self.config);
        let (c, i, n) = (cfg.n_embd, cfg.n_inner(), b * t);
        let nc = n * c;
        ws.ensure(be, cfg, b, t)?;
        ws.hidden_states.clear();
        ws.attentions.clear();

        timed(Kernel::Embed, || self.embed(be.view_mut(&mut ws.x, 0..nc), tokens, token_scale, t, pos0));
        for (l, lo) in self.layout.layers.iter().enumerate() {
            if collect_hidden {
                ws.hidden_states.push(be.download(&ws.x, 0..nc)?);
            }
            let kv = cache.as_mut().map(|c| (&mut c.layers[l], pos0));
            let cached = kv.is_some();
            let bufs = BlockBufs::<B> {
                x: be.view_mut(&mut ws.x, 0..nc),
                ln1: be.view_mut(&mut ws.ln, 0..nc),
                rstd1: be.view_mut(&mut ws.rstd, 0..n),
                qkv: be.view_mut(&mut ws.qkv, 0..3 * nc),
                att: be.view_mut(&mut ws.att, 0..nc),
                saved: &mut ws.saved,
                x_mid: None,
                ln2: be.view_mut(&mut ws.ln2, 0..nc),
                rstd2: be.view_mut(&mut ws.rstd2, 0..n),
                fc: be.view_mut(&mut ws.fc, 0..n * i),
                fc_act: None,
                drop: BlockDropout::default(),
            };
            self.block_forward(l, lo, (b, t), bufs, kv, cfg.is_causal());
            if ws.want_attentions && !cached {
                self.record_attentions(ws, l, b, t);
            }
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        if collect_hidden {
            ws.last_block_output = be.download(&ws.x, 0..nc)?;
        }
        timed(Kernel::Norm, || {
            be.rmsnorm_forward(
                be.view_mut(&mut ws.last_hidden, 0..nc),
                be.view_mut(&mut ws.rstd, 0..n),
                be.view(&ws.x, 0..nc),
                self.param(&self.layout.ln_f),
                cfg.layer_norm_epsilon,
            )
        });
        if collect_hidden {
            ws.hidden_states.push(be.download(&ws.last_hidden, 0..nc)?);
        }
        timed(Kernel::Head, || self.head_forward(ws, b, t, logits))
    }

    /// One block: x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)), over the buffers in `bufs`
    /// (one scratch set for inference, one saved set per layer for training).
    /// With `kv` = (this layer's cache, past length), the new keys and values are appended
    /// to the cache and attention runs over past + new positions.
    pub(crate) fn block_forward(
        &self,
        l: usize,
        lo: &LayerOffsets,
        (b, t): (usize, usize),
        bufs: BlockBufs<B>,
        kv: Option<(&mut B::Decode, usize)>,
        causal: bool,
    ) {
        let (be, cfg) = (&self.be, &self.config);
        let (c, inner, n, eps) = (cfg.n_embd, cfg.n_inner(), b * t, cfg.layer_norm_epsilon);
        let BlockBufs {
            mut x,
            mut ln1,
            mut rstd1,
            mut qkv,
            mut att,
            saved,
            x_mid,
            mut ln2,
            mut rstd2,
            mut fc,
            mut fc_act,
            mut drop,
        } = bufs;
        timed(Kernel::Norm, || {
            be.rmsnorm_forward(be.reborrow(&mut ln1), be.reborrow(&mut rstd1), be.read(&x), self.param(&lo.ln_1), eps)
        });
        let attn_w = (&lo.c_attn_w, &lo.c_attn_b);
        timed(Kernel::Matmul, || self.dense(be.reborrow(&mut qkv), be.read(&ln1), attn_w, (n, c, 3 * c), t, false));
        let past = kv.as_ref().map_or(0, |kv| kv.1);
        timed(Kernel::Attention, || self.rotate_qk(be.reborrow(&mut qkv), t, past, false));
        let qkv = be.read(&qkv);
        // q, k, v: the thirds of each (B, T, 3C) row
        let view = |part: usize| Seq { data: qkv, offset: part * c, batch_stride: t * 3 * c, row_stride: 3 * c };
        let mut dims = self.attn_dims(l, (b, t), causal, drop.attn);
        match kv {
            Some((state, past)) => {
                dims.tk = past + t;
                let (q, k, v) = (view(0), view(1), view(2));
                timed(Kernel::Attention, || be.attend_cached(state, be.reborrow(&mut att), saved, q, k, v, past, dims));
            }
            None => timed(Kernel::Attention, || {
                be.attention_forward(be.reborrow(&mut att), saved, view(0), view(1), view(2), dims)
            }),
        }
        // x += att @ c_proj + b  (the gemm accumulates straight into the residual stream)
        let proj = (&lo.c_proj_w, &lo.c_proj_b);
        let (att, resid) = (be.read(&att), drop.resid);
        timed(Kernel::Matmul, || {
            self.add_branch(be.reborrow(&mut x), att, proj, (n, c, c), t, resid[0], &mut drop.branch)
        });
        if let Some(m) = x_mid {
            be.copy(m, be.read(&x));
        }
        timed(Kernel::Norm, || {
            be.rmsnorm_forward(be.reborrow(&mut ln2), be.reborrow(&mut rstd2), be.read(&x), self.param(&lo.ln_2), eps)
        });
        let fc_w = (&lo.c_fc_w, &lo.c_fc_b);
        timed(Kernel::Matmul, || self.dense(be.reborrow(&mut fc), be.read(&ln2), fc_w, (n, c, inner), t, false));
        // training keeps the pre-activation; inference applies the activation in place
        timed(Kernel::Act, || match &mut fc_act {
            Some(out) => be.act_forward(self.act, be.reborrow(out), be.read(&fc)),
            None => be.act_inplace(self.act, be.reborrow(&mut fc)),
        });
        let h = match &fc_act {
            Some(out) => be.read(out),
            None => be.read(&fc),
        };
        let proj = (&lo.mlp_proj_w, &lo.mlp_proj_b);
        timed(Kernel::Matmul, || {
            self.add_branch(be.reborrow(&mut x), h, proj, (n, inner, c), t, resid[1], &mut drop.branch)
        });
    }

    /// x (N, n) += dropout(inp (N, k) @ W + b): straight into x without dropout, else
    /// through `scratch`.
    #[allow(clippy::too_many_arguments)]
    fn add_branch(
        &self,
        x: B::ViewMut<'_>,
        inp: B::View<'_>,
        wb: (&Range<usize>, &Range<usize>),
        dims: (usize, usize, usize),
        t: usize,
        drop: Option<Dropout>,
        scratch: &mut Option<&mut B::Buf>,
    ) {
        let be = &self.be;
        match (drop, scratch) {
            (Some(d), Some(buf)) => {
                let mut y = be.view_mut(buf, 0..dims.0 * dims.2);
                self.dense(be.reborrow(&mut y), inp, wb, dims, t, false);
                be.dropout(d, be.reborrow(&mut y));
                be.add_inplace(x, be.read(&y));
            }
            _ => self.dense(x, inp, wb, dims, t, true),
        }
    }

    /// HF's `output_attentions` for layer `l`, recomputed from the workspace (uncached only).
    fn record_attentions(&self, ws: &mut Workspace<B>, l: usize, b: usize, t: usize) {
        let c = self.config.n_embd;
        let qkv = self.be.view(&ws.qkv, 0..b * t * 3 * c);
        let view = |part: usize| Seq { data: qkv, offset: part * c, batch_stride: t * 3 * c, row_stride: 3 * c };
        let dims = self.attn_dims(l, (b, t), self.config.is_causal(), None);
        let probs = self.be.attention_probs(&ws.saved, view(0), view(1), dims);
        ws.attentions.push(probs);
    }

    fn head_forward(&self, ws: &mut Workspace<B>, b: usize, t: usize, logits: Logits) -> Result<()> {
        let be = &self.be;
        let (c, n) = (self.config.n_embd, b * t);
        let (Some(head), ModelKind::CausalLm) = (&self.layout.head, self.kind) else {
            return be.resize(&mut ws.logits, 0);
        };
        let v = self.config.n_colors();
        match logits {
            Logits::None => be.resize(&mut ws.logits, 0)?,
            Logits::All => {
                be.resize(&mut ws.logits, n * v)?;
                let (out, h) = (be.view_mut(&mut ws.logits, 0..n * v), be.view(&ws.last_hidden, 0..n * c));
                be.matmul_forward(out, h, self.param(head), None, (n, c, v), WeightLayout::OutIn, false);
            }
            Logits::Last => {
                // the last row of each sequence: (B, C)
                if t > 1 {
                    grow(be, &mut ws.last_rows, b * c)?;
                    for i in 0..b {
                        let last = ((i + 1) * t - 1) * c;
                        be.copy(
                            be.view_mut(&mut ws.last_rows, i * c..(i + 1) * c),
                            be.view(&ws.last_hidden, last..last + c),
                        );
                    }
                }
                let rows = if t > 1 { be.view(&ws.last_rows, 0..b * c) } else { be.view(&ws.last_hidden, 0..b * c) };
                be.resize(&mut ws.logits, b * v)?;
                let out = be.view_mut(&mut ws.logits, 0..b * v);
                self.head_product(out, rows, head, b, t);
            }
        }
        Ok(())
    }

    /// logits (B, V-1) = rows (B, C) @ lm_head^T: from the packed copy in decoding steps (`t`
    /// == 1) when there is one.
    fn head_product(&self, mut out: B::ViewMut<'_>, rows: B::View<'_>, head: &Range<usize>, b: usize, t: usize) {
        let (c, v) = (self.config.n_embd, self.config.n_colors());
        if t != 1 || !self.packed_product(self.be.reborrow(&mut out), rows, head, None, b, false) {
            self.be.matmul_forward(out, rows, self.param(head), None, (b, c, v), WeightLayout::OutIn, false)
        }
    }

    /// Mean over positions of `ws.last_hidden` (HF `ImageGPTForImageClassification` pooling).
    ///
    /// # Shapes
    /// returns (B, C), on the host.
    pub fn pooled(&self, ws: &Workspace<B>) -> Vec<f32> {
        let (b, t, c) = (ws.b, ws.t, self.config.n_embd);
        self.be.mean_over_positions(self.be.view(&ws.last_hidden, 0..b * t * c), b, t, c)
    }

    /// Classifier logits from pooled features (B, C) -> (B, num_labels). Needs a `score` head.
    pub fn classify(&self, pooled: &[f32]) -> Result<Vec<f32>> {
        let (ModelKind::Classifier, Some(head)) = (self.kind, &self.layout.head) else {
            return Err(Error::Invalid("this model has no classification head (`score.weight`)".into()));
        };
        let be = &self.be;
        let (c, k) = (self.config.n_embd, self.config.num_labels());
        let b = pooled.len() / c;
        let (inp, mut out) = (be.upload(pooled)?, be.zeros(b * k)?);
        let (o, x) = (be.view_mut(&mut out, 0..b * k), be.view(&inp, 0..b * c));
        be.matmul_forward(o, x, self.param(head), None, (b, c, k), WeightLayout::OutIn, false);
        be.download(&out, 0..b * k)
    }
}
