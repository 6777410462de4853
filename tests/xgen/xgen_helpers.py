"""Shared helpers: render every example through the library API with a fixed config path."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
TARGETS = ("slurm", "shell", "accelerate", "deepspeed")
# Golden files must not depend on where the checkout lives: scripts embed the config's absolute path,
# so the tests render as if every example lived under this fixed directory.
FIXED_DIR = Path("/cluster/xgen/examples")
FIXED_HOSTFILE = "/cluster/xgen/hostfile"


def load_fixed(example: Path):
    from xgen.load import load_config

    config = load_config(example)
    return dataclasses.replace(config, source=FIXED_DIR / example.name)


def render_target(config, target: str, node_rank: int | None = None) -> str:
    """The script text for one target (the deepspeed hostfile goes to a fixed path)."""
    from xgen.targets import accelerate, deepspeed, shell, slurm

    if target == "slurm":
        return slurm.build(config)
    if target == "shell":
        return shell.build(config, node_rank)
    if target == "accelerate":
        return accelerate.build(config, node_rank)
    script, _hosts = deepspeed.build(config, FIXED_HOSTFILE)
    return script


def run_xgen(*args: str, cwd: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "xgen.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env=env,
        **kwargs,
    )
