//! The training pass: a forward that keeps every activation the backward needs (llm.c's
//! `ActivationTensors`), the fused loss, and the backward written out kernel by kernel in
//! reverse order. Gradients land in a flat arena with the parameters' layout.
//!
//! Objectives (paper, section 2.2):
//! - GPT: input [SOS] + tokens[:-1], causal attention, mean cross-entropy over all tokens.
//! - BERT: input = tokens with the token embedding of masked positions multiplied by 0
//!   (position embedding kept), no SOS, bidirectional attention, cross-entropy over the
//!   masked positions only.

use std::ops::Range;

use crate::backend::attention::Seq;
use crate::backend::profile::{Kernel, timed};
use crate::backend::{Backend, Cpu, WeightLayout};
use crate::error::{Error, Result};

use super::gpt::{BlockBufs, BlockDropout, ImageGpt};
use super::params::ModelKind;
use crate::backend::dropout::{Dropout, DropoutSites};

pub use crate::config::Objective;

/// Saved activations of one block.
struct LayerActs<B: Backend> {
    x_in: B::Buf,    // (N, C) block input (residual stream)
    ln1: B::Buf,     // (N, C)
    rstd1: B::Buf,   // (N)
    qkv: B::Buf,     // (N, 3C)
    att: B::Buf,     // (N, C) attention output before c_proj
    saved: B::Saved, // what the attention keeps for its backward
    x_mid: B::Buf,   // (N, C) residual after attention
    ln2: B::Buf,     // (N, C)
    rstd2: B::Buf,   // (N)
    fc: B::Buf,      // (N, I) before the activation
    fc_act: B::Buf,  // (N, I) after it
}

impl<B: Backend> Default for LayerActs<B> {
    fn default() -> Self {
        let e = B::Buf::default;
        LayerActs {
            x_in: e(),
            ln1: e(),
            rstd1: e(),
            qkv: e(),
            att: e(),
            saved: B::Saved::default(),
            x_mid: e(),
            ln2: e(),
            rstd2: e(),
            fc: e(),
            fc_act: e(),
        }
    }
}

/// Everything one training step allocates, reused between steps of the same size.
pub struct TrainActs<B: Backend = Cpu> {
    b: usize,
    t: usize,
    layers: Vec<LayerActs<B>>,
    input: Vec<u32>,
    token_scale: Vec<f32>,
    weights: Vec<f32>,
    x: B::Buf,      // (N, C) running residual, then the last block's output
    lnf: B::Buf,    // (N, C)
    rstd_f: B::Buf, // (N)
    logits: B::Buf, // (N, V-1), becomes dlogits
    // backward scratch
    dx: B::Buf,
    dln: B::Buf,
    datt: B::Buf,
    dqkv: B::Buf,
    dfc_act: B::Buf,
    dfc: B::Buf,
    /// (N, C): a residual branch's output (forward) or its gradient (backward) under dropout.
    branch: B::Buf,
    /// The dropout of the next training pass (set by the trainer per micro-batch), and of the
    /// pass running (none in evaluation).
    dropout: DropoutSites,
    active: DropoutSites,
}

impl<B: Backend> Default for TrainActs<B> {
    fn default() -> Self {
        let e = B::Buf::default;
        TrainActs {
            b: 0,
            t: 0,
            layers: Vec::new(),
            input: Vec::new(),
            token_scale: Vec::new(),
            weights: Vec::new(),
            x: e(),
            lnf: e(),
            rstd_f: e(),
            logits: e(),
            dx: e(),
            dln: e(),
            datt: e(),
            dqkv: e(),
            dfc_act: e(),
            dfc: e(),
            branch: e(),
            dropout: DropoutSites::default(),
            active: DropoutSites::default(),
        }
    }
}

/// `v` resized to `n` values (as `Vec::resize`), viewed whole.
fn sized<'a, B: Backend>(be: &B, v: &'a mut B::Buf, n: usize) -> Result<B::ViewMut<'a>> {
    be.resize(v, n)?;
    Ok(be.view_mut(v, 0..n))
}

impl<B: Backend> TrainActs<B> {
    pub fn new() -> Self {
        Self::default()
    }

