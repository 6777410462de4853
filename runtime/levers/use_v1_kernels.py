"""`use_v1_kernels` on Ascend: torch_npu's fused RMSNorm, SwiGLU and rotary kernels (the NPU
counterpart of the Liger kernels; attention is torch_npu's through `flash_attn: fa2`).

Same maths as the modules they replace (LLaMA-Factory's v1 kernel plugins do the same):
  RMSNorm   x / sqrt(mean(x^2) + eps) * weight      -> torch_npu.npu_rms_norm(x, weight, epsilon)[0]
  SwiGLU    down(silu(gate(x)) * up(x))             -> down(torch_npu.npu_swiglu(cat(gate(x), up(x))))
  rotary    x * cos + rotate_half(x) * sin          -> torch_npu.npu_rotary_mul(x, cos, sin)
Written here rather than imported from LLaMA-Factory: its kernels live in its own package, which pins an
older transformers. Only modules with the standard Llama-style structure are patched; others keep theirs.
"""

from __future__ import annotations

import logging
import sys
import types
from collections.abc import Sequence
from typing import Any

from torch import nn

log = logging.getLogger("xgen-runtime")


def _npu() -> Any:
    import torch_npu

    return torch_npu


def _rms_norm_forward(self: nn.Module, hidden_states: Any) -> Any:
    eps = getattr(self, "variance_epsilon", None) or getattr(self, "eps", 1e-6)
    return _npu().npu_rms_norm(hidden_states, self.weight.to(hidden_states.dtype), epsilon=eps)[0]


def _swiglu_forward(self: nn.Module, x: Any) -> Any:
    import torch

    fused = torch.cat((self.gate_proj(x), self.up_proj(x)), dim=-1)
    return self.down_proj(_npu().npu_swiglu(fused, dim=-1))


def _rotary(q: Any, k: Any, cos: Any, sin: Any, position_ids: Any = None, unsqueeze_dim: int = 1) -> Any:
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    npu = _npu()
    return npu.npu_rotary_mul(q, cos, sin).to(q.dtype), npu.npu_rotary_mul(k, cos, sin).to(k.dtype)


def _is_swiglu(module: nn.Module) -> bool:
    act = getattr(module, "act_fn", None)
    silu = isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"  # transformers' own SiLU
    return silu and all(
        isinstance(getattr(module, n, None), nn.Linear) for n in ("gate_proj", "up_proj", "down_proj")
    )


ALL_KERNELS = ("rms_norm", "swiglu", "rotary")


def apply_npu_kernels(model: nn.Module, kernels: Sequence[str] | None = None) -> list[str]:
    """Patch the model in place with `kernels` (default: all three, as runtime.perf.npu decides them from
    what torch_npu has); returns what was patched (also logged once)."""
    from runtime.levers.fused_rms_norm import probe

    wanted = set(ALL_KERNELS if kernels is None else kernels)
    patched: dict[str, int] = {}
    modeling = set()
    same_maths: dict[type, bool] = {}  # per RMSNorm class: does npu_rms_norm's formula reproduce it?
    for module in model.modules():
        name = type(module).__name__
        if name.endswith("RMSNorm"):
            if type(module) not in same_maths:  # Gemma's 1 + weight, residual norms: probed out, kept
                same_maths[type(module)] = probe(module)
            if "rms_norm" in wanted and same_maths[type(module)]:
                module.forward = types.MethodType(_rms_norm_forward, module)
                patched["rms_norm"] = patched.get("rms_norm", 0) + 1
        elif _is_swiglu(module) and "swiglu" in wanted:
            module.forward = types.MethodType(_swiglu_forward, module)
            patched["swiglu"] = patched.get("swiglu", 0) + 1
        modeling.add(type(module).__module__)
    for mod_name in modeling if "rotary" in wanted else ():
        mod = sys.modules.get(mod_name)
        if (
            mod is not None
            and hasattr(mod, "apply_rotary_pos_emb")
            and mod_name.startswith("transformers.models")
        ):
            mod.apply_rotary_pos_emb = _rotary
            patched["rotary"] = patched.get("rotary", 0) + 1
    done = [f"{k} x{v}" for k, v in patched.items()]
    log.warning("use_v1_kernels: torch_npu fused %s", ", ".join(done) or "nothing (no matching modules)")
    return done
