"""`xgen shell`: the script for one node of a hand-run cluster (NNODES/NODE_RANK/MASTER_ADDR/MASTER_PORT)."""

from __future__ import annotations

from xgen.checks import launcher_for
from xgen.config import Config
from xgen.errors import XgenError
from xgen.render import render
from xgen.targets.common import context


def check_node_rank(config: Config, node_rank: int | None) -> None:
    if node_rank is not None and not 0 <= node_rank < config.cluster.nodes:
        raise XgenError(
            "--node-rank",
            f"must be 0 … {config.cluster.nodes - 1} (cluster.nodes={config.cluster.nodes}), got {node_rank}",
        )


def build(config: Config, node_rank: int | None = None, module: str = "runtime train") -> str:
    launcher_for(config, "shell")
    check_node_rank(config, node_rank)
    name = "shell" if module == "runtime train" else "doctor shell"
    ctx = context(config, name, "" if node_rank is None else f" --node-rank {node_rank}")
    ctx["launch_module"] = module
    ctx["node_rank"] = node_rank
    return render("shell.sh.j2", ctx)
