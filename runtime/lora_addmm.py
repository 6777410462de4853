"""`fused_lora`: a LoRA layer's update added inside one `torch.addmm` (opt-in, LoRA).

peft's LoRA Linear computes `result + lora_B(lora_A(dropout(x))) * scaling`: the [tokens, out] product,
then a multiply and an add over it, each a pass over memory and a node in the backward. `torch.addmm(result,
a, B.T, alpha=scaling)` is the same sum in one BLAS call (beta=1 accumulates into `result`), and its
backward scales the two small gradients instead of the large one. On the issue-17 CPU shape (hidden 256,
4 layers, rank 16 on every linear layer, a 4 k-token packed micro-batch) forward + backward ran at 4205
instead of 3815 tokens/s; the end-to-end bench (bench/sft_throughput.py, `no_fused_lora` rows) measured
no effect above its noise, so perf auto does not turn it on; the key does.

Only peft's plain LoRA path is replaced, per call: DoRA and other variants, merged or disabled adapters
and mixed-adapter batches run peft's own forward. peft offers no switch for this, hence this module.
"""

from __future__ import annotations

import logging
import types
from typing import Any

from torch import nn

log = logging.getLogger("xgen-runtime")


def _plain(module: Any, kwargs: dict) -> bool:
    """True when peft would take its vanilla LoRA branch for this call."""
    return not (
        module.disable_adapters
        or module.merged
        or kwargs.get("adapter_names") is not None
        or any(name in module.lora_variant for name in module.active_adapters)
    )


def _addmm_forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    import torch

    if not _plain(self, kwargs):
        return type(self).forward(self, x, *args, **kwargs)
    result = self.base_layer(x, *args, **kwargs)
    for name in self.active_adapters:
        if name not in self.lora_A:
            continue
        low_rank = self.lora_A[name](self.lora_dropout[name](x))  # [..., r]
        shape = result.shape
        result = torch.addmm(
            result.reshape(-1, shape[-1]),
            low_rank.reshape(-1, low_rank.shape[-1]),
            self.lora_B[name].weight.t(),
            alpha=self.scaling[name],
        ).view(shape)
    return result


def apply_lora_addmm(model: nn.Module) -> int:
    """Give every peft LoRA Linear whose adapters are plain (no lora_B bias, same dtype as its base layer)
    the addmm forward; returns how many layers were patched."""
    from peft.tuners.lora.layer import Linear

    patched = 0
    for module in model.modules():
        if type(module) is not Linear:  # subclasses (quantized, DoRA-only layers) keep their forward
            continue
        base = getattr(module.base_layer, "weight", None)
        adapters = [module.lora_B[name] for name in module.lora_B]
        if base is None or any(b.bias is not None or b.weight.dtype != base.dtype for b in adapters):
            continue
        module.forward = types.MethodType(_addmm_forward, module)
        patched += 1
    return patched
