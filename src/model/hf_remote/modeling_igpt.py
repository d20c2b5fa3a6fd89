"""igpt's ImageGPT variants in PyTorch (written by igpt next to a variant checkpoint):
learned_1d / learned_2d / rope_2d positions, dense / local_2d / linear attention, exactly as igpt
computes them (igpt's architectures.md). Weight names are HF ImageGPT's (Conv1D weights
stored (in, out)); learned_2d adds transformer.wpe_row / transformer.wpe_col.

    model = AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)
    logits = model(input_ids).logits          # (B, T, n_colours), causal (GPT objective)

A BERT checkpoint (config "objective": "bert") is not causal: every position attends to every
position (local_2d: to its window both ways), input_ids are the pixels themselves (no SOS), and
`token_mask` (B, T) bool marks the masked pixels, whose token embedding is multiplied by 0:
    logits = model(pixels, token_mask=mask).logits   # predicts every position
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput

from .configuration_igpt import IGPTConfig


def _width(cfg):
    if cfg.image_width:
        return cfg.image_width
    w = int(round(math.sqrt(cfg.n_positions)))
    return w if w * w == cfg.n_positions else cfg.n_positions


class _Norm(nn.Module):  # ImageGPT's norm: x / sqrt(mean(x^2) + eps) * w
    def __init__(self, n, eps):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(n)), eps

    def forward(self, x):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class _Conv1D(nn.Module):  # y = x @ W + b, W stored (in, out)
    def __init__(self, nin, nout):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.zeros(nin, nout)), nn.Parameter(torch.zeros(nout))

    def forward(self, x):
        return x @ self.weight + self.bias


def _act(name):
    return {"quick_gelu": lambda x: x * torch.sigmoid(1.702 * x), "relu": F.relu,
            "gelu": F.gelu, "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
            "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}[name]


def _rope(x, rows, cols, theta):  # x (B, nh, T, hs): first half by the row, second by the column
    hs = x.shape[-1]
    m = hs // 4
    freqs = theta ** (-torch.arange(m, dtype=torch.float64) / m)

    def rot(u, a):  # u (..., 2m), a (T,) coordinates
        phi = a.to(torch.float64)[:, None] * freqs[None, :]
        cos, sin = phi.cos().to(u.dtype), phi.sin().to(u.dtype)
        u1, u2 = u[..., :m], u[..., m:]
        return torch.cat([u1 * cos - u2 * sin, u2 * cos + u1 * sin], -1)

    return torch.cat([rot(x[..., : 2 * m], rows), rot(x[..., 2 * m:], cols)], -1)


class _Block(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        e, inner = cfg.n_embd, cfg.n_inner or 4 * cfg.n_embd
        self.ln_1, self.ln_2 = _Norm(e, cfg.layer_norm_epsilon), _Norm(e, cfg.layer_norm_epsilon)
        self.attn = nn.Module()
        self.attn.c_attn, self.attn.c_proj = _Conv1D(e, 3 * e), _Conv1D(e, e)
        self.mlp = nn.Module()
        self.mlp.c_fc, self.mlp.c_proj = _Conv1D(e, inner), _Conv1D(inner, e)
        self.cfg, self.layer, self.act = cfg, layer, _act(cfg.activation_function)

    def forward(self, x, mask, rows, cols):
        cfg, (b, t, e) = self.cfg, x.shape
        nh = cfg.n_head
        q, k, v = self.attn.c_attn(self.ln_1(x)).split(e, -1)
        q, k, v = (z.view(b, t, nh, e // nh).transpose(1, 2) for z in (q, k, v))
        if cfg.position_embedding == "rope_2d":
            q, k = _rope(q, rows, cols, cfg.rope_theta), _rope(k, rows, cols, cfg.rope_theta)
        if cfg.attention == "linear":  # phi = elu + 1, no scaling; y = (A v) / (A 1 + 1e-6)
            a = (F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-1, -2) * mask
            y = ((a @ v) / (a.sum(-1, keepdim=True) + 1e-6)).transpose(1, 2).reshape(b, t, e)
        else:
            s = q @ k.transpose(-1, -2)
            if cfg.scale_attn_weights:
                s = s / math.sqrt(e // nh)
            if cfg.scale_attn_by_inverse_layer_idx:
                s = s / (self.layer + 1)
            s = s.masked_fill(~mask, float("-inf"))
            y = (s.softmax(-1) @ v).transpose(1, 2).reshape(b, t, e)
        x = x + self.attn.c_proj(y)
        return x + self.mlp.c_proj(self.act(self.mlp.c_fc(self.ln_2(x))))


class IGPTPreTrainedModel(PreTrainedModel):
    config_class = IGPTConfig
    base_model_prefix = "transformer"

    def _init_weights(self, module):
        pass  # weights come from the checkpoint


class IGPTModel(IGPTPreTrainedModel):
    def __init__(self, cfg):
        super().__init__(cfg)
        e, w = cfg.n_embd, _width(cfg)
        self.wte = nn.Embedding(cfg.vocab_size, e)
        if cfg.position_embedding == "learned_1d":
            self.wpe = nn.Embedding(cfg.n_positions, e)
        elif cfg.position_embedding == "learned_2d":
            self.wpe_row, self.wpe_col = nn.Embedding(cfg.n_positions // w, e), nn.Embedding(w, e)
        self.h = nn.ModuleList(_Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = _Norm(e, cfg.layer_norm_epsilon)
        self.post_init()

    def forward(self, input_ids, token_mask=None, **kwargs):
        cfg, (b, t) = self.config, input_ids.shape
        w = _width(cfg)
        slots = torch.arange(t, device=input_ids.device)
        rows, cols = slots // w, slots % w
        x = self.wte(input_ids)
        if token_mask is not None:  # BERT: masked pixels keep only their position
            x = x * (~token_mask.bool())[..., None].to(x.dtype)
        if cfg.position_embedding == "learned_1d":
            x = x + self.wpe(slots)
        elif cfg.position_embedding == "learned_2d":
            x = x + self.wpe_row(rows) + self.wpe_col(cols)
        bert = getattr(cfg, "objective", "gpt") == "bert"
        # GPT: causal; BERT (objective "bert"): every slot sees every slot
        mask = torch.ones(t, t, dtype=torch.bool, device=input_ids.device) if bert \
            else slots[None, :] <= slots[:, None]
        if cfg.attention == "local_2d":
            dr = rows[:, None] - rows[None, :]
            mask = mask & ((dr.abs() if bert else dr) <= cfg.local_rows) \
                & ((cols[:, None] - cols[None, :]).abs() <= cfg.local_cols)
        elif cfg.attention not in ("dense", "linear"):
            raise NotImplementedError(f"attention {cfg.attention!r} is not in this modeling file")
        for block in self.h:
            x = block(x, mask, rows, cols)
        return BaseModelOutput(last_hidden_state=self.ln_f(x))


class IGPTForCausalImageModeling(IGPTPreTrainedModel):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.transformer = IGPTModel(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size - 1, bias=False)
        self.post_init()

    def forward(self, input_ids, token_mask=None, **kwargs):
        h = self.transformer(input_ids, token_mask=token_mask).last_hidden_state
        return CausalLMOutput(logits=self.lm_head(h))
