"""`xgen status` / `xgen logs` without Slurm: a run id, a run directory or an output_dir, and a hand-run
job whose nodes each wrote their own run directory. The run directories are the real ones: generated
`xgen shell` scripts run with a fake python (preflight, launch) and a fake hostname per node."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from xgen_helpers import run_xgen

# The checks pass unless FAIL_PREFLIGHT; the launch (torch.distributed.run) prints a line, and with
# FAIL_MESSAGE writes local rank 0's logs and error.json under --log-dir, as torchrun does, and fails.
PYTHON = """#!/usr/bin/env bash
[[ "${1:-} ${2:-}" == "-c import runtime" ]] && exit 0  # xgen_check_python: the runtime imports
case "$1 $2 $3" in "-m runtime check") exit 0 ;; esac
if [[ "$1 $2" == "-m runtime.preflight" ]]; then
  [[ -z "${FAIL_PREFLIGHT:-}" ]] && exit 0
  echo "xgen: preflight: $(hostname): /dev/shm: warning: 1 GB is small" >&2
  echo "xgen: preflight: $(hostname): cluster.nic: no interface eth9; set cluster.nic" >&2
  echo "xgen: preflight: $(hostname): versions: torch 2.5 here, 2.4 on nodea; install one" >&2
  echo "xgen: preflight: $(hostname): stopping before training: 2 problem(s) here (exit 3)" >&2
  exit 3
fi
if [[ "$1" == -c ]]; then echo 29511; exit 0; fi
echo "worker on $(hostname) says hi"
[[ -z "${FAIL_MESSAGE:-}" ]] && exit 0
while [[ "$1" != --log-dir ]]; do shift; done
worker="$2/none_abc/attempt_0/0"
mkdir -p "$worker"
echo "stdout of $(hostname)" >"$worker/stdout.log"
echo "stderr of $(hostname)" >"$worker/stderr.log"
fmt='{"message": {"message": "%s", "extraInfo": '
fmt+='{"py_callstack": "Traceback\\\\n%s\\\\n", "timestamp": "%s"}}}'
printf "$fmt" \
  "$FAIL_MESSAGE" "$FAIL_MESSAGE" "$FAIL_AT" >"$worker/error.json"
echo "[default0]:$FAIL_MESSAGE"
exit 1
"""
HOSTNAME = """#!/usr/bin/env bash
echo "$FAKE_HOST"
"""
CONFIG = """job:
  name: hand
cluster:
  device: cpu
  nodes: 2
  devices_per_node: 1
  master_addr: 10.0.0.1
python: {python}
train:
  model_name_or_path: m
  dataset: d
  output_dir: saves/x
"""


def make_job(tmp_path: Path) -> Path:
    """job.yaml and one script per node (node0.sh, node1.sh) in tmp_path, the job's workdir."""
    bindir = tmp_path / "bin"
    bindir.mkdir(parents=True)
    for name, body in {"python": PYTHON, "hostname": HOSTNAME}.items():
        (bindir / name).write_text(body)
        (bindir / name).chmod(0o755)
    cfg = tmp_path / "job.yaml"
    cfg.write_text(CONFIG.format(python=bindir / "python"))
    for rank in (0, 1):
        result = run_xgen("shell", str(cfg), "--node-rank", str(rank), "-o", str(tmp_path / f"node{rank}.sh"))
        assert result.returncode == 0, result.stderr
    return tmp_path


