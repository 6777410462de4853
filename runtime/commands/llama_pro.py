"""`xgen-runtime llama-pro SRC DST --num-expand N`: LLaMA-Pro block expansion (what LLaMA-Factory's
scripts/llama_pro.py does), then train DST with `use_llama_pro: true, freeze_trainable_layers: N`.

After every group of layers/N blocks a copy of the group's last block is inserted with its output
projections (o_proj, down_proj) zeroed: each copy adds nothing to the residual stream, so the
expanded model computes exactly what the original did until training changes the copies.
"""

from __future__ import annotations

import copy
from pathlib import Path

from runtime.config import ConfigError

ZEROED = ("o_proj", "down_proj")  # the projections that write into the residual stream


def expand_blocks(src: str | Path, dst: str | Path, num_expand: int) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runtime.model import decoder_layers

    model = AutoModelForCausalLM.from_pretrained(src, dtype="auto")
    layers = decoder_layers(model)
    count = len(layers)
    if num_expand <= 0 or count % num_expand:
        raise ConfigError("num_expand", f"must divide the model's {count} layers; got {num_expand}")
    group = count // num_expand
    expanded = []
    for i, layer in enumerate(layers):
        expanded.append(layer)
        if (i + 1) % group == 0:
            added = copy.deepcopy(layer)
            zeroed = [m for n, m in added.named_modules() if n.rsplit(".", 1)[-1] in ZEROED]
            if not zeroed:
                raise ConfigError("model_name_or_path", f"no {' or '.join(ZEROED)} in its blocks to zero")
            with torch.no_grad():
                for module in zeroed:
                    for param in module.parameters():
                        param.zero_()
            expanded.append(added)
    for index, layer in enumerate(expanded):  # the KV cache indexes attention by layer
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = index
    del layers[:]
    layers.extend(expanded)
    config = model.config
    if getattr(config, "layer_types", None):
        config.layer_types = [
            kind for i, kind in enumerate(config.layer_types) for _ in range(2 if (i + 1) % group == 0 else 1)
        ]
    config.num_hidden_layers = len(expanded)
    out = Path(dst)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out
