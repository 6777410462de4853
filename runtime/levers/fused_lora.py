"""`fused_lora`: a LoRA layer's base product and its update in one autograd node (LoRA; perf auto on CPU).

peft's LoRA Linear computes `base(x) + lora_B(lora_A(dropout(x))) * scaling`: besides the two low-rank
products, a multiply and an add over the [tokens, out] result, a node for each in the backward, which scales
the large gradient and adds the two [tokens, in] input gradients as separate passes over memory. With the
base weight frozen (LoRA) the whole layer is one small function (`FrozenBaseLora`):

    forward   y  = x W^T (+ b);  h = x A^T;  y += s h B^T          (addmm_ in place: no extra tensor)
    backward  gB = s g^T h;  gh = s g B;  gA = gh^T x;  gx = g W + gh A   (addmm_ in place)

the same sums as peft's autograd graph, scaled on the rank-r side (tests/runtime/levers/test_fused_lora.py:
logits and adapter gradients within 1e-5). Layers or calls where that does not hold take
`torch.addmm(result, h, B^T, alpha=s)` after peft's own base and A products (a trained base or bias, LoRA
dropout, autocast, mixed dtypes, ZeRO-3's partitioned weights, which its module hooks gather), and DoRA and
other variants, merged or disabled adapters and mixed-adapter batches run peft's forward. peft has no switch
for any of this, hence this module. Measured on the CPU benchmark's shape (bench/sft_throughput.py --shape
cpu) with bench/lever_ab.py (steps of both kinds interleaved in one process): see bench/README.md."""

from __future__ import annotations

import logging
import types
from typing import Any

from torch import nn

log = logging.getLogger("xgen-runtime")


def _plain(module: Any, kwargs: dict) -> bool:
    """True when peft would take its vanilla LoRA branch for this call and every weight is whole (ZeRO-3
    keeps partitioned parameters, tagged `ds_id`, that only its hooks on each module's call gather)."""
    return not (
        module.disable_adapters
        or module.merged
        or kwargs.get("adapter_names") is not None
        or any(name in module.lora_variant for name in module.active_adapters)
        or hasattr(module.base_layer.weight, "ds_id")
    )


class _FrozenBaseLora:
    """`FrozenBaseLora.apply(x, weight, bias, lora_a, lora_b, scaling)`: x [..., in], weight [out, in]
    (frozen), bias [out] or None (frozen), lora_a [r, in], lora_b [out, r] -> [..., out]. Built on first use
    so importing this module does not import torch."""

    fn: Any = None

    @classmethod
    def get(cls) -> Any:
        if cls.fn is None:
            import torch

            class FrozenBaseLora(torch.autograd.Function):
                @staticmethod
                def forward(ctx, x, weight, bias, lora_a, lora_b, scaling):  # type: ignore[override]
                    flat = x.reshape(-1, x.shape[-1])
                    low_rank = flat @ lora_a.t()  # [tokens, r]
                    out = flat @ weight.t() if bias is None else torch.addmm(bias, flat, weight.t())
                    out.addmm_(low_rank, lora_b.t(), alpha=scaling)
                    ctx.save_for_backward(flat, weight, lora_a, lora_b, low_rank)
                    ctx.scaling, ctx.x_shape = scaling, x.shape
                    return out.view(*x.shape[:-1], out.shape[-1])

                @staticmethod
                def backward(ctx, grad):  # type: ignore[override]
                    flat, weight, lora_a, lora_b, low_rank = ctx.saved_tensors
                    g = grad.reshape(-1, grad.shape[-1])  # [tokens, out]
                    grad_low = (g @ lora_b).mul_(ctx.scaling)  # [tokens, r]
                    grad_b = (g.t() @ low_rank).mul_(ctx.scaling) if ctx.needs_input_grad[4] else None
                    grad_a = grad_low.t() @ flat if ctx.needs_input_grad[3] else None
                    grad_x = None
                    if ctx.needs_input_grad[0]:
                        grad_x = (g @ weight).addmm_(grad_low, lora_a).view(ctx.x_shape)
                    return grad_x, None, None, grad_a, grad_b, None

            cls.fn = FrozenBaseLora
        return cls.fn


def _one_node_adapter(self: Any, x: Any) -> str | None:
    """The adapter's name when this call can be FrozenBaseLora: one adapter without dropout on a frozen
    nn.Linear, one dtype, no autocast (the function's matmuls would not be cast); else None."""
    import torch

    base, names = self.base_layer, [n for n in self.active_adapters if n in self.lora_A]
    if type(base) is not nn.Linear or len(names) != 1 or base.weight.requires_grad:
        return None
    if base.bias is not None and base.bias.requires_grad:
        return None
    name = names[0]
    if not isinstance(self.lora_dropout[name], nn.Identity) or torch.is_autocast_enabled(x.device.type):
        return None
    dtype = base.weight.dtype
    return name if x.dtype == dtype and self.lora_A[name].weight.dtype == dtype else None


def _addmm_forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    import torch

    if not _plain(self, kwargs):
        return type(self).forward(self, x, *args, **kwargs)
    name = None if args or kwargs else _one_node_adapter(self, x)
    if name is not None:
        base = self.base_layer
        return _FrozenBaseLora.get().apply(
            x, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name]
        )
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
    the fused forward; returns how many layers were patched."""
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
