"""Model states, measured: under gloo with 2 CPU ranks, the bytes of parameters, gradients, optimizer states
and master weights each rank really holds (plan_states_worker.py: one step taken, the next backward done)
equal the plan's prediction within 1%, for DDP, ZeRO-2, ZeRO-3 and FSDP2, full and LoRA. fp32 on CPU
(DeepSpeed keeps its own fp32 master copy even then). The plan is the per-device peak: the fullest rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from plan_states_worker import CONFIG

from runtime.contract.plan.shape import lora_params, shape_from_config, total_params
from runtime.contract.plan.terms import Run, breakdown

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[3]
WORKER = Path(__file__).with_name("plan_states_worker.py")
STATES = ("parameters", "gradients", "optimizer states", "master weights")


def predicted(strategy: str, method: str) -> int:
    shape = shape_from_config(CONFIG)
    trainable = total_params(shape) if method == "full" else lora_params(shape, "all", 8)
    run = Run(
        shape=shape,
        method=method,
        trainable=trainable,
        precision="fp32",
        device="cpu",
        world=2,
        strategy={"z2": "zero2", "z3": "zero3"}.get(strategy, strategy),
        lora_rank=8,
    )
    return sum(t.bytes for t in breakdown(run) if t.name in STATES)


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("strategy", ["ddp", "z2", "z3", "fsdp2"])
def test_model_states_per_rank_within_1_percent(strategy: str, method: str, tmp_path: Path) -> None:
    out = tmp_path / "states"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(WORKER),
            strategy,
            method,
            str(out),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    held = [json.loads(Path(f"{out}.rank{r}.json").read_text())["bytes"] for r in (0, 1)]
    want = predicted(strategy, method)
    assert abs(max(held) / want - 1) < 0.01, (held, want, f"{max(held) / want - 1:+.3%}")
