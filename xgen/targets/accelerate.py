"""`xgen accelerate`: an accelerate config (MULTI_GPU/MULTI_NPU or FSDP) and its per-node launch."""

from __future__ import annotations

from typing import Any

from xgen.checks import launcher_for
from xgen.config import Config
from xgen.render import render
from xgen.targets.common import context
from xgen.targets.shell import check_node_rank


def _settings(config: Config) -> dict[str, Any]:
    """From the parsed `train:` (the runtime's parser turns `fsdp: "full_shard offload"` and
    `fsdp_config: {cpu_offload: true}` alike into fsdp_config.cpu_offload)."""
    train = config.training
    if train is None:
        return {"fsdp": False, "fsdp_offload": False, "mixed_precision": "no"}
    fsdp = bool(train.fsdp)
    fsdp_config = train.fsdp_config if isinstance(train.fsdp_config, dict) else {}
    return {
        "fsdp": fsdp,
        "fsdp_offload": fsdp and bool(fsdp_config.get("cpu_offload")),
        "mixed_precision": "bf16" if train.bf16 else "fp16" if train.fp16 else "no",
    }


def build(config: Config, node_rank: int | None = None) -> str:
    launcher_for(config, "accelerate")
    check_node_rank(config, node_rank)
    ctx = context(config, "accelerate", "" if node_rank is None else f" --node-rank {node_rank}")
    ctx["node_rank"] = node_rank
    ctx.update(_settings(config))
    return render("accelerate.sh.j2", ctx)


def accelerate_yaml(config: Config) -> str:
    """The static part of the accelerate config (the script appends the per-node values)."""
    return render("accelerate.yaml.j2", _settings(config))
