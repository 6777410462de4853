"""`xgen accelerate`: an accelerate config (MULTI_GPU/MULTI_NPU or FSDP) and its per-node launch."""

from __future__ import annotations

from typing import Any

from xgen.config import Config
from xgen.render import render
from xgen.targets.common import context
from xgen.targets.shell import check_node_rank


def _settings(config: Config) -> dict[str, Any]:
    train = config.train
    fsdp = train.get("fsdp")
    precision = "bf16" if train.get("bf16") else "fp16" if train.get("fp16") else "no"
    return {
        "fsdp": bool(fsdp),
        "fsdp_offload": "offload" in str(fsdp or ""),
        "mixed_precision": precision,
    }


def build(config: Config, node_rank: int | None = None) -> str:
    check_node_rank(config, node_rank)
    ctx = context(config, "accelerate", "" if node_rank is None else f" --node-rank {node_rank}")
    ctx["node_rank"] = node_rank
    ctx.update(_settings(config))
    return render("accelerate.sh.j2", ctx)


def accelerate_yaml(config: Config) -> str:
    """The static part of the accelerate config (the script appends the per-node values)."""
    return render("accelerate.yaml.j2", _settings(config))
