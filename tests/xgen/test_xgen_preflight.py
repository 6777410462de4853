"""Every script runs the preflight before the launcher, and its exit 3 ends the job there.
A fake python stands in for both `-m runtime.preflight` and the launcher (real checks: tests/runtime)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from xgen.load import parse_mapping
from xgen.targets import accelerate, shell, slurm

SRUN = """#!/usr/bin/env bash
# fake srun: drop the options, run the task command here
echo "srun $*" >>"$XGEN_TEST_LOG"
while [[ $# -gt 0 && "$1" != bash ]]; do shift; done
exec "$@"
"""
SCONTROL = """#!/usr/bin/env bash
if [[ "$1 $2" == "show hostnames" ]]; then echo localhost; fi
"""
PYTHON = """#!/usr/bin/env bash
[[ "${1:-} ${2:-}" == "-c import runtime" ]] && exit 0  # xgen_check_python: the runtime imports
if [[ "$1 $2" == "-m runtime.preflight" ]]; then
  echo "preflight $*" >>"$XGEN_TEST_LOG"
  echo "xgen: preflight: $(hostname): cluster.nic: no interface eth9 here (has: lo); set cluster.nic" >&2
  exit "${XGEN_TEST_PREFLIGHT_EXIT:-0}"
fi
if [[ "$1 $2" == "-c import" ]]; then echo 29999; exit 0; fi
echo "launcher $*" >>"$XGEN_TEST_LOG"
"""


def make(tmp_path: Path, target, preflight: bool = True) -> tuple[Path, dict]:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for name, body in {"srun": SRUN, "scontrol": SCONTROL, "python": PYTHON}.items():
        (bindir / name).write_text(body)
        (bindir / name).chmod(0o755)
    cfg = tmp_path / "job.yaml"
    cfg.write_text("{}\n")
    raw = {
        "cluster": {"device": "cpu", "nodes": 1, "preflight": preflight, "preflight_timeout": 30},
        "python": str(bindir / "python"),
    }
    config = parse_mapping(raw, cfg)
    script = tmp_path / "job.sh"
    script.write_text(target.build(config) if target is slurm else target.build(config, 0))
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


def run(script: Path, env: dict, **extra: str) -> tuple[subprocess.CompletedProcess, str]:
    proc = subprocess.run(
        ["bash", str(script)], env={**env, **extra}, capture_output=True, text=True, timeout=60
    )
    log = Path(env["XGEN_TEST_LOG"])
    return proc, log.read_text() if log.exists() else ""


@pytest.mark.parametrize("target", [slurm, shell, accelerate], ids=["slurm", "shell", "accelerate"])
def test_preflight_failure_stops_before_the_launcher(tmp_path, target):
    script, env = make(tmp_path, target)
    proc, log = run(script, env, XGEN_TEST_PREFLIGHT_EXIT="3")
    assert proc.returncode == 3, proc.stderr
    assert "preflight -m runtime.preflight" in log and "launcher" not in log, log
    assert "xgen: preflight: " in proc.stderr and "cluster.nic: no interface eth9" in proc.stderr
    args = log.split("preflight ", 1)[1]
    assert "--timeout 30" in args and "--node-rank 0" in args and "--nnodes 1" in args, args


@pytest.mark.parametrize("target", [slurm, shell], ids=["slurm", "shell"])
def test_preflight_pass_then_launch(tmp_path, target):
    script, env = make(tmp_path, target)
    proc, log = run(script, env)
    assert proc.returncode == 0, proc.stderr
    assert log.index("preflight ") < log.index("launcher "), log


def test_slurm_preflight_is_its_own_step_and_timed(tmp_path):
    script, env = make(tmp_path, slurm)
    proc, log = run(script, env)
    steps = [line for line in log.splitlines() if line.startswith("srun ")]
    assert len(steps) == 2 and "--kill-on-bad-exit" not in steps[0] and "--kill-on-bad-exit=1" in steps[1]
    assert re.search(r"(?m)^xgen: \S+Z \S+: preflight: all 1 nodes passed in \d+ ms$", proc.stderr), (
        proc.stderr
    )


@pytest.mark.parametrize("target", [slurm, shell], ids=["slurm", "shell"])
def test_preflight_false_skips_it(tmp_path, target):
    script, env = make(tmp_path, target, preflight=False)
    proc, log = run(script, env, XGEN_TEST_PREFLIGHT_EXIT="3")
    assert proc.returncode == 0, proc.stderr
    assert "preflight " not in log and "launcher" in log


def test_hung_preflight_is_cut_off(tmp_path):
    script, env = make(tmp_path, shell)
    text = script.read_text().replace("limit=$(( XGEN_PREFLIGHT_TIMEOUT + 30 ))", "limit=1")
    script.write_text(text)
    python = tmp_path / "bin" / "python"
    python.write_text(PYTHON.replace('echo "preflight $*"', "sleep 30; echo hung"))
    proc, log = run(script, env)
    assert proc.returncode == 3 and "launcher" not in log
    assert "preflight: did not finish within 1 s" in proc.stderr


def test_config_bounds():
    from xgen.errors import XgenError

    with pytest.raises(XgenError, match="cluster.preflight_timeout"):
        parse_mapping({"cluster": {"preflight_timeout": 1}}, Path("/x.yaml"))
    with pytest.raises(XgenError, match="cluster.min_shm_gb"):
        parse_mapping({"cluster": {"min_shm_gb": -1}}, Path("/x.yaml"))


@pytest.mark.parametrize("target", [slurm, shell], ids=["slurm", "shell"])
def test_an_interpreter_without_the_runtime_is_one_line_before_anything_runs(tmp_path, target):
    """python: names an interpreter that exists but cannot import the runtime (a bare python3): one
    `xgen:` line naming it and the fix, before the preflight or the launcher, instead of Python's own
    "No module named 'runtime'"."""
    script, env = make(tmp_path, target)
    python = tmp_path / "bin" / "python"
    python.write_text(
        PYTHON.replace('== "-c import runtime" ]] && exit 0', '== "-c import runtime" ]] && exit 1')
    )
    proc, log = run(script, env)
    assert proc.returncode != 0, proc.stderr
    assert "preflight -m" not in log and "launcher " not in log, log  # neither ran
    errors = [line for line in proc.stderr.splitlines() if "error: python:" in line]
    assert len(errors) == 1 and f"'{python}' on " in errors[0] and "set python: (or --python)" in errors[0]