    /// The dropout masks of the following training passes (`forward_backward` and
    /// `forward_backward_classify`; evaluation never drops).
    pub fn set_dropout(&mut self, sites: DropoutSites) {
        self.dropout = sites;
    }
}

impl<B: Backend> ImageGpt<B> {
    /// One forward and backward pass. Adds the gradient of the mean loss to `grads` (same
    /// layout as `params`) and returns the loss (nats per predicted token).
    ///
    /// # Shapes
    /// tokens: (B, T) image tokens; mask (BERT only): (B, T), true = masked and predicted.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward(
        &self,
        acts: &mut TrainActs<B>,
        grads: &mut B::Buf,
        tokens: &[u32],
        b: usize,
        t: usize,
        objective: Objective,
        mask: Option<&[bool]>,
    ) -> Result<f64> {
        self.train_pass(acts, Some(grads), tokens, b, t, objective, mask)
    }

    /// The loss alone (evaluation): the training forward without the backward.
    pub fn loss(
        &self,
        acts: &mut TrainActs<B>,
        tokens: &[u32],
        b: usize,
        t: usize,
        objective: Objective,
        mask: Option<&[bool]>,
    ) -> Result<f64> {
        self.train_pass(acts, None, tokens, b, t, objective, mask)
    }

    #[allow(clippy::too_many_arguments)]
    fn train_pass(
        &self,
        acts: &mut TrainActs<B>,
        grads: Option<&mut B::Buf>,
        tokens: &[u32],
        b: usize,
        t: usize,
        objective: Objective,
        mask: Option<&[bool]>,
    ) -> Result<f64> {
        if self.kind != ModelKind::CausalLm {
            return Err(Error::Invalid(
                "training needs a model with an lm_head (ImageGPTForCausalImageModeling)".into(),
            ));
        }
        if grads.as_ref().is_some_and(|g| self.be.size(g) != self.be.size(&self.params)) {
            return Err(Error::Invalid("gradient buffer does not match the parameters".into()));
        }
        if tokens.len() != b * t {
            return Err(Error::Invalid(format!("expected {b} x {t} tokens, got {}", tokens.len())));
        }
        let n = b * t;
        let sos = self.config.sos_token();
        // Inputs, token-embedding multipliers and loss weights of the objective.
        acts.input.clear();
        acts.token_scale.clear();
        acts.weights.clear();
        match objective {
            Objective::Gpt => {
                for row in tokens.chunks(t) {
                    acts.input.push(sos);
                    acts.input.extend_from_slice(&row[..t - 1]);
                }
                acts.token_scale.resize(n, 1.0);
                acts.weights.resize(n, 1.0 / n as f32);
            }
            Objective::Bert => {
                let m = mask.ok_or_else(|| Error::Invalid("the BERT objective needs a mask".into()))?;
                let count = m.iter().filter(|&&x| x).count();
                if count == 0 {
                    return Err(Error::Invalid("BERT batch with no masked position".into()));
                }
                acts.input.extend_from_slice(tokens);
                acts.token_scale.extend(m.iter().map(|&x| if x { 0.0 } else { 1.0 }));
                acts.weights.extend(m.iter().map(|&x| if x { 1.0 / count as f32 } else { 0.0 }));
            }
        }
        if tokens.iter().any(|&x| x >= sos) {
            return Err(Error::Invalid(format!("training tokens must be colours 0..{}", sos - 1)));
        }
        self.check_input(&acts.input, b, t, 0)?;
        acts.b = b;
        acts.t = t;
        let causal = objective == Objective::Gpt;
        acts.active = if grads.is_some() { acts.dropout } else { DropoutSites::default() };
        // entered as ImageGpt::forward (the CPU: the kernels fork from inside its pool)
        self.be.enter(|| {
            self.train_forward(acts, causal)?;
            let (be, v) = (&self.be, self.config.n_colors());
            let logits = be.whole_mut(&mut acts.logits);
            let loss = timed(Kernel::Head, || be.cross_entropy_fused(logits, tokens, &acts.weights, v));
            if let Some(g) = grads {
                self.train_backward(acts, g, causal, None)?;
            }
            Ok(loss)
        })
    }

    /// Fine-tuning step (paper, section 3.4): one pass over the image tokens (no SOS, as HF's
    /// `ImageGPTForImageClassification` sees them) gives both losses: `gen_weight` x the
    /// generative loss plus the cross-entropy of `score` over the mean-pooled ln_f output.
    /// GPT models: causal, next-pixel cross-entropy (positions 0..T-1 predict 1..T). BERT
    /// models: bidirectional, the pixels where `masked` is true (required when gen_weight > 0)
    /// have their token embedding zeroed and are predicted. Adds both gradients to `grads` and
    /// `dscore` (num_labels, C); returns (gen loss, class loss, correct count).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward_classify(
        &self,
        acts: &mut TrainActs<B>,
        grads: &mut B::Buf,
        score: B::View<'_>,
        dscore: B::ViewMut<'_>,
        tokens: &[u32],
        labels: &[u16],
        b: usize,
        t: usize,
        (gen_weight, masked): (f64, Option<&[bool]>),
    ) -> Result<(f64, f64, usize)> {
        if self.kind != ModelKind::CausalLm || t < 2 || tokens.len() != b * t || labels.len() != b {
            return Err(Error::Invalid("fine-tuning needs a causal model and (B, T >= 2) tokens with B labels".into()));
        }
        let (be, c, v) = (&self.be, self.config.n_embd, self.config.n_colors());
        let k = be.view_len(score) / c;
        if tokens.iter().any(|&x| x as usize >= v) || labels.iter().any(|&l| l as usize >= k) {
            return Err(Error::Invalid(format!("tokens must be < {v} and labels < {k}")));
        }
        let causal = self.config.is_causal();
        let targets = classify_inputs(acts, tokens, (b, t), causal, (gen_weight, masked))?;
        acts.b = b;
        acts.t = t;
        acts.active = acts.dropout;
        self.train_forward(acts, causal)?;
        let logits = be.whole_mut(&mut acts.logits);
        let gen_loss = if gen_weight > 0.0 {
            be.cross_entropy_fused(logits, &targets, &acts.weights, v) / gen_weight
        } else {
            be.fill(logits, 0.0);
            0.0
        };
        let (dlnf, correct, clf) = self.classifier_backward(acts, score, dscore, labels, k)?;
        self.train_backward(acts, grads, causal, Some(&dlnf))?;
        Ok((gen_loss, clf, correct))
    }

    /// The classification head of a fine-tuning step over `acts.lnf`: pooled (B, C) =
    /// mean_t ln_f(x); class logits (B, K) = pooled @ score^T and their cross-entropy.
    /// Adds dscore += dlogits^T @ pooled and returns d ln_f (B, T, C) (each position gets
    /// dpooled / T, dpooled = dlogits @ score), the correct count and the loss.
    fn classifier_backward(
        &self,
        acts: &TrainActs<B>,
        score: B::View<'_>,
        dscore: B::ViewMut<'_>,
        labels: &[u16],
        k: usize,
    ) -> Result<(B::Buf, usize, f64)> {
        let (be, b, t, c) = (&self.be, acts.b, acts.t, self.config.n_embd);
        let pooled = be.upload(&be.mean_over_positions(be.whole(&acts.lnf), b, t, c))?;
        let pooled = be.whole(&pooled);
        let mut cl = be.zeros(b * k)?;
        be.matmul_forward(be.whole_mut(&mut cl), pooled, score, None, (b, c, k), WeightLayout::OutIn, false);
        let host = be.download(&cl, 0..b * k)?;
        let correct =
            host.chunks_exact(k).zip(labels).filter(|(row, l)| crate::backend::loss::argmax(row) as u16 == **l).count();
        let lab: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
        let clf = be.cross_entropy_fused(be.whole_mut(&mut cl), &lab, &vec![1.0 / b as f32; b], k); // cl -> dclf
        let dclf = be.whole(&cl);
        be.matmul_backward_weight(dscore, dclf, pooled, (b, k, c));
        let mut dpooled = be.zeros(b * c)?;
        be.matmul_forward(be.whole_mut(&mut dpooled), dclf, score, None, (b, k, c), WeightLayout::InOut, false);
        let mut dlnf = be.zeros(b * t * c)?;
        be.mean_over_positions_backward(be.whole_mut(&mut dlnf), be.whole(&dpooled), b, t, c);
        Ok((dlnf, correct, clf))
    }

    fn train_forward(&self, a: &mut TrainActs<B>, causal: bool) -> Result<()> {
        let (be, cfg) = (&self.be, &self.config);
        let (b, t, c, inner) = (a.b, a.t, cfg.n_embd, cfg.n_inner());
        let (n, eps) = (b * t, cfg.layer_norm_epsilon);
        a.layers.resize_with(cfg.n_layer, LayerActs::default);
        // x = wte[input] * scale + position rows (BERT: scale 0 at masked positions)
        {
            let mut x = sized(be, &mut a.x, n * c)?;
            timed(Kernel::Embed, || self.embed(be.reborrow(&mut x), &a.input, Some(&a.token_scale), t, 0));
            if let Some(d) = a.active.embd {
                be.dropout(d, x);
            }
        }
        if a.active.resid.is_some() {
            be.resize(&mut a.branch, n * c)?; // the dropped branches' scratch
        }
        for (l, lo) in self.layout.layers.iter().enumerate() {
            let la = &mut a.layers[l];
            be.copy(sized(be, &mut la.x_in, n * c)?, be.whole(&a.x));
            let bufs = BlockBufs::<B> {
                x: be.whole_mut(&mut a.x),
                ln1: sized(be, &mut la.ln1, n * c)?,
                rstd1: sized(be, &mut la.rstd1, n)?,
                qkv: sized(be, &mut la.qkv, n * 3 * c)?,
                att: sized(be, &mut la.att, n * c)?,
                saved: &mut la.saved,
                x_mid: Some(sized(be, &mut la.x_mid, n * c)?),
                ln2: sized(be, &mut la.ln2, n * c)?,
                rstd2: sized(be, &mut la.rstd2, n)?,
                fc: sized(be, &mut la.fc, n * inner)?,
                fc_act: Some(sized(be, &mut la.fc_act, n * inner)?),
                drop: BlockDropout {
                    attn: a.active.attn_of(l),
                    resid: [a.active.resid_of(l, false), a.active.resid_of(l, true)],
                    branch: Some(&mut a.branch),
                },
            };
            self.block_forward(l, lo, (b, t), bufs, None, causal);
        }
        let (lnf, rstd) = (sized(be, &mut a.lnf, n * c)?, sized(be, &mut a.rstd_f, n)?);
        let ln_f = self.param(&self.layout.ln_f);
        timed(Kernel::Norm, || be.rmsnorm_forward(lnf, rstd, be.whole(&a.x), ln_f, eps));
        let v = cfg.n_colors();
        let head = self.layout.head.as_ref().expect("causal model has lm_head");
        let logits = sized(be, &mut a.logits, n * v)?;
        let (lnf, w) = (be.whole(&a.lnf), self.param(head));
        timed(Kernel::Head, || be.matmul_forward(logits, lnf, w, None, (n, c, v), WeightLayout::OutIn, false));
        Ok(())
    }

    /// The backward of the training pass, from dlogits (in `a.logits`) to `grads`.
    /// `extra_dlnf` (N, C): a further gradient on ln_f's output (the classification head).
    fn train_backward(
        &self,
        a: &mut TrainActs<B>,
        grads: &mut B::Buf,
        causal: bool,
        extra_dlnf: Option<&B::Buf>,
    ) -> Result<()> {
        let (be, cfg) = (&self.be, &self.config);
        let (b, t, c, v) = (a.b, a.t, cfg.n_embd, cfg.n_colors());
        let n = b * t;
        let head = self.layout.head.clone().expect("causal model has lm_head");
        // Head: logits = lnf @ W^T, W (V, C). dlnf = dlogits @ W; dW += dlogits^T @ lnf.
        {
            let mut dln = sized(be, &mut a.dln, n * c)?;
            let (dlogits, lnf, w) = (be.whole(&a.logits), be.whole(&a.lnf), self.param(&head));
            timed(Kernel::Head, || {
                be.matmul_forward(be.reborrow(&mut dln), dlogits, w, None, (n, v, c), WeightLayout::InOut, false);
                be.matmul_backward_weight(be.view_mut(grads, head.clone()), dlogits, lnf, (n, v, c));
            });
            if let Some(extra) = extra_dlnf {
                be.add_inplace(dln, be.whole(extra));
            }
        }
        let mut dx = sized(be, &mut a.dx, n * c)?;
        be.fill(be.reborrow(&mut dx), 0.0);
        let ln_f = &self.layout.ln_f;
        let (dln, x, rstd) = (be.whole(&a.dln), be.whole(&a.x), be.whole(&a.rstd_f));
        timed(Kernel::Norm, || {
            be.rmsnorm_backward(dx, be.view_mut(grads, ln_f.clone()), dln, x, rstd, self.param(ln_f))
        });
        for l in (0..cfg.n_layer).rev() {
            self.block_backward(a, grads, l, causal)?;
        }
        let mut dx = be.whole_mut(&mut a.dx);
        if let Some(d) = a.active.embd {
            be.dropout(d, be.reborrow(&mut dx));
        }
        let (dx, grads) = (be.read(&dx), be.whole_mut(grads));
        timed(Kernel::Embed, || self.embed_backward(grads, dx, &a.input, Some(&a.token_scale), t));
        Ok(())
    }

    /// The backward of block `l`: a.dx holds d(block output) and receives d(block input);
    /// the block's parameter gradients join `grads`.
    fn block_backward(&self, a: &mut TrainActs<B>, grads: &mut B::Buf, l: usize, causal: bool) -> Result<()> {
        let (be, cfg) = (&self.be, &self.config);
        let (b, t, c, inner) = (a.b, a.t, cfg.n_embd, cfg.n_inner());
        let n = b * t;
        let (la, lo) = (&a.layers[l], &self.layout.layers[l]);
        // MLP: x_out = x_mid + dropout(act(ln2 @ Wfc + bfc) @ Wp + bp)
        let dy = branch_grad(be, &mut a.branch, &a.dx, a.active.resid_of(l, true));
        let dfc_act = sized(be, &mut a.dfc_act, n * inner)?;
        let proj = (&lo.mlp_proj_w, &lo.mlp_proj_b);
        timed(Kernel::Matmul, || self.dense_backward(dfc_act, grads, proj, be.whole(&la.fc_act), dy, (n, inner, c)));
        let dfc = sized(be, &mut a.dfc, n * inner)?;
        timed(Kernel::Act, || be.act_backward(self.act, dfc, be.whole(&a.dfc_act), be.whole(&la.fc)));
        let dln = sized(be, &mut a.dln, n * c)?;
        let fc = (&lo.c_fc_w, &lo.c_fc_b);
        timed(Kernel::Matmul, || {
            self.dense_backward(dln, grads, fc, be.whole(&la.ln2), be.whole(&a.dfc), (n, c, inner))
        });
        let (dln, x_mid, rstd2) = (be.whole(&a.dln), be.whole(&la.x_mid), be.whole(&la.rstd2));
        timed(Kernel::Norm, || {
            let dw = be.view_mut(grads, lo.ln_2.clone());
            be.rmsnorm_backward(be.whole_mut(&mut a.dx), dw, dln, x_mid, rstd2, self.param(&lo.ln_2))
        });
        // Attention: x_mid = x_in + dropout(attn(ln1 @ Wqkv + bqkv) @ Wo + bo)
        let dy = branch_grad(be, &mut a.branch, &a.dx, a.active.resid_of(l, false));
        let datt = sized(be, &mut a.datt, n * c)?;
        let proj = (&lo.c_proj_w, &lo.c_proj_b);
        timed(Kernel::Matmul, || self.dense_backward(datt, grads, proj, be.whole(&la.att), dy, (n, c, c)));
        // q, k, v: the thirds of each (B, T, 3C) row
        let qkv = be.whole(&la.qkv);
        let view = |part: usize| Seq { data: qkv, offset: part * c, batch_stride: t * 3 * c, row_stride: 3 * c };
        let dims = self.attn_dims(l, (b, t), causal, a.active.attn_of(l));
        let mut dqkv = sized(be, &mut a.dqkv, n * 3 * c)?;
        let (datt, att) = (be.whole(&a.datt), be.whole(&la.att));
        timed(Kernel::Attention, || {
            be.attention_backward(be.reborrow(&mut dqkv), datt, att, &la.saved, view(0), view(1), view(2), dims);
            // rope_2d: back through the rotation of q and k (qkv holds the rotated ones)
            self.rotate_qk(dqkv, t, 0, true);
        });
        let dln = sized(be, &mut a.dln, n * c)?;
        let qkv_w = (&lo.c_attn_w, &lo.c_attn_b);
        timed(Kernel::Matmul, || {
            self.dense_backward(dln, grads, qkv_w, be.whole(&la.ln1), be.whole(&a.dqkv), (n, c, 3 * c))
        });
        let (dln, x_in, rstd1) = (be.whole(&a.dln), be.whole(&la.x_in), be.whole(&la.rstd1));
        timed(Kernel::Norm, || {
            let dw = be.view_mut(grads, lo.ln_1.clone());
            be.rmsnorm_backward(be.whole_mut(&mut a.dx), dw, dln, x_in, rstd1, self.param(&lo.ln_1))
        });
        Ok(())
    }

    /// Backward of a Conv1D layer y (N, out) = x (N, in) @ W + b, W (in, out) at the arena
    /// ranges `(w, bias)`: dx (N, in) = dy @ W^T; dW += x^T dy; db += the column sums of dy.
    fn dense_backward(
        &self,
        dx: B::ViewMut<'_>,
        grads: &mut B::Buf,
        (w, bias): (&Range<usize>, &Range<usize>),
        x: B::View<'_>,
        dy: B::View<'_>,
        (n, k_in, k_out): (usize, usize, usize),
    ) {
        let be = &self.be;
        be.matmul_forward(dx, dy, self.param(w), None, (n, k_out, k_in), WeightLayout::OutIn, false);
        be.matmul_backward_weight(be.view_mut(grads, w.clone()), x, dy, (n, k_in, k_out));
        be.bias_backward(be.view_mut(grads, bias.clone()), dy, k_out);
    }
}

