"""`xgen accelerate`: an accelerate config (MULTI_GPU/MULTI_NPU or FSDP) and its per-node launch.

The config is xgen's own, written from `train:`, or the user's `accelerate_config` file as
xgen.accelerate_file plans it; either way the script appends what differs per node."""

from __future__ import annotations

from typing import Any

import yaml

from xgen import accelerate_file
from xgen.checks import launcher_for
from xgen.config import Config
from xgen.errors import XgenError
from xgen.render import render
from xgen.targets.common import context, master_port
from xgen.targets.shell import check_node_rank

# The heredoc that carries the static part into the script ends at this line.
EOF_MARK = "XGEN_ACCELERATE_YAML"
# What the script writes per node, in shell (the order of the lines it appends).
_PER_NODE_VALUES = {
    "distributed_type": "$XGEN_DISTRIBUTED_TYPE",
    "num_machines": "$NNODES",
    "num_processes": "$(( NNODES * NPROC_PER_NODE ))",
    "machine_rank": "$NODE_RANK",
    "main_process_ip": "$MASTER_ADDR",
    "main_process_port": "$MASTER_PORT",
}


class _Dumper(yaml.SafeDumper):
    """Multi-line strings in double quotes (`\n` escapes): one line each, so no blank line of theirs can
    be squeezed by the renderer or end the heredoc."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if "\n" in value or "\r" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _settings(config: Config) -> dict[str, Any]:
    """From the parsed `train:` (the runtime's parser turns `fsdp: "full_shard offload"` and
    `fsdp_config: {cpu_offload: true}` alike into fsdp_config.cpu_offload)."""
    train = config.training
    if train is None:
        return {"fsdp": False, "fsdp_settings": {}, "mixed_precision": "no"}
    return {
        "fsdp": bool(train.fsdp),
        "fsdp_settings": accelerate_file.runtime_fsdp(train) if train.fsdp else {},
        "mixed_precision": "bf16" if train.bf16 else "fp16" if train.fp16 else "no",
    }


def _whys(config: Config, distributed_type: str | None) -> dict[str, str]:
    """Why each per-node value is what it is (said when it differs from the user's file)."""
    c = config.cluster
    if c.master_addr:
        addr = "cluster.master_addr"
    elif config.host_list:
        addr = "the first host of cluster.hosts"
    elif c.nodes == 1:
        addr = "one node: this machine"
    else:
        addr = "MASTER_ADDR from the environment"
    if c.master_port:
        port = "cluster.master_port"
    elif master_port(config) is None:
        port = "a free port on this node: one node, no cluster.master_port"
    else:
        port = "xgen's default; set cluster.master_port"
    whys = {
        "distributed_type": "train.fsdp" if distributed_type else "the devices of this node",
        "num_machines": "cluster.nodes",
        "num_processes": "nodes x processes on this node",
        "machine_rank": "this node's rank",
        "main_process_ip": f"the master: {addr}",
        "main_process_port": f"the master port: {port}",
    }
    # Written in double quotes in the script: xgen's own words, never a config value.
    assert not any(set(why) & set('"$`\\') for why in whys.values()), whys
    return whys


def _static(config: Config) -> dict[str, Any]:
    """The static part of the accelerate config and what the script says about it."""
    if config.accelerate_file is None:
        settings = _settings(config)
        return {
            **settings,
            "accelerate_yaml": render("accelerate.yaml.j2", settings),
            "accelerate_source": "",
            "accelerate_changes": [],
            "accelerate_was": {},
            "distributed_type": "FSDP" if settings["fsdp"] else None,
        }
    plan = accelerate_file.plan(config)
    head = (
        f"# {config.accelerate_config}, as xgen accelerate read it at generation (comments dropped);\n"
        "# the changes xgen made are said as the script runs, then the per-node values follow.\n"
    )
    body = yaml.dump(
        plan.settings, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True
    )
    if EOF_MARK in body.splitlines():  # only a value written as that very line could do it
        raise XgenError(
            "accelerate_config", f"a line reads {EOF_MARK}, which ends the embedded copy; remove it"
        )
    return {
        "fsdp": plan.distributed_type == "FSDP",
        "accelerate_yaml": head + body,
        "accelerate_source": config.accelerate_config,
        "accelerate_changes": plan.changes,
        "accelerate_was": plan.was,
        "distributed_type": plan.distributed_type,
    }


def build(config: Config, node_rank: int | None = None) -> str:
    launcher_for(config, "accelerate")
    check_node_rank(config, node_rank)
    ctx = context(config, "accelerate", "" if node_rank is None else f" --node-rank {node_rank}")
    ctx["node_rank"] = node_rank
    ctx.update(_static(config))
    ctx["per_node_why"] = _whys(config, ctx["distributed_type"])
    ctx["per_node"] = [
        (key, _PER_NODE_VALUES[key]) for key in ("distributed_type", *accelerate_file.PER_NODE)
    ]
    return render("accelerate.sh.j2", ctx)


def accelerate_yaml(config: Config) -> str:
    """The static part of the accelerate config (the script appends the per-node values)."""
    return str(_static(config)["accelerate_yaml"])
