"""Preemption and resume: signal → checkpoint → exit 75 → rerun continues exactly; a save killed
half-way is never resumed from."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from trainer_harness import (
    REPO,
    base_config,
    log_history,
    max_diff,
    run_cli,
    run_inprocess,
    step_losses,
    subprocess_env,
    weights,
    write_config,
)

from runtime.config import ConfigError, parse_train_config
from runtime.contract.slurm import PROGRESS_FILE
from runtime.fit import checkpoints

STEPS = 6


@pytest.fixture(scope="module")
def uninterrupted(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("uninterrupted")
    out = root / "out"
    cfg = base_config(tiny_dir, out, max_steps=STEPS, finetuning_type="lora", save_steps=2)
    assert run_inprocess(write_config(root / "cfg.yaml", cfg)) == 0
    return out


def _progress(out: Path) -> dict:
    return json.loads((out / PROGRESS_FILE).read_text())


def _config(tiny_dir: Path, tmp_path: Path, **overrides) -> Path:
    settings = {"max_steps": STEPS, "finetuning_type": "lora", "save_steps": 2, **overrides}
    cfg = base_config(tiny_dir, tmp_path / "out", **settings)
    return write_config(tmp_path / "cfg.yaml", cfg)


def test_signal_checkpoints_exits_75_and_resume_is_exact(
    tiny_dir, tmp_path, uninterrupted, monkeypatch, capsys
):
    cfg = _config(tiny_dir, tmp_path)
    out = tmp_path / "out"
    monkeypatch.setenv("XGEN_FAULT_SIGNAL_AT_STEP", "3")
    assert run_inprocess(cfg) == 75
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert not (out / "adapter_model.safetensors").exists(), "a preempted run must not save a final model"
    # The progress file `xgen status` reads says the run stopped for a requeue, not that it is done.
    progress = _progress(out)
    assert (progress["phase"], progress["step"], progress["total"]) == ("preempted", 3, STEPS), progress
    assert progress["last_checkpoint"] == str(out / "checkpoint-3")
    monkeypatch.delenv("XGEN_FAULT_SIGNAL_AT_STEP")
    capsys.readouterr()
    assert run_inprocess(cfg) == 0
    assert (_progress(out)["phase"], _progress(out)["step"]) == ("done", STEPS)
    assert f"resuming from {out / 'checkpoint-3'} (newest complete checkpoint" in capsys.readouterr().out
    resumed, expected = step_losses(out), step_losses(uninterrupted)
    assert resumed[4] == expected[4]  # step k+1: same data, optimizer state and RNG
    assert sorted(resumed) == list(range(1, STEPS + 1))  # no step repeated or skipped
    assert max_diff(weights(out), weights(uninterrupted)) == 0.0


def test_kill_during_save_is_never_resumed(tiny_dir, tmp_path, uninterrupted):
    cfg = _config(tiny_dir, tmp_path)
    out = tmp_path / "out"
    killed = run_cli(["train", str(cfg)], tmp_path, env={"XGEN_FAULT_KILL_IN_SAVE": "4"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (out / checkpoints.STAGING / "checkpoint-4").is_dir()  # written, never published
    assert [p.name for p in checkpoints.complete_checkpoints(out)] == ["checkpoint-2"]

    rerun = run_cli(["train", str(cfg)], tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from {out / 'checkpoint-2'} (newest complete checkpoint" in rerun.stdout
    assert not (out / checkpoints.STAGING).exists()  # nothing left staged, not even the empty folder
    assert max_diff(weights(out), weights(uninterrupted)) == 0.0


@pytest.mark.slow
def test_real_sigterm_from_outside(tiny_dir, tmp_path):
    """A signal from another process (as the sbatch script sends it, via the pid file) mid-run."""
    steps = 150
    cfg = _config(tiny_dir, tmp_path, max_steps=steps, save_steps=1000)
    pid_dir = tmp_path / "pids"
    env = subprocess_env(tmp_path, {"XGEN_PID_DIR": str(pid_dir)})
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime", "train", str(cfg)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        for line in proc.stdout:
            if line.startswith("xgen-runtime: step 5/"):
                break
        (pid_file,) = pid_dir.glob("*-0.pid")
        assert int(pid_file.read_text()) == proc.pid
        os.kill(proc.pid, signal.SIGTERM)
        rest = proc.stdout.read()
        assert proc.wait(timeout=60) == 75
    finally:
        proc.kill()
    assert "SIGTERM received: checkpointing at step" in rest
    # The worker's own exit code for the sbatch script (torchrun would report it as 1).
    assert pid_file.with_suffix(".status").read_text().strip() == "75"
    assert _progress(tmp_path / "out")["phase"] == "preempted"
    (ckpt,) = checkpoints.complete_checkpoints(tmp_path / "out")
    stopped_at = int(ckpt.name.split("-")[1])
    assert 5 <= stopped_at < steps

    rerun = run_cli(["train", str(cfg)], tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from {ckpt}" in rerun.stdout
    assert sorted(step_losses(tmp_path / "out")) == list(range(1, steps + 1))
    assert log_history(tmp_path / "out")[-1]["step"] == steps


def test_resume_modes(tmp_path, monkeypatch):
    base = {"model_name_or_path": "m", "dataset": "d", "output_dir": str(tmp_path)}
    (tmp_path / "checkpoint-7").mkdir()  # no trainer_state.json: not complete
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "checkpoint-5" / "trainer_state.json").write_text("{}")
    assert checkpoints.resolve_resume(parse_train_config(base))[0] == str(tmp_path / "checkpoint-5")
    assert checkpoints.resolve_resume(parse_train_config({**base, "resume_from_checkpoint": None}))[
        0
    ].endswith("-5")
    overwrite = parse_train_config({**base, "overwrite_output_dir": True})
    assert checkpoints.resolve_resume(overwrite)[0] is None
    # A requeued Slurm job continues even when the config says overwrite (meant for the first start).
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    resumed, why = checkpoints.resolve_resume(overwrite)
    assert resumed.endswith("checkpoint-5") and "overwrite_output_dir is ignored" in why
    monkeypatch.delenv("SLURM_RESTART_COUNT")
    assert (
        checkpoints.resolve_resume(parse_train_config({**base, "resume_from_checkpoint": False}))[0] is None
    )
    empty = {**base, "output_dir": str(tmp_path / "empty"), "resume_from_checkpoint": True}
    with pytest.raises(ConfigError, match="resume_from_checkpoint: true, but"):
        checkpoints.resolve_resume(parse_train_config(empty))
    with pytest.raises(ConfigError, match="not a complete checkpoint"):
        checkpoints.resolve_resume(
            parse_train_config({**base, "resume_from_checkpoint": str(tmp_path / "checkpoint-7")})
        )


def test_checkpoint_at_the_planned_end_is_not_resumed_from(tmp_path):
    """transformers trains one step too many when resumed from the final checkpoint: use the one before."""
    base = {"model_name_or_path": "m", "dataset": "d", "output_dir": str(tmp_path), "max_steps": 8}
    for step in (4, 8):
        (tmp_path / f"checkpoint-{step}").mkdir()
        state = {"global_step": step, "max_steps": 8}
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps(state))
    assert checkpoints.resolve_resume(parse_train_config(base))[0].endswith("checkpoint-4")
    # Raising max_steps continues from the newest one.
    longer = parse_train_config({**base, "max_steps": 12})
    assert checkpoints.resolve_resume(longer)[0].endswith("checkpoint-8")


def test_rerun_of_a_finished_run_does_nothing(tiny_dir, tmp_path):
    cfg = _config(tiny_dir, tmp_path, max_steps=4, save_steps=2)
    first = run_cli(["train", str(cfg)], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_cli(["train", str(cfg)], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "training already complete" in again.stdout and "step 4 of 4" in again.stdout
    assert "xgen-runtime: step " not in again.stdout
    assert log_history(tmp_path / "out")[-1]["step"] == 4
