"""`fused_rms_norm`: torch's own `F.rms_norm` kernel in place of a model's Python RMSNorm (opt-in).

A transformers RMSNorm is four elementwise passes (pow, mean, rsqrt-multiply, weight-multiply), each
saved for backward; `torch.nn.functional.rms_norm` is one fused CPU kernel with its own backward
(fp32, [4247, 256], forward + backward on 2 cores: 14.2 ms -> 9.0 ms; forward + backward of one packed
4 k-token micro-batch of the CPU benchmark's shape (bench/sft_throughput.py --shape cpu): +6.6 % tokens/s
with LoRA, +3 % full). The end-to-end bench (bench/sft_throughput.py, `no_fused_rms_norm` rows) measured no
effect above its noise, so perf auto does not turn it on; the key does. On CUDA Liger's RMSNorm does this, on
Ascend torch_npu's (runtime/levers/use_v1_kernels.py); no library offers it for CPU, hence this module.

Models spell RMSNorm differently (Gemma scales by 1 + weight, some norms keep a residual), so no class is
trusted by its name: each RMSNorm class found in the model is probed once with a random input and
patched only when the fused kernel gives its output within 1e-6 (`probe`). Others keep their forward,
and the start line says how many were patched.
"""

from __future__ import annotations

import logging
import types
from typing import Any

from torch import nn

log = logging.getLogger("xgen-runtime")
PROBE_TOLERANCE = 1e-6


def _eps(module: nn.Module) -> float | None:
    for name in ("variance_epsilon", "eps"):
        value = getattr(module, name, None)
        if isinstance(value, float):
            return value
    return None


def _fused_forward(self: nn.Module, hidden_states: Any) -> Any:
    import torch.nn.functional as F

    return F.rms_norm(hidden_states, (hidden_states.shape[-1],), self.weight, self._xgen_eps)


def probe(module: nn.Module) -> bool:
    """True when x / sqrt(mean(x^2) + eps) * weight (F.rms_norm, what torch_npu.npu_rms_norm computes too)
    reproduces this module's forward: run on an fp32 CPU copy with a random input and a random weight, so a
    `1 + weight` or weight-free norm cannot pass by the weight being all ones."""
    import copy

    import torch
    import torch.nn.functional as F

    weight, eps = getattr(module, "weight", None), _eps(module)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1 or not weight.numel() or eps is None:
        return False  # numel 0: a ZeRO-3 partition, whose forward cannot be probed here
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, weight.shape[0], generator=generator)
    try:
        twin = copy.deepcopy(module).to("cpu", torch.float32)
        with torch.no_grad():
            twin.weight.copy_(torch.rand(weight.shape, generator=generator) + 0.5)
            want = twin(x)
            got = F.rms_norm(x, (weight.shape[0],), twin.weight, eps)
    except Exception:  # noqa: BLE001  (any forward we cannot reproduce stays unpatched)
        return False
    return (
        isinstance(want, torch.Tensor)
        and want.shape == got.shape
        and bool((want - got).abs().max() <= PROBE_TOLERANCE)
    )


def apply_fused_rms_norm(model: nn.Module) -> int:
    """Patch every RMSNorm module whose class passes `probe` (probed once per class, fp32 weights only);
    returns how many modules were patched."""
    import torch

    verdict: dict[type, bool] = {}
    patched = 0
    for module in model.modules():
        kind = type(module)
        if not kind.__name__.endswith("RMSNorm"):
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dtype != torch.float32:
            continue  # half-precision norms round differently: leave them as the model wrote them
        if kind not in verdict:
            verdict[kind] = probe(module)
        if verdict[kind]:
            module._xgen_eps = _eps(module)
            module.forward = types.MethodType(_fused_forward, module)
            patched += 1
    kept = sorted(k.__name__ for k, ok in verdict.items() if not ok)
    if kept:
        log.info("fused_rms_norm: %s compute something else; kept as they are", ", ".join(kept))
    return patched
