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

use crate::backend::attention::{AttnDims, Saved, SeqView};
use crate::backend::profile::{Kernel, timed};
use crate::backend::{Backend, Cpu, WeightLayout};
use crate::error::{Error, Result};

use super::gpt::{BlockBufs, BlockDropout, ImageGpt};
use super::params::ModelKind;
use crate::backend::dropout::{Dropout, DropoutSites};

pub use crate::config::Objective;

/// Saved activations of one block.
#[derive(Default)]
struct LayerActs {
    x_in: Vec<f32>,   // (N, C) block input (residual stream)
    ln1: Vec<f32>,    // (N, C)
    rstd1: Vec<f32>,  // (N)
    qkv: Vec<f32>,    // (N, 3C)
    att: Vec<f32>,    // (N, C) attention output before c_proj
    saved: Saved,     // what the attention keeps for its backward
    x_mid: Vec<f32>,  // (N, C) residual after attention
    ln2: Vec<f32>,    // (N, C)
    rstd2: Vec<f32>,  // (N)
    fc: Vec<f32>,     // (N, I) before the activation
    fc_act: Vec<f32>, // (N, I) after it
}

/// Everything one training step allocates, reused between steps of the same size.
#[derive(Default)]
pub struct TrainActs {
    b: usize,
    t: usize,
    layers: Vec<LayerActs>,
    input: Vec<u32>,
    token_scale: Vec<f32>,
    weights: Vec<f32>,
    x: Vec<f32>,      // (N, C) running residual, then the last block's output
    lnf: Vec<f32>,    // (N, C)
    rstd_f: Vec<f32>, // (N)
    logits: Vec<f32>, // (N, V-1), becomes dlogits
    // backward scratch
    dx: Vec<f32>,
    dln: Vec<f32>,
    datt: Vec<f32>,
    dqkv: Vec<f32>,
    dfc_act: Vec<f32>,
    dfc: Vec<f32>,
    /// (N, C): a residual branch's output (forward) or its gradient (backward) under dropout.
    branch: Vec<f32>,
    /// The dropout of the next training pass (set by the trainer per micro-batch), and of the
    /// pass running (none in evaluation).
    dropout: DropoutSites,
    active: DropoutSites,
}

fn sized(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    v.resize(n, 0.0);
    &mut v[..n]
}

impl TrainActs {
    pub fn new() -> Self {
        Self::default()
    }

    /// The dropout masks of the following training passes (`forward_backward` and
    /// `forward_backward_classify`; evaluation never drops).
    pub fn set_dropout(&mut self, sites: DropoutSites) {
        self.dropout = sites;
    }
}

