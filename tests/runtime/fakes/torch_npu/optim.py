"""torch_npu.optim.NpuFusedAdamW stand-in: torch's AdamW (the same update), counting its steps."""

from __future__ import annotations

from typing import Any

import torch

ARGS = ("lr", "betas", "eps", "weight_decay", "amsgrad")


class NpuFusedAdamW(torch.optim.AdamW):
    def __init__(self, params: Any, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(ARGS)
        if unknown:
            raise TypeError(f"fake torch_npu: NpuFusedAdamW got unexpected arguments {sorted(unknown)}")
        super().__init__(params, **kwargs)

    def step(self, closure: Any = None) -> Any:
        from torch_npu import CALLS  # the package's counter (this module is torch_npu.optim)

        CALLS["NpuFusedAdamW.step"] += 1
        return super().step(closure)
