"""Run the generated sbatch script with fake srun/scontrol/python: exit status, USR1 forwarding, requeue.

The real-Slurm version lives in tests/cluster; this one checks the script's own logic in a second.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from xgen.load import parse_mapping
from xgen.targets import slurm

SRUN = """#!/usr/bin/env bash
# fake srun: drop the options, run the task command here
echo "srun $*" >>"$XGEN_TEST_LOG"
while [[ $# -gt 0 && "$1" != bash ]]; do shift; done
exec "$@"
"""
SCONTROL = """#!/usr/bin/env bash
echo "scontrol $*" >>"$XGEN_TEST_LOG"
if [[ "$1 $2" == "show hostnames" ]]; then echo localhost; fi
"""
# Stands in for `python -m torch.distributed.run … -m runtime train CFG` (and passes `-m runtime check`):
# writes its pid like the runtime, on USR1 "checkpoints" (status 75) and exits 1 the way torchrun
# reports a failed worker.
PYTHON = """#!/usr/bin/env bash
[[ "${1:-} ${2:-}" == "-c import runtime" ]] && exit 0  # xgen_check_python: the runtime imports
if [[ "$1 $2 $3" == "-m runtime check" ]]; then exit 0; fi  # the per-node config check passes
echo $$ >"$XGEN_PID_DIR/$(hostname)-0.pid"
trap 'echo 75 >"$XGEN_PID_DIR/$(hostname)-0.status"; exit 1' USR1
echo started >>"$XGEN_TEST_LOG"
if [[ -n "${XGEN_TEST_EXIT:-}" ]]; then exit "$XGEN_TEST_EXIT"; fi
while :; do sleep 0.05; done
"""


def make(tmp_path: Path) -> tuple[Path, dict]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, body in {"srun": SRUN, "scontrol": SCONTROL, "python": PYTHON}.items():
        (bindir / name).write_text(body)
        (bindir / name).chmod(0o755)
    cfg = tmp_path / "job.yaml"
    cfg.write_text("{}\n")
    raw = {
        # The fake python stands in for torchrun only; the preflight has its own tests.
        "cluster": {"device": "cpu", "nodes": 1, "preflight": False},
        "slurm": {"requeue": True, "max_requeues": 2},
        "python": str(bindir / "python"),
    }
    script = tmp_path / "job.sh"
    script.write_text(slurm.build(parse_mapping(raw, cfg)))
    env = {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "TMPDIR": str(tmp_path),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_JOB_NODELIST": "localhost",
        "SLURM_NODEID": "0",
        "XGEN_TEST_LOG": str(tmp_path / "log"),
    }
    return script, env


def log(tmp_path: Path) -> str:
    path = tmp_path / "log"
    return path.read_text() if path.exists() else ""


def start(script: Path, env: dict, tmp_path: Path) -> subprocess.Popen:
    proc = subprocess.Popen(["bash", str(script)], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 10
    while "started" not in log(tmp_path):
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, "fake trainer never started"
        time.sleep(0.02)
    return proc


@pytest.mark.parametrize("code", [0, 3])
def test_exit_status_is_the_trainings(tmp_path, code):
    script, env = make(tmp_path)
    result = subprocess.run(
        ["bash", str(script)], env={**env, "XGEN_TEST_EXIT": str(code)}, capture_output=True, text=True
    )
    assert result.returncode == code, result.stderr
    assert "srun --export=ALL --kill-on-bad-exit=1" in log(tmp_path)
    assert "requeue" not in log(tmp_path)


def test_usr1_checkpoints_then_requeues(tmp_path):
    script, env = make(tmp_path)
    proc = start(script, {**env, "SLURM_RESTART_COUNT": "1"}, tmp_path)
    proc.send_signal(signal.SIGUSR1)
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert "srun --overlap" in log(tmp_path)
    assert "scontrol requeue 4242" in log(tmp_path)
    assert "requeueing job 4242 (restart 2 of 2)" in stderr


def test_no_requeue_after_max(tmp_path):
    script, env = make(tmp_path)
    proc = start(script, {**env, "SLURM_RESTART_COUNT": "2"}, tmp_path)
    proc.send_signal(signal.SIGUSR1)
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 75, stderr
    assert "scontrol requeue" not in log(tmp_path)
    assert "max_requeues=2 reached" in stderr


def test_refuses_wrong_allocation(tmp_path):
    script, env = make(tmp_path)
    result = subprocess.run(
        ["bash", str(script)], env={**env, "SLURM_JOB_NUM_NODES": "2"}, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        "cluster.nodes is 1 but the allocation has 2 nodes; make them agree"
    )


def test_refuses_empty_nodelist(tmp_path):
    script, env = make(tmp_path)
    (tmp_path / "bin" / "scontrol").write_text("#!/bin/sh\nexit 0\n")
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert result.returncode == 1 and "scontrol show hostnames gave no first node" in result.stderr
    assert os.listdir(tmp_path / "bin")  # sanity: the fakes were used
