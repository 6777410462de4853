"""`xgen check`: what would run, in a few lines (nodes x devices, launcher, ZeRO stage, env)."""

from __future__ import annotations

import os

from runtime.secrets import MASK
from xgen.config import Config
from xgen.targets.common import master_addr


def forwarded(names: tuple[str, ...]) -> str:
    """Each forwarded name and whether it is set in this (the submitting) environment; never the value."""
    return ", ".join(f"{n} ({'set' if os.environ.get(n) else 'NOT set here'})" for n in names)


def summary(config: Config) -> str:
    c = config.cluster
    devices = "auto-detected" if config.pinned_devices is None else str(config.pinned_devices)
    train = config.train
    strategy = (
        f"deepspeed {train['deepspeed']}"
        if train.get("deepspeed")
        else f"fsdp {train['fsdp']}"
        if train.get("fsdp")
        else "ddp"
    )
    hosts = ", ".join(h.name for h in config.host_list) or "from Slurm / the environment"
    secret = set(c.written_secrets)
    env = ", ".join(f"{k}={MASK if k in secret else v}" for k, v in c.env.items()) or "defaults only"
    lines = [
        f"config:   {config.source}",
        f"job:      {config.job.name} in {config.workdir}",
        f"nodes:    {c.nodes} x {devices} devices per node (device: {c.device})",
        f"hosts:    {hosts}",
        f"master:   {master_addr(config) or 'first Slurm node / $MASTER_ADDR'}:{c.master_port or 'auto'}",
        f"launcher: {config.launcher} (python: {config.python})",
        f"train:    {train.get('stage', '?')}/{train.get('finetuning_type', '?')} "
        f"{train.get('model_name_or_path', '?')}, strategy {strategy}",
        f"nic:      {c.nic or 'NCCL/HCCL default'}; env: {env}",
        *([f"pass_env: {forwarded(c.pass_env)}"] if c.pass_env else []),
        "ok",
    ]
    return "\n".join(lines) + "\n"
