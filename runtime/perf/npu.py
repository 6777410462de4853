"""`perf: auto` on Ascend NPU: the levers LLaMA-Factory's Ascend setup turns on, each with torch_npu's kernel.

    padding_free padding-free rows (pt/sft) through torch_npu.npu_fusion_attention's variable-length path:
                `flash_attn: fa2`, which transformers maps on Ascend to npu_fusion_attention with layout
                TND and actual_seq_qlen = the examples' cumulative ends, so each example attends only to
                itself and the cost grows with each example's length, not the row's.
    kernels     torch_npu.npu_rms_norm, npu_swiglu and npu_rotary_mul patched into the model (pt/sft;
                runtime/levers/use_v1_kernels.py; LLaMA-Factory's `use_v1_kernels`).
    optim       adamw_torch_npu_fused: torch_npu.optim.NpuFusedAdamW through transformers (any stage).

Each lever needs one thing from torch_npu. Where the installed torch_npu lacks it, that lever stays off with
exactly one note and the others keep going; a key the config wrote is never overridden, except that a lever
asked for which cannot run falls back with its note instead of failing inside Trainer (as Liger does on CUDA).

The decisions are torch-free: they take the set of torch_npu names present (`npu_ops()` probes it, the only
place that imports torch_npu), so tests decide with any set. No NPU has been lent to this project: the
wiring is tested on CPU against a fake torch_npu (tests/runtime/fakes/torch_npu); the NPU speed of these
levers is unmeasured.
"""

from __future__ import annotations

import importlib
from typing import Any

from runtime.perf.predicates import PLAIN_ADAMW, auto_chooses

# lever -> what torch_npu must have for it ("optim.X": attribute X of the torch_npu.optim module)
NPU_OPS = {
    "attention": "npu_fusion_attention",
    "rms_norm": "npu_rms_norm",
    "swiglu": "npu_swiglu",
    "rotary": "npu_rotary_mul",
    "adamw": "optim.NpuFusedAdamW",
}
KERNELS = (
    "rms_norm",
    "swiglu",
    "rotary",
)  # runtime/levers/use_v1_kernels.py's names, in the order it patches
KERNEL_WHAT = {"rms_norm": "RMSNorm", "swiglu": "SwiGLU", "rotary": "rotary embedding"}
FUSED_ADAMW = "adamw_torch_npu_fused"


def npu_ops() -> frozenset[str]:
    """The NPU_OPS values the installed torch_npu has (empty when it does not import)."""
    try:
        torch_npu = importlib.import_module("torch_npu")
    except Exception:  # ImportError (libhccl.so …), RuntimeError: no usable torch_npu, nothing to use
        return frozenset()
    found = set()
    for name in NPU_OPS.values():
        owner, _, attr = name.rpartition(".")
        module: Any = torch_npu
        if owner:
            try:
                module = importlib.import_module(f"torch_npu.{owner}")
            except Exception:
                continue
        if hasattr(module, attr):
            found.add(name)
    return frozenset(found)


def _missing(lever: str, ops: frozenset[str]) -> bool:
    return NPU_OPS[lever] not in ops


def resolve_npu(cfg: Any, plan: Any, ops: frozenset[str]) -> None:
    """Set the NPU levers on runtime.perf.plan's PerfPlan (padding_free, flash_attn, npu_kernels, optim,
    notes)."""
    note = plan.notes.append
    no_attention = _missing("attention", ops)
    # attention and padding_free: padding-free rows only with the variable-length fused attention (with sdpa
    # or eager a packed row costs the square of its length)
    varlen = cfg.flash_attn in ("auto", "fa2") and not no_attention
    if cfg.flash_attn == "fa2" and no_attention:
        plan.flash_attn = "sdpa"
        note("flash_attn: torch_npu has no npu_fusion_attention (fa2 on Ascend); using sdpa")
    elif auto_chooses(cfg, "packing") and cfg.flash_attn == "auto" and no_attention:
        note(
            "padding_free: torch_npu has no npu_fusion_attention, the variable-length attention "
            "padding-free rows need; padding_free off"
        )
    if auto_chooses(cfg, "packing"):
        plan.padding_free = cfg.padding_free or (varlen and not cfg.packing)
        if varlen:
            plan.flash_attn = "fa2"
    # fused kernels
    if auto_chooses(cfg, "use_v1_kernels") or cfg.use_v1_kernels:
        kernels = []
        for kernel in KERNELS:
            if _missing(kernel, ops):
                note(
                    f"use_v1_kernels: torch_npu has no {NPU_OPS[kernel]}; {KERNEL_WHAT[kernel]} stays unfused"
                )
            else:
                kernels.append(kernel)
        plan.npu_kernels = tuple(kernels)
    # optimizer: runtime.perf.plan.resolve_optim already chose the fused AdamW under auto (or the config did)
    if plan.optim == FUSED_ADAMW and _missing("adamw", ops):
        plan.optim = PLAIN_ADAMW
        note(f"optim: torch_npu has no optim.NpuFusedAdamW; using {PLAIN_ADAMW} (the same update, unfused)")