def run_node(workdir: Path, rank: int, host: str, **env: str) -> Path:
    """Run one node's script as `host`; its new run directory."""
    before = set((workdir / "xgen-runs").glob("*")) if (workdir / "xgen-runs").is_dir() else set()
    run = subprocess.run(
        ["bash", str(workdir / f"node{rank}.sh")],
        env={"PATH": f"{workdir / 'bin'}:/usr/bin:/bin", "HOME": str(workdir), "FAKE_HOST": host, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode in (0, 1, 3), run.stderr
    (new,) = set((workdir / "xgen-runs").glob("*")) - before
    return new


def status(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_xgen("status", *args, cwd=cwd)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xgen: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_two_nodes_run_dirs_are_one_job(tmp_path):
    workdir = make_job(tmp_path)
    node_a = run_node(workdir, 0, "nodea")
    node_b = run_node(workdir, 1, "nodeb")
    assert node_a.name.endswith(f"-nodea-{node_a.name.rsplit('-', 1)[1]}") and node_a != node_b
    # a run id, a run directory, a prefix; an all-digit prefix is tried in Slurm first (it does not know it)
    for target in (node_a.name, node_b.name, str(node_b), node_a.name[:10], node_a.name[:8]):
        result = status(target, cwd=workdir)
        assert result.returncode == 0, result.stderr
        assert "one hand-run job: 2 run directories, one per node, with the same config" in result.stdout
        assert node_a.name in result.stdout
        assert node_b.name in result.stdout
        assert "no progress yet" in result.stdout
    logs = run_xgen("logs", node_a.name, cwd=workdir)
    assert logs.returncode == 0, logs.stderr
    assert f"==> node nodea: xgen-runs/{node_a.name}/logs/nodea.attempt0.log <==" in logs.stdout
    headers = [line for line in logs.stdout.splitlines() if line.startswith("==> ")]
    assert [h.split(":")[0] for h in headers] == ["==> node nodea", "==> node nodeb"]
    assert headers[1].endswith("nodeb.attempt0.log <==")
    assert "worker on nodea says hi" in logs.stdout and "worker on nodeb says hi" in logs.stdout
    one = run_xgen("logs", node_a.name, "--node", "nodeb", cwd=workdir)
    assert "worker on nodeb says hi" in one.stdout and "worker on nodea" not in one.stdout
    # nodea again: a rerun, not a third node of the same job
    again = run_node(workdir, 0, "nodea")
    result = status(again.name, cwd=workdir)
    assert result.returncode == 0 and "one hand-run job" not in result.stdout
    assert f"run {again.name}" in result.stdout


def test_a_run_id_from_another_directory_and_unknown_ids(tmp_path):
    workdir = make_job(tmp_path)
    node_a = run_node(workdir, 0, "nodea")
    result = status(node_a.name, "--workdir", str(workdir), cwd=tmp_path / "bin")
    assert result.returncode == 0 and f"run {node_a.name}" in result.stdout
    line = one_error_line(status("19990101T000000Z-x-1", cwd=workdir))
    assert f"newest: {node_a.name}" in line and "pass a Slurm job id, a run id" in line
    line = one_error_line(status(node_a.name, cwd=tmp_path / "bin"))
    assert "xgen-runs; run this in the job's workdir or pass" in line
    assert "no such directory" in one_error_line(run_xgen("logs", str(tmp_path / "nope" / "x")))
    neither = tmp_path / "empty"
    neither.mkdir()
    assert "neither a run directory" in one_error_line(status(str(neither), cwd=workdir))
    assert "a workdir; pass one of its runs" in one_error_line(status(str(workdir), cwd=tmp_path))
    assert "no log for 'nodez'" in one_error_line(
        run_xgen("logs", node_a.name, "--node", "nodez", cwd=workdir)
    )


def test_output_dir_finds_its_runs(tmp_path):
    workdir = make_job(tmp_path)
    node_a = run_node(workdir, 0, "nodea")
    node_b = run_node(workdir, 1, "nodeb")
    out = workdir / "saves" / "x"
    out.mkdir(parents=True)
    # from the workdir by its relative name, and from elsewhere by its absolute path (found via parents)
    for target, cwd in (("saves/x", workdir), (str(out), Path("/"))):
        result = status(target, cwd=cwd)
        assert result.returncode == 0, result.stderr
        assert f"output_dir {target}" in result.stdout
        assert "one hand-run job: 2 run directories" in result.stdout
        assert node_a.name in result.stdout and node_b.name in result.stdout
        assert f"no progress yet: no xgen_progress.json in {target}" in result.stdout
    (out / "xgen_progress.json").write_text(json.dumps({"step": 3, "total": 9, "phase": "training"}))
    result = status(str(out), cwd=workdir)
    assert "step 3/9" in result.stdout
    logs = run_xgen("logs", "saves/x", cwd=workdir)
    assert "worker on nodea says hi" in logs.stdout and "worker on nodeb says hi" in logs.stdout


def test_a_preflight_failed_run_says_its_line(tmp_path):
    workdir = make_job(tmp_path)
    run_node(workdir, 0, "nodea")
    node_b = run_node(workdir, 1, "nodeb", FAIL_PREFLIGHT="1")
    result = status(node_b.name, cwd=workdir)
    assert result.returncode == 0, result.stderr
    failures = [line for line in result.stdout.splitlines() if "node nodeb" in line]
    assert failures == [
        "first failure: node nodeb: xgen: preflight: nodeb: versions: torch 2.5 here, 2.4 on nodea; "
        f"install one (+1 more: xgen logs {node_b.name} --node nodeb)"
    ]
    assert "warning" not in result.stdout and "xgen_progress.json here" not in result.stdout
    # one node alone, with no progress and nothing failed: its last line, never just "no progress"
    alone = make_job(tmp_path / "alone")
    node = run_node(alone, 0, "nodec")
    result = status(str(node), cwd=alone)
    assert "node nodec, last line: worker on nodec says hi" in result.stdout


def test_error_json_names_the_first_failure(tmp_path):
    workdir = make_job(tmp_path)
    run_node(workdir, 0, "nodea", FAIL_MESSAGE="RuntimeError: peer went away", FAIL_AT="9")
    node_b = run_node(workdir, 1, "nodeb", FAIL_MESSAGE="ValueError: boom on purpose", FAIL_AT="5")
    result = status(str(node_b), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "first failure: node nodeb, rank 1: ValueError: boom on purpose" in result.stdout
    rank = run_xgen("logs", node_b.name, "--rank", "1", cwd=workdir)
    assert rank.returncode == 0, rank.stderr
    assert "stderr of nodeb" in rank.stdout and "stdout of nodeb" in rank.stdout
    assert "==> node nodeb, rank 1: " in rank.stdout
    assert "no worker logs for rank 7" in one_error_line(
        run_xgen("logs", node_b.name, "--rank", "7", cwd=workdir)
    )


def test_no_slurm_installed_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # no scontrol, no sacct
    for command in ("status", "logs"):
        line = one_error_line(run_xgen(command, "4242", cwd=tmp_path))
        assert line.startswith(
            "xgen: error: 4242: Slurm is not installed here (no scontrol or sacct on PATH), and no"
        )
        assert "pass a Slurm job id, a run id from xgen-runs/" in line
    # a Slurm run directory copied to a machine without Slurm: read alone
    run = tmp_path / "xgen-runs" / "4242"
    (run / "logs").mkdir(parents=True)
    (run / "config.yaml").write_text("train:\n  output_dir: saves/y\n")
    (run / "logs" / "n1.attempt0.log").write_text(
        "xgen: 2026-01-01T00:00:00Z n1: error: config /x not found on n1: keep it on a shared filesystem\n"
    )
    result = status("4242", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Slurm is not installed here: the run directory alone" in result.stdout
    assert (
        "first failure: node n1: xgen: 2026-01-01T00:00:00Z n1: error: config /x not found" in result.stdout
    )


def test_a_job_slurm_forgot_falls_back_to_its_run_directory(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("scontrol", "sacct"):
        (bindir / name).write_text("#!/usr/bin/env bash\nexit 1\n")
        (bindir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    line = one_error_line(status("777", cwd=tmp_path))
    assert line.startswith("xgen: error: 777: no such job in scontrol or sacct, and no xgen-runs/777")
    (tmp_path / "xgen-runs" / "777" / "logs").mkdir(parents=True)
    result = status("777", cwd=tmp_path)
    assert result.returncode == 0 and "scontrol and sacct do not know job 777" in result.stdout
    assert "it has not started" in result.stdout


def test_an_older_run_is_not_shown_a_later_runs_progress(tmp_path):
    """The output_dir's progress file names the run that wrote it; asked about another run, status says
    whose progress it is instead of passing it off as the asked run's."""
    workdir = make_job(tmp_path)
    old = run_node(workdir, 0, "nodea")
    out = workdir / "saves" / "x"
    out.mkdir(parents=True)
    progress = {"step": 7, "total": 9, "phase": "training", "run": "20991231T000000Z-nodez-1"}
    (out / "xgen_progress.json").write_text(json.dumps(progress))
    result = status(old.name, cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "now holds run 20991231T000000Z-nodez-1's progress: step 7/9" in result.stdout, result.stdout
    progress["run"] = old.name  # its own progress
    (out / "xgen_progress.json").write_text(json.dumps(progress))
    result = status(old.name, cwd=workdir)
    assert "step 7/9" in result.stdout and "now holds run" not in result.stdout, result.stdout
