"""Checks that Hugging Face transformers loads a model directory written by igpt, unchanged.

    ~/.cache/igpt-ref-venv/bin/python tools/check_hf_load.py IGPT_DIR REFERENCE_DIR

Loads both with transformers (the class named in config.json) and asserts identical logits
(or last hidden states) on a fixed input; prints one line per model.
"""
import json, sys
import torch
import transformers

ours, ref = sys.argv[1], sys.argv[2]
arch = json.load(open(f"{ours}/config.json"))["architectures"][0]
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
