"""Checks that Hugging Face transformers loads a model directory written by igpt.

    ~/.cache/igpt-ref-venv/bin/python tools/check_hf_load.py IGPT_DIR REFERENCE_DIR

Plain ImageGPT (model_type imagegpt): loads both with transformers (the class named in
config.json) and asserts identical logits (or last hidden states) on a fixed input.
A variant (model_type igpt, see architectures.md): loads IGPT_DIR with
AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True), i.e. the modeling file igpt
wrote next to the weights, and compares its logits on REFERENCE_DIR/tokens.safetensors
`input_ids` with REFERENCE_DIR/refs.safetensors `logits` (a BERT checkpoint, "objective": "bert":
`tokens` with `token_mask` = `bert_mask` against `logits_bert`) (a variant fixture: an independent
implementation igpt matches within 2e-5), asserting max |diff| < 1e-4. Prints one line per model.
"""
import json, sys
import torch
import transformers

ours, ref = sys.argv[1], sys.argv[2]
cfg_json = json.load(open(f"{ours}/config.json"))
if cfg_json.get("model_type") == "igpt":
    from safetensors.torch import load_file
    m = transformers.AutoModelForCausalLM.from_pretrained(ours, trust_remote_code=True).eval()
    refs = load_file(f"{ref}/refs.safetensors")
    if cfg_json.get("objective") == "bert":  # bidirectional, the pixels themselves, masked embeddings
        ids = load_file(f"{ref}/tokens.safetensors")["tokens"]
        want = refs["logits_bert"]
        with torch.no_grad():
            got = m(ids, token_mask=refs["bert_mask"].bool()).logits
    else:
        ids = load_file(f"{ref}/tokens.safetensors")["input_ids"]
        want = refs["logits"]
        with torch.no_grad():
            got = m(ids).logits
    diff = (got - want).abs().max().item()
    print(f"transformers {transformers.__version__} loaded {ours} ({cfg_json.get('position_embedding', 'learned_1d')}, "
          f"{cfg_json.get('attention', 'dense')}, {cfg_json.get('objective', 'gpt')}) with trust_remote_code as {type(m).__name__}: "
          f"max |diff| vs {ref} logits = {diff:.3e}")
    assert diff < 1e-4
    try:
        transformers.AutoModel.from_pretrained(ours)
        raise SystemExit("transformers loaded a variant without trust_remote_code")
    except (ValueError, KeyError, OSError) as e:
        print(f"  without trust_remote_code it is refused: {type(e).__name__}")
    sys.exit(0)
arch = cfg_json["architectures"][0]
cls = getattr(transformers, arch)
a = cls.from_pretrained(ours).eval()
b = cls.from_pretrained(ref).eval()
cfg = a.config
ids = torch.randint(0, cfg.vocab_size, (2, min(cfg.n_positions, 64)), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    oa, ob = a(input_ids=ids), b(input_ids=ids)
ta = oa.logits if hasattr(oa, "logits") else oa.last_hidden_state
tb = ob.logits if hasattr(ob, "logits") else ob.last_hidden_state
diff = (ta - tb).abs().max().item()
print(f"transformers {transformers.__version__} loaded {ours} as {arch}: max |diff| vs reference = {diff:.3e}")
assert diff == 0.0
if hasattr(transformers, "ImageGPTImageProcessorPil"):
    p = transformers.ImageGPTImageProcessorPil.from_pretrained(ours)
    print(f"  image processor: {len(p.clusters)} clusters, size {p.size}")
