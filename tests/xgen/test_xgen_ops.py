"""`xgen status` / `xgen logs` / `xgen cancel` against a fake scontrol/scancel and a run directory laid
out as the generated scripts and torchrun write it (the real-Slurm proof lives in tests/cluster)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from xgen_helpers import run_xgen

SCONTROL = """#!/usr/bin/env bash
echo "JobId=77 JobName=t JobState=FAILED Reason=NonZeroExitCode Restarts=0 ExitCode=1:0 WorkDir={workdir}"
"""
SCANCEL = """#!/usr/bin/env bash
echo "scancel $*" >>{workdir}/scancel.log
"""


def make_run(tmp_path: Path) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, body in {"scontrol": SCONTROL, "scancel": SCANCEL}.items():
        (bindir / name).write_text(body.format(workdir=tmp_path))
        (bindir / name).chmod(0o755)
    run = tmp_path / "xgen-runs" / "77"
    (run / "logs").mkdir(parents=True)
    (run / "config.yaml").write_text("train:\n  output_dir: saves/x\n")
    for node, node_rank in (("node0", 0), ("node1", 1)):
        (run / "logs" / f"{node}.attempt0.log").write_text(
            f"xgen: 2026-01-01T00:00:00Z {node}: device=cpu nproc_per_node=2\n"
            f"xgen: 2026-01-01T00:00:00Z {node}: node_rank={node_rank}/2 master=node0:29500\n"
            + ("[default1]:ValueError: boom on purpose\n" if node == "node1" else "")
        )
    errors = run / "logs" / "node1.attempt0.ranks" / "none_abc" / "attempt_0" / "1"
    errors.mkdir(parents=True)
    (errors / "error.json").write_text(
        json.dumps(
            {
                "message": {
                    "message": "ValueError: boom on purpose",
                    "extraInfo": {
                        "py_callstack": "Traceback ...\nValueError: boom on purpose\n",
                        "timestamp": "5",
                    },
                }
            }
        )
    )
    (errors / "stderr.log").write_text("rank 3 stderr\n")
    (errors / "stdout.log").write_text("rank 3 stdout\n")
    out = tmp_path / "saves" / "x"
    out.mkdir(parents=True)
    (out / "xgen_progress.json").write_text(
        json.dumps(
            {"step": 7, "total": 20, "loss": 1.25, "tokens_per_s": 900.0, "eta_s": 65, "phase": "training"}
        )
    )
    return {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}


def test_status_names_first_failing_node_and_rank(tmp_path, monkeypatch):
    env = make_run(tmp_path)
    monkeypatch.setenv("PATH", env["PATH"])
    result = run_xgen("status", "77")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "job 77: FAILED (exit 1:0" in out
    assert "step 7/20 | loss 1.25 | tok/s 900 | eta 0:01:05" in out
    assert "first failure: node node1, rank 3: ValueError: boom on purpose" in out
    assert "\x1b[" not in out  # plain when piped


def test_status_of_an_output_dir(tmp_path, monkeypatch):
    make_run(tmp_path)
    result = run_xgen("status", str(tmp_path / "saves" / "x"))
    assert result.returncode == 0 and "step 7/20" in result.stdout


def test_logs_by_node_and_rank_and_cancel(tmp_path, monkeypatch):
    env = make_run(tmp_path)
    monkeypatch.setenv("PATH", env["PATH"])
    both = run_xgen("logs", "77")
    assert "node_rank=0/2" in both.stdout and "node_rank=1/2" in both.stdout
    one = run_xgen("logs", "77", "--node", "node1")
    assert "node_rank=1/2" in one.stdout and "node_rank=0/2" not in one.stdout
    rank = run_xgen("logs", "77", "--rank", "3")
    assert "rank 3 stderr" in rank.stdout and "rank 3 stdout" in rank.stdout
    missing = run_xgen("logs", "77", "--rank", "9")
    assert missing.returncode == 2 and missing.stderr.startswith(
        "xgen: error: --rank: no worker logs for rank 9"
    )
    cancel = run_xgen("cancel", "77")
    assert cancel.returncode == 0 and (tmp_path / "scancel.log").read_text() == "scancel 77\n"