impl ImageGpt {
    /// One forward and backward pass. Adds the gradient of the mean loss to `grads` (same
    /// layout as `params`) and returns the loss (nats per predicted token).
    ///
    /// # Shapes
    /// tokens: (B, T) image tokens; mask (BERT only): (B, T), true = masked and predicted.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward(
        &self,
        acts: &mut TrainActs,
        grads: &mut [f32],
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
        acts: &mut TrainActs,
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
        acts: &mut TrainActs,
        grads: Option<&mut [f32]>,
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
        if grads.as_ref().is_some_and(|g| g.len() != self.params.len()) {
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
        // on a pool thread, as ImageGpt::forward: the kernels fork from inside the pool
        crate::backend::on_pool(|| {
            self.train_forward(acts, causal);
            let v = self.config.n_colors();
            let loss =
                timed(Kernel::Head, || self.engine().cross_entropy_fused(&mut acts.logits, tokens, &acts.weights, v));
            if let Some(g) = grads {
                self.train_backward(acts, g, causal, None);
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
        acts: &mut TrainActs,
        grads: &mut [f32],
        score: &[f32],
        dscore: &mut [f32],
        tokens: &[u32],
        labels: &[u16],
        b: usize,
        t: usize,
        (gen_weight, masked): (f64, Option<&[bool]>),
    ) -> Result<(f64, f64, usize)> {
        if self.kind != ModelKind::CausalLm || t < 2 || tokens.len() != b * t || labels.len() != b {
            return Err(Error::Invalid("fine-tuning needs a causal model and (B, T >= 2) tokens with B labels".into()));
        }
        let (n, c, v) = (b * t, self.config.n_embd, self.config.n_colors());
        let k = score.len() / c;
        if tokens.iter().any(|&x| x as usize >= v) || labels.iter().any(|&l| l as usize >= k) {
            return Err(Error::Invalid(format!("tokens must be < {v} and labels < {k}")));
        }
        let causal = self.config.is_causal();
        acts.input.clear();
        acts.input.extend_from_slice(tokens);
        acts.token_scale.clear();
        acts.weights.clear();
        let targets: Vec<u32> = if causal {
            acts.token_scale.resize(n, 1.0);
            let wgen = (gen_weight / (b * (t - 1)) as f64) as f32;
            acts.weights.extend((0..n).map(|i| if i % t < t - 1 { wgen } else { 0.0 }));
            (0..n).map(|i| if i % t < t - 1 { tokens[i + 1] } else { 0 }).collect()
        } else {
            let none = vec![false; n];
            let m = match masked {
                Some(m) if m.len() == n && m.iter().any(|&x| x) => m,
                _ if gen_weight == 0.0 => &none,
                _ => {
                    return Err(Error::Invalid(
                        "a BERT model's generative fine-tuning loss needs masked pixels".into(),
                    ));
                }
            };
            let count = m.iter().filter(|&&x| x).count().max(1);
            acts.token_scale.extend(m.iter().map(|&x| if x { 0.0 } else { 1.0 }));
            acts.weights.extend(m.iter().map(|&x| if x { (gen_weight / count as f64) as f32 } else { 0.0 }));
            tokens.to_vec()
        };
        acts.b = b;
        acts.t = t;
        acts.active = acts.dropout;
        self.train_forward(acts, causal);
        let gen_loss = if gen_weight > 0.0 {
            self.engine().cross_entropy_fused(&mut acts.logits, &targets, &acts.weights, v) / gen_weight
        } else {
            acts.logits.iter_mut().for_each(|x| *x = 0.0);
            0.0
        };
        // pooled (B, C) = mean_t ln_f(x); class logits (B, K) = pooled @ score^T
        let pooled = self.engine().mean_over_positions(&acts.lnf, b, t, c);
        let mut cl = vec![0f32; b * k];
        self.engine().matmul_forward(&mut cl, &pooled, score, None, (b, c, k), WeightLayout::OutIn, false);
        let correct =
            cl.chunks_exact(k).zip(labels).filter(|(row, l)| crate::backend::loss::argmax(row) as u16 == **l).count();
        let lab: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
        let clf = self.engine().cross_entropy_fused(&mut cl, &lab, &vec![1.0 / b as f32; b], k); // cl -> dclf
        // dscore += dclf^T @ pooled; dpooled = dclf @ score; each position gets dpooled / T
        self.engine().matmul_backward_weight(dscore, &cl, &pooled, (b, k, c));
        let mut dpooled = vec![0f32; b * c];
        self.engine().matmul_forward(&mut dpooled, &cl, score, None, (b, k, c), WeightLayout::InOut, false);
        let mut extra = vec![0f32; n * c];
        for i in 0..b {
            for r in 0..t {
                for j in 0..c {
                    extra[(i * t + r) * c + j] = dpooled[i * c + j] / t as f32;
                }
            }
        }
        self.train_backward(acts, grads, causal, Some(&extra));
        Ok((gen_loss, clf, correct))
    }

    fn train_forward(&self, a: &mut TrainActs, causal: bool) {
        let cfg = &self.config;
        let (b, t, c, inner) = (a.b, a.t, cfg.n_embd, cfg.n_inner());
        let (n, eps) = (b * t, cfg.layer_norm_epsilon);
        a.layers.resize_with(cfg.n_layer, LayerActs::default);
        // x = wte[input] * scale + position rows (BERT: scale 0 at masked positions)
        let x = sized(&mut a.x, n * c);
        timed(Kernel::Embed, || self.embed(x, &a.input, Some(&a.token_scale), t, 0));
        if let Some(d) = a.active.embd {
            self.engine().dropout(d, x);
        }
        for (l, lo) in self.layout.layers.iter().enumerate() {
            let la = &mut a.layers[l];
            sized(&mut la.x_in, n * c).copy_from_slice(&a.x[..n * c]);
            let bufs = BlockBufs {
                x: &mut a.x[..n * c],
                ln1: sized(&mut la.ln1, n * c),
                rstd1: sized(&mut la.rstd1, n),
                qkv: sized(&mut la.qkv, n * 3 * c),
                att: sized(&mut la.att, n * c),
                saved: &mut la.saved,
                x_mid: Some(sized(&mut la.x_mid, n * c)),
                ln2: sized(&mut la.ln2, n * c),
                rstd2: sized(&mut la.rstd2, n),
                fc: sized(&mut la.fc, n * inner),
                fc_act: Some(sized(&mut la.fc_act, n * inner)),
                drop: BlockDropout {
                    attn: a.active.attn_of(l),
                    resid: [a.active.resid_of(l, false), a.active.resid_of(l, true)],
                    branch: Some(&mut a.branch),
                },
            };
            self.block_forward(l, lo, b, t, bufs, None, causal);
        }
        let lnf = sized(&mut a.lnf, n * c);
        timed(Kernel::Norm, || {
            self.engine().rmsnorm_forward(
                lnf,
                sized(&mut a.rstd_f, n),
                &a.x[..n * c],
                self.param(&self.layout.ln_f),
                eps,
            )
        });
        let v = cfg.n_colors();
        let head = self.layout.head.as_ref().expect("causal model has lm_head");
        let logits = sized(&mut a.logits, n * v);
        timed(Kernel::Head, || {
            self.engine().matmul_forward(logits, &a.lnf, self.param(head), None, (n, c, v), WeightLayout::OutIn, false)
        });
    }

    /// `extra_dlnf` (N, C): a further gradient on ln_f's output (the classification head).
    fn train_backward(&self, a: &mut TrainActs, grads: &mut [f32], causal: bool, extra_dlnf: Option<&[f32]>) {
        let cfg = &self.config;
        let (b, t, c, inner, nh) = (a.b, a.t, cfg.n_embd, cfg.n_inner(), cfg.n_head);
        let (n, v) = (b * t, cfg.n_colors());
        let head = self.layout.head.clone().expect("causal model has lm_head");
        // Head: logits = lnf @ W^T, W (V, C). dlnf = dlogits @ W; dW += dlogits^T @ lnf.
        let dln = sized(&mut a.dln, n * c);
        timed(Kernel::Head, || {
            self.engine().matmul_forward(
                dln,
                &a.logits,
                self.param(&head),
                None,
                (n, v, c),
                WeightLayout::InOut,
                false,
            );
            self.engine().matmul_backward_weight(&mut grads[head.clone()], &a.logits, &a.lnf, (n, v, c));
        });
        if let Some(extra) = extra_dlnf {
            self.engine().add_inplace(&mut a.dln[..n * c], extra);
        }
        let dx = sized(&mut a.dx, n * c);
        dx.fill(0.0);
        timed(Kernel::Norm, || {
            self.engine().rmsnorm_backward(
                dx,
                &mut grads[self.layout.ln_f.clone()],
                &a.dln,
                &a.x[..n * c],
                &a.rstd_f,
                self.param(&self.layout.ln_f),
            )
        });
        for (l, lo) in self.layout.layers.iter().enumerate().rev() {
            let la = &a.layers[l];
            // MLP: x_out = x_mid + dropout(act(ln2 @ Wfc + bfc) @ Wp + bp)
            let dy = branch_grad(&mut a.branch, &a.dx[..n * c], a.active.resid_of(l, true));
            let dfc_act = sized(&mut a.dfc_act, n * inner);
            let proj = (&lo.mlp_proj_w, &lo.mlp_proj_b);
            timed(Kernel::Matmul, || self.dense_backward(dfc_act, grads, proj, &la.fc_act, dy, (n, inner, c)));
            let dfc = sized(&mut a.dfc, n * inner);
            timed(Kernel::Act, || self.engine().act_backward(self.act, dfc, &a.dfc_act, &la.fc));
            let dln = sized(&mut a.dln, n * c);
            let fc = (&lo.c_fc_w, &lo.c_fc_b);
            timed(Kernel::Matmul, || self.dense_backward(dln, grads, fc, &la.ln2, &a.dfc, (n, c, inner)));
            timed(Kernel::Norm, || {
                self.engine().rmsnorm_backward(
                    &mut a.dx[..n * c],
                    &mut grads[lo.ln_2.clone()],
                    &a.dln,
                    &la.x_mid,
                    &la.rstd2,
                    self.param(&lo.ln_2),
                )
            });
            // Attention: x_mid = x_in + dropout(attn(ln1 @ Wqkv + bqkv) @ Wo + bo)
            let dy = branch_grad(&mut a.branch, &a.dx[..n * c], a.active.resid_of(l, false));
            let datt = sized(&mut a.datt, n * c);
            let proj = (&lo.c_proj_w, &lo.c_proj_b);
            timed(Kernel::Matmul, || self.dense_backward(datt, grads, proj, &la.att, dy, (n, c, c)));
            let view =
                |part: usize| SeqView { data: &la.qkv, offset: part * c, batch_stride: t * 3 * c, row_stride: 3 * c };
            let mask = self.attention_mask(causal);
            let dims = AttnDims {
                b,
                t,
                tk: t,
                nh,
                hs: cfg.head_dim(),
                mask,
                form: self.config.attention_form(),
                scale: self.attn_scale(l),
                dropout: a.active.attn_of(l),
            };
            let dqkv = sized(&mut a.dqkv, n * 3 * c);
            timed(Kernel::Attention, || {
                self.engine().attention_backward(dqkv, &a.datt, &la.att, &la.saved, view(0), view(1), view(2), dims);
                // rope_2d: back through the rotation of q and k (qkv holds the rotated ones)
                self.rotate_qk(dqkv, t, 0, true);
            });
            let dln = sized(&mut a.dln, n * c);
            let qkv = (&lo.c_attn_w, &lo.c_attn_b);
            timed(Kernel::Matmul, || self.dense_backward(dln, grads, qkv, &la.ln1, &a.dqkv, (n, c, 3 * c)));
            timed(Kernel::Norm, || {
                self.engine().rmsnorm_backward(
                    &mut a.dx[..n * c],
                    &mut grads[lo.ln_1.clone()],
                    &a.dln,
                    &la.x_in,
                    &la.rstd1,
                    self.param(&lo.ln_1),
                )
            });
        }
        if let Some(d) = a.active.embd {
            self.engine().dropout(d, &mut a.dx[..n * c]);
        }
        timed(Kernel::Embed, || self.embed_backward(grads, &a.dx[..n * c], &a.input, Some(&a.token_scale), t));
    }
}

impl ImageGpt {
    /// Backward of a Conv1D layer y (N, out) = x (N, in) @ W + b, W (in, out) at the arena
    /// ranges `(w, bias)`: dx (N, in) = dy @ W^T; dW += x^T dy; db += the column sums of dy.
    fn dense_backward(
        &self,
        dx: &mut [f32],
        grads: &mut [f32],
        (w, bias): (&Range<usize>, &Range<usize>),
        x: &[f32],
        dy: &[f32],
        (n, k_in, k_out): (usize, usize, usize),
    ) {
        let e = self.engine();
        e.matmul_forward(dx, dy, self.param(w), None, (n, k_out, k_in), WeightLayout::OutIn, false);
        e.matmul_backward_weight(&mut grads[w.clone()], x, dy, (n, k_in, k_out));
        e.bias_backward(&mut grads[bias.clone()], dy, k_out);
    }
}

/// The gradient reaching a residual branch's output from the stream's gradient dx: dx
/// itself, or dx * mask / (1 - p) (copied into `buf`) under dropout.
fn branch_grad<'a>(buf: &'a mut Vec<f32>, dx: &'a [f32], drop: Option<Dropout>) -> &'a [f32] {
    match drop {
        None => dx,
        Some(d) => {
            buf.clear();
            buf.extend_from_slice(dx);
            Cpu.dropout(d, buf);
            buf
        }
    }
}
