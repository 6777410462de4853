"""Runs that finish without a human, on one node: `python -m runtime launch` (torch.distributed.run with
the same arguments) restarts the workers when one dies, says so in one line, and the run resumes from
the newest checkpoint to the same final weights as an uninterrupted run; a planned stop and a failure
with no restarts left end in one line each, with the worker's exit status and no traceback.

Real torch.distributed.run, 2 gloo ranks on CPU; the fault is a real SIGKILL of rank 1 after step 3
(XGEN_FAULT_KILL_AT_STEP, first attempt only), one step after checkpoint-2."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from trainer_harness import (
    REPO,
    TORCHRUN_TIMEOUT,
    base_config,
    max_diff,
    subprocess_env,
    weights,
    write_config,
)

pytestmark = pytest.mark.slow

STEPS = 6


def _config(tiny_dir: Path, root: Path) -> Path:
    cfg = base_config(tiny_dir, root / "out", finetuning_type="lora", max_steps=STEPS, save_steps=2)
    return write_config(root / "cfg.yaml", cfg)


def _launch(cfg: Path, root: Path, *torchrun: str, env: dict[str, str] | None = None):
    cmd = [sys.executable, "-m", "runtime", "launch", "--standalone", "--nproc_per_node", "2", *torchrun]
    cmd += ["-m", "runtime", "train", str(cfg)]
    return subprocess.run(
        cmd, cwd=REPO, env=subprocess_env(root, env), capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT
    )


@pytest.fixture(scope="module")
def uninterrupted(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("uninterrupted")
    done = _launch(_config(tiny_dir, root), root)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "out"


def test_a_killed_worker_restarts_inside_the_job_and_ends_with_the_same_weights(
    tiny_dir, tmp_path, uninterrupted
):
    out = tmp_path / "out"
    run = _launch(
        _config(tiny_dir, tmp_path), tmp_path, "--max-restarts", "1", env={"XGEN_FAULT_KILL_AT_STEP": "3@1"}
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    line = (
        f"xgen-runtime: restart 1/1: rank 1 on {socket.gethostname()} failed (killed by SIGKILL); "
        f"the workers restart and resume from {out / 'checkpoint-2'}"
    )
    assert line in run.stdout, run.stdout[-3000:]
    assert f"resuming from {out / 'checkpoint-2'}" in run.stdout
    assert "restart cost: " in run.stdout  # measured from the failure to the first step after the resume
    assert max_diff(weights(out), weights(uninterrupted)) == 0.0  # resume is exact, as after a preemption


def test_no_restarts_left_is_one_line_with_no_traceback(tiny_dir, tmp_path):
    run = _launch(_config(tiny_dir, tmp_path), tmp_path, env={"XGEN_FAULT_KILL_AT_STEP": "3@1"})
    assert run.returncode == 1, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("xgen-runtime: error:")]
    assert errors == [
        f"xgen-runtime: error: rank 1 on {socket.gethostname()} failed (killed by SIGKILL); "
        "its log and error.json: the console above"
    ], run.stderr[-3000:]
    # The surviving rank's own traceback (its peer vanished) is its log; the launcher adds none.
    assert "ChildFailedError" not in run.stderr
    assert not [line for line in run.stderr.splitlines() if line.startswith("Traceback")]


def test_a_planned_stop_says_rerun_in_one_line_and_exits_75(tiny_dir, tmp_path):
    cfg = _config(tiny_dir, tmp_path)
    run = _launch(cfg, tmp_path, env={"XGEN_FAULT_SIGNAL_AT_STEP": "3"})
    assert run.returncode == 75, run.stderr[-3000:]
    # The launcher's own line (a worker's last progress line may still be flushing beside it).
    said = f"xgen-runtime: checkpoint-3 saved in {tmp_path / 'out'}; rerun this script to continue"
    assert said in run.stdout.splitlines(), run.stdout[-3000:]
    assert "Traceback" not in run.stderr and "ChildFailedError" not in run.stderr
    again = _launch(cfg, tmp_path)  # the same command continues
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {tmp_path / 'out' / 'checkpoint-3'}" in again.stdout


def test_a_hung_worker_is_named_its_peers_stacks_written_and_the_run_restarts(
    tiny_dir, tmp_path, uninterrupted
):
    """Rank 1 is SIGSTOPped after step 3 (a hang: alive, silent); rank 0 waits in the next collective. With
    XGEN_HANG_TIMEOUT=15 the watchdog names rank 1 within the timeout plus its heartbeat period, writes
    rank 0's Python stacks and (py-spy) rank 1's to the run directory, ends the workers, and the restart
    completes the run."""
    out, run_dir = tmp_path / "out", tmp_path / "run"
    env = {"XGEN_FAULT_STOP_AT_STEP": "3@1", "XGEN_HANG_TIMEOUT": "15", "XGEN_RUN_DIR": str(run_dir)}
    run = _launch(_config(tiny_dir, tmp_path), tmp_path, "--max-restarts", "1", env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    host = socket.gethostname()
    hang = [line for line in run.stderr.splitlines() if line.startswith("xgen-runtime: error: hang:")]
    assert len(hang) == 1, run.stderr[-3000:]
    # Rank 0 last finished step 2 or 3: step 3's end waits in the preemption flag's all-reduce for rank 1.
    assert re.search(r"no optimizer step for 15 s after step [23]; ", hang[0]), hang[0]
    assert f"stuck: rank 1 on {host} (no heartbeat)" in hang[0]
    stacks = run_dir / "stacks" / f"{host}-rank0.txt"
    assert "Thread" in stacks.read_text() or "File" in stacks.read_text()  # faulthandler's dump
    # The stopped rank's own stacks, read from outside by py-spy (installed with the runtime): the frame
    # it stopped in is the fault hook's os.kill, inside the trainer's step callback.
    stopped = (run_dir / "stacks" / f"{host}-rank1.txt").read_text()
    assert stopped.startswith(f"rank 1 on {host}, stuck (last heartbeat: step "), stopped
    assert "read by py-spy from rank 0\n" in stopped, stopped
    assert "kill_at_step (runtime/scaffolding/testing.py" in stopped, stopped
    assert "xgen-runtime: restart 1/1: rank " in run.stdout  # the hang ended the workers: a restart
    assert max_diff(weights(out), weights(uninterrupted)) == 0.0


def test_sigusr1_to_the_launcher_reaches_the_workers_and_is_a_planned_stop(tiny_dir, tmp_path):
    """torchrun dies of SIGUSR1 and leaves its workers training unsupervised; `runtime launch` passes it on:
    every worker checkpoints at the end of its step and the launcher ends with the one rerun line, 75."""
    cfg = base_config(tiny_dir, tmp_path / "out", finetuning_type="lora", max_steps=400, save_steps=1000)
    cmd = [sys.executable, "-m", "runtime", "launch", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "runtime", "train", str(write_config(tmp_path / "cfg.yaml", cfg))]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=subprocess_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        for line in proc.stdout:
            if "xgen-runtime: step 3/" in line:
                break
        os.kill(proc.pid, signal.SIGUSR1)
        rest = proc.stdout.read()
        assert proc.wait(timeout=120) == 75, rest[-3000:]
    finally:
        proc.kill()
    pattern = rf"xgen-runtime: checkpoint-\d+ saved in {re.escape(str(tmp_path / 'out'))}; rerun this script"
    assert re.search(pattern, rest), rest[-3000:]
    assert "SIGUSR1 received: checkpointing at step" in rest