/// The inputs, token-embedding multipliers and loss weights of a fine-tuning step into
/// `acts`, and the generative targets (see [`ImageGpt::forward_backward_classify`]).
fn classify_inputs<B: Backend>(
    acts: &mut TrainActs<B>,
    tokens: &[u32],
    (b, t): (usize, usize),
    causal: bool,
    (gen_weight, masked): (f64, Option<&[bool]>),
) -> Result<Vec<u32>> {
    let n = b * t;
    acts.input.clear();
    acts.input.extend_from_slice(tokens);
    acts.token_scale.clear();
    acts.weights.clear();
    if causal {
        acts.token_scale.resize(n, 1.0);
        let wgen = (gen_weight / (b * (t - 1)) as f64) as f32;
        acts.weights.extend((0..n).map(|i| if i % t < t - 1 { wgen } else { 0.0 }));
        return Ok((0..n).map(|i| if i % t < t - 1 { tokens[i + 1] } else { 0 }).collect());
    }
    let none = vec![false; n];
    let m = match masked {
        Some(m) if m.len() == n && m.iter().any(|&x| x) => m,
        _ if gen_weight == 0.0 => &none,
        _ => return Err(Error::Invalid("a BERT model's generative fine-tuning loss needs masked pixels".into())),
    };
    let count = m.iter().filter(|&&x| x).count().max(1);
    acts.token_scale.extend(m.iter().map(|&x| if x { 0.0 } else { 1.0 }));
    acts.weights.extend(m.iter().map(|&x| if x { (gen_weight / count as f64) as f32 } else { 0.0 }));
    Ok(tokens.to_vec())
}

/// The gradient reaching a residual branch's output from the stream's gradient dx: dx
/// itself, or dx * mask / (1 - p) (copied into `buf`) under dropout.
fn branch_grad<'a, B: Backend>(be: &B, buf: &'a mut B::Buf, dx: &'a B::Buf, drop: Option<Dropout>) -> B::View<'a> {
    match drop {
        None => be.whole(dx),
        Some(d) => {
            let n = be.size(dx);
            {
                let mut y = be.view_mut(buf, 0..n);
                be.copy(be.reborrow(&mut y), be.whole(dx));
                be.dropout(d, y);
            }
            be.view(buf, 0..n)
        }
    }
}
