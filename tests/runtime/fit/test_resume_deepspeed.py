"""The DeepSpeed path resumes like DDP does: a ZeRO-2 run on 2 ranks stopped by a signal
checkpoints every rank's optimizer shard, and re-running the same command continues exactly.

Single machine, `torch.distributed.run` with 2 processes, DeepSpeed on its CPU accelerator (gloo);
the same runtime code runs under DeepSpeed's own launcher on the cluster (tests/cluster/).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from trainer_harness import base_config, max_diff, run_torchrun, step_losses, weights, write_config

from runtime.fit import checkpoints

pytestmark = pytest.mark.slow
STEPS = 6
STOP = 3


def _config(tiny_dir: Path, root: Path, name: str) -> Path:
    # save_steps beyond max_steps: the only checkpoint is the one the signal asks for.
    cfg = base_config(tiny_dir, root / name, max_steps=STEPS, deepspeed="z2", save_steps=100)
    return write_config(root / f"{name}.yaml", cfg, xgen_style=True)


def test_zero2_signal_then_rerun_resumes_exactly(tiny_dir: Path, tmp_path: Path) -> None:
    ref = run_torchrun(_config(tiny_dir, tmp_path, "ref"), tmp_path)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    assert "strategy=deepspeed-z2" in ref.stdout

    out, cfg = tmp_path / "out", _config(tiny_dir, tmp_path, "out")
    # Rank 0 alone gets SIGUSR1 after step 3; both ranks must stop there and write their shards.
    first = run_torchrun(cfg, tmp_path, env={"XGEN_FAULT_SIGNAL_AT_STEP": str(STOP)})
    assert first.returncode != 0
    assert f"SIGUSR1 received: checkpointing at step {STOP}" in first.stdout, first.stdout[-3000:]
    assert "exitcode: 75" in first.stderr or "exitcode  : 75" in first.stderr, first.stderr[-2000:]
    (ckpt,) = checkpoints.complete_checkpoints(out)
    assert ckpt.name == f"checkpoint-{STOP}"
    shards = sorted(p.name for p in (ckpt / f"global_step{STOP}").glob("*optim_states.pt"))
    assert len(shards) == 2, f"expected one ZeRO optimizer shard per rank: {shards}"
    assert not (out / "model.safetensors").exists(), "a preempted run must not save a final model"

    second = run_torchrun(cfg, tmp_path)  # the same command again
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"resuming from {ckpt} (newest complete checkpoint" in second.stdout, second.stdout[-3000:]
    resumed, expected = step_losses(out), step_losses(tmp_path / "ref")
    assert sorted(resumed) == list(range(1, STEPS + 1))  # trainer_state carries steps 1..STOP over
    assert resumed[STOP + 1] == pytest.approx(expected[STOP + 1], abs=1e-6)
    assert max_diff(weights(out), weights(tmp_path / "ref")) < 1e-6
