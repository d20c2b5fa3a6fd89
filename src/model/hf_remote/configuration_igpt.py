"""igpt's ImageGPT variants for transformers (written by igpt next to a variant checkpoint).

Load with:  AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)
(or AutoModel for the bare transformer). The math: igpt's architectures.md.
"""
from transformers import PretrainedConfig


class IGPTConfig(PretrainedConfig):
    model_type = "igpt"

    def __init__(self, vocab_size=513, n_positions=1024, n_embd=512, n_layer=24, n_head=8, n_inner=None,
                 activation_function="quick_gelu", layer_norm_epsilon=1e-5, initializer_range=0.02,
                 scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False, image_width=None,
                 position_embedding="learned_1d", rope_theta=100.0, attention="dense", local_rows=8,
                 local_cols=8, objective="gpt", **kwargs):
        self.vocab_size, self.n_positions, self.n_embd = vocab_size, n_positions, n_embd
        self.n_layer, self.n_head, self.n_inner = n_layer, n_head, n_inner
        self.activation_function, self.layer_norm_epsilon = activation_function, layer_norm_epsilon
        self.initializer_range = initializer_range
        self.scale_attn_weights = scale_attn_weights
        self.scale_attn_by_inverse_layer_idx = scale_attn_by_inverse_layer_idx
        self.image_width, self.position_embedding, self.rope_theta = image_width, position_embedding, rope_theta
        self.attention, self.local_rows, self.local_cols = attention, local_rows, local_cols
        # "bert": trained to predict masked pixels with bidirectional attention (not causal)
        self.objective = objective
        super().__init__(**kwargs)
