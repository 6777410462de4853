"""Submit, chains and sweeps: `xgen submit [--then export]` against fake Slurm commands that
record their argv, a `sweep:` rendered as one job array (golden files, shellcheck, and the script run
with a fake srun/scontrol/python per array task), and the refusals, one line each."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xgen_helpers import REPO

from runtime.config import ConfigError, load_config

GOLDEN = REPO / "tests" / "xgen" / "golden"
REGEN = os.environ.get("XGEN_REGEN_GOLDEN") == "1"

CONFIG = """job:
  name: sw
cluster:
  device: cpu
  nodes: 1
  devices_per_node: 1
python: {python}
{extra}
train:
  model_name_or_path: m
  stage: sft
  do_train: true
  finetuning_type: lora
  dataset: d
  output_dir: out
"""
SWEEP = """sweep:
  learning_rate: [1.0e-4, 3.0e-4]
  lora_target: ["q_proj,v_proj", "all"]
slurm:
  array_limit: 2
"""

# Fake Slurm client: each call appends its argv (one line) to $XGEN_TEST_OUT/calls; sbatch answers
# the next job id from a counter (41, 42, …) and fails when its script holds $XGEN_TEST_SBATCH_FAIL.
FAKE_SLURM = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >>"$XGEN_TEST_OUT/calls"
if [[ "$(basename "$0")" == sbatch ]]; then
  script=${!#}
  if [[ -n "${XGEN_TEST_SBATCH_FAIL:-}" ]] && grep -q -- "$XGEN_TEST_SBATCH_FAIL" "$script"; then
    echo "sbatch: error: Batch job submission failed: Invalid partition name specified" >&2
    exit 1
  fi
  cp "$script" "$XGEN_TEST_OUT/submitted-$(wc -l <"$XGEN_TEST_OUT/calls")"
  echo $(( 40 + $(grep -c '^sbatch' "$XGEN_TEST_OUT/calls") ))
fi
"""
# Runs the batch script's node part where it is (srun), one node (scontrol); python records what the
# runtime would read: the sweep row of this array task.
SRUN = """#!/usr/bin/env bash
while [[ $# -gt 0 && "$1" != bash ]]; do shift; done
exec "$@"
"""
SCONTROL = """#!/usr/bin/env bash
if [[ "$1 $2" == "show hostnames" ]]; then echo localhost; fi
"""
PYTHON = """#!/usr/bin/env bash
[[ "${1:-} ${2:-}" == "-c import runtime" ]] && exit 0  # xgen_check_python: the runtime imports
case "$1 $2 $3" in "-m runtime check" | "-m runtime.preflight "*) exit 0 ;; esac
if [[ "$1" == -c ]]; then echo 29511; exit 0; fi
echo "$XGEN_TRAIN_OVERRIDES" >"$XGEN_TEST_OUT/overrides"
"""


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def setup(tmp_path: Path, extra: str = "", fake: dict[str, str] | None = None) -> tuple[Path, dict[str, str]]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, body in (fake or {"srun": SRUN, "scontrol": SCONTROL, "python": PYTHON}).items():
        write(bindir / name, body, 0o755)
    (tmp_path / "rec").mkdir()
    cfg = write(tmp_path / "job.yaml", CONFIG.format(python=bindir / "python", extra=extra))
    env = {**os.environ, "PATH": f"{bindir}:/usr/bin:/bin", "XGEN_TEST_OUT": str(tmp_path / "rec")}
    return cfg, env


def xgen(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The CLI in a subprocess (as xgen_helpers.run_xgen), with this test's PATH of fakes."""
    return subprocess.run(
        [sys.executable, "-m", "xgen.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**(env or os.environ), "PYTHONPATH": str(REPO)},
        timeout=120,
    )


# --- sweep ---


def test_sweep_renders_one_array_whose_tasks_pick_their_row(tmp_path):
    cfg, env = setup(tmp_path, SWEEP)
    result = xgen("slurm", str(cfg))
    assert result.returncode == 0, result.stderr
    script = write(tmp_path / "job.sh", result.stdout, 0o755)
    assert "#SBATCH --array=0-3%2\n" in result.stdout
    names = [
        "sweep-0-learning_rate=0.0001-lora_target=q_proj_v_proj",
        "sweep-1-learning_rate=0.0001-lora_target=all",
        "sweep-2-learning_rate=0.0003-lora_target=q_proj_v_proj",
        "sweep-3-learning_rate=0.0003-lora_target=all",
    ]
    values = [(1e-4, "q_proj,v_proj"), (1e-4, "all"), (3e-4, "q_proj,v_proj"), (3e-4, "all")]
    job = {"SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "localhost", "SLURM_NODEID": "0"}
    for task in (3, 0):  # each array task: its own job id, its own row, its own run directory
        task_env = {**env, **job, "SLURM_JOB_ID": str(100 + task), "SLURM_ARRAY_JOB_ID": "99"}
        run = subprocess.run(
            ["bash", str(script)],
            env={**task_env, "SLURM_ARRAY_TASK_ID": str(task), "TMPDIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
        row = json.loads((tmp_path / "rec" / "overrides").read_text())
        lr, target = values[task]
        assert row == {"learning_rate": lr, "lora_target": target, "output_dir": f"out/{names[task]}"}
        run_dir = tmp_path / "xgen-runs" / f"99_{task}"
        assert json.loads((run_dir / "sweep-task.json").read_text()) == row
        assert (run_dir / "config.yaml").read_bytes() == cfg.read_bytes()
    # Outside an array (or past its end) the script stops with one line, before anything runs.
    for task_id, why in (("", "not a task of a job array"), ("4", "the sweep has 4 tasks (0-3)")):
        run = subprocess.run(
            ["bash", str(script)],
            env={
                **env,
                **job,
                "SLURM_JOB_ID": "7",
                "SLURM_ARRAY_JOB_ID": "7",
                "SLURM_ARRAY_TASK_ID": task_id,
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 1 and why in run.stderr, run.stderr


def test_sweep_rows_are_quoted_data_not_shell(tmp_path):
    """A value with shell syntax reaches the runtime byte for byte, and nothing runs."""
    nasty = "$(touch pwned)`id`'\"; x"
    cfg, env = setup(tmp_path, "sweep:\n  run_name: " + json.dumps([nasty, "plain"]) + "\n")
    result = xgen("slurm", str(cfg))
    assert result.returncode == 0, result.stderr
    script = write(tmp_path / "job.sh", result.stdout, 0o755)
    job = {"SLURM_JOB_ID": "5", "SLURM_ARRAY_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "0", "SLURM_NODEID": "0"}
    job |= {"SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "localhost", "TMPDIR": str(tmp_path)}
    run = subprocess.run(
        ["bash", str(script)], env={**env, **job}, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "rec" / "overrides").read_text())["run_name"] == nasty
    assert not (tmp_path / "pwned").exists()


def test_bad_sweep_is_one_line_per_key_and_exit_2(tmp_path):
    extra = """sweep:
  learnin_rate: [1.0e-4]
  lora_rank: [8, eight]
  warmup_steps: []
  output_dir: [a, b]
  seed: [1, 1]
"""
    cfg, _ = setup(tmp_path, extra)
    result = xgen("slurm", str(cfg))
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert [line.split(":")[2].strip() for line in lines] == [
        "sweep.warmup_steps",
        "sweep.output_dir",
        "sweep.seed",
        "sweep.learnin_rate",
        "sweep.lora_rank",
    ], lines
    assert "did you mean 'learning_rate'?" in lines[3]
    assert "value 'eight'" in lines[4]
    assert all(line.startswith("xgen: error: ") for line in lines)


@pytest.mark.parametrize(
    "extra,line",
    [
        (
            "slurm:\n  array_limit: 2\n",
            "xgen: error: slurm.array_limit: limits the tasks of a sweep: add a sweep: section or remove it",
        ),
        (
            "sweep:\n  seed: [1, 2]\nslurm:\n  array_limit: 0\n",
            "xgen: error: slurm.array_limit: must be at least 1, got 0",
        ),
        (
            "sweep:\n  seed: "
            + json.dumps(list(range(40)))
            + "\n  lora_rank: "
            + json.dumps(list(range(1, 30))),
            "xgen: error: sweep: 1160 combinations; Slurm's default MaxArraySize allows 1001 array tasks: "
            "list fewer values",
        ),
    ],
)
def test_sweep_refusals(tmp_path, extra, line):
    cfg, _ = setup(tmp_path, extra)
    result = xgen("slurm", str(cfg))
    assert (result.returncode, result.stderr.strip()) == (2, line)


def test_other_generators_refuse_a_sweep_and_doctor_ignores_it(tmp_path):
    cfg, _ = setup(tmp_path, SWEEP)
    result = xgen("shell", str(cfg), "--node-rank", "0")
    assert result.returncode == 2
    assert result.stderr.startswith("xgen: error: sweep: a sweep is one Slurm job array: render it with")
    doctor = xgen("doctor", "slurm", str(cfg))
    assert doctor.returncode == 0, doctor.stderr
    assert "--array" not in doctor.stdout and "XGEN_SWEEP_ROWS" not in doctor.stdout


# --- golden files: the array script and the export job ---


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if REGEN:
        path.write_text(text)
    assert path.exists(), f"no golden file {path.name}; regenerate with XGEN_REGEN_GOLDEN=1"
    assert text == path.read_text(), f"{path.name} changed; review the diff, then regenerate"


def fixed(tmp_path: Path, extra: str):
    import dataclasses

    from xgen.load import load_config as load_xgen

    cfg = write(tmp_path / "job.yaml", CONFIG.format(python="/shared/venv/bin/python", extra=extra))
    return dataclasses.replace(load_xgen(cfg), source=Path("/cluster/xgen/examples/sweep.yaml"))


@pytest.mark.parametrize("kind", ["submit-sweep.slurm", "submit-export"])
def test_golden_and_shellcheck(tmp_path, monkeypatch, kind):
    from xgen.targets import slurm

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    if kind == "submit-sweep.slurm":
        text = slurm.build(fixed(tmp_path, SWEEP))
    else:
        text = slurm.build_export(fixed(tmp_path, "slurm:\n  setup: [module load cuda]\n"), "4242")
    golden(f"{kind}.sh", text)
    script = write(tmp_path / "job.sh", text)
    subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (scripts/setup.sh installs it)")
    result = subprocess.run(["shellcheck", "-s", "bash", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


# --- submit, with fake sbatch/scontrol/scancel ---


def slurm_fakes() -> dict[str, str]:
    return {name: FAKE_SLURM for name in ("sbatch", "scontrol", "scancel")}


def calls(tmp_path: Path) -> list[str]:
    path = tmp_path / "rec" / "calls"
    return path.read_text().splitlines() if path.exists() else []


def test_submit_keeps_script_and_config_and_prints_the_id(tmp_path):
    cfg, env = setup(tmp_path, fake=slurm_fakes())
    result = xgen("submit", str(cfg), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "41\n"
    assert "xgen: submitted training job 41; kept in " in result.stderr
    run_dir = tmp_path / "xgen-runs" / "41"
    assert (run_dir / "config.yaml").read_bytes() == cfg.read_bytes()
    assert stat.S_IMODE((run_dir / "config.yaml").stat().st_mode) == 0o600
    assert (run_dir / "job.sh").read_text() == (tmp_path / "rec" / "submitted-1").read_text()
    assert [c.split()[:2] for c in calls(tmp_path)] == [["sbatch", "--parsable"]]
    assert not list((tmp_path / "xgen-runs").glob(".submit-*"))  # the temp script is gone


def test_submit_then_export_chains_held_then_released(tmp_path):
    cfg, env = setup(tmp_path, fake=slurm_fakes())
    result = xgen("submit", str(cfg), "--then", "export", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "41\n42\n"
    seen = calls(tmp_path)
    assert seen[0].startswith("sbatch --parsable --hold ") and seen[1].startswith("sbatch --parsable ")
    assert seen[2] == "scontrol release 41"
    export = (tmp_path / "xgen-runs" / "42" / "job.sh").read_text()
    assert "#SBATCH --dependency=afterok:41\n#SBATCH --kill-on-invalid-dep=yes\n" in export
    assert "#SBATCH --job-name=sw-export\n#SBATCH --nodes=1\n" in export
    row = '{"adapter_name_or_path": "out", "export_dir": "out/merged"}'
    assert f"export XGEN_TRAIN_OVERRIDES='{row}'" in export
    assert '"$PYTHON" -m runtime export "$XGEN_CONFIG"' in export


def test_a_failed_export_submission_cancels_the_held_training(tmp_path):
    cfg, env = setup(tmp_path, fake=slurm_fakes())
    result = xgen("submit", str(cfg), "--then", "export", env={**env, "XGEN_TEST_SBATCH_FAIL": "afterok"})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == (
        "xgen: error: sbatch: sbatch: error: Batch job submission failed: Invalid partition name specified; "
        "cancelled the held training job 41"
    )
    assert calls(tmp_path)[-1] == "scancel 41"


@pytest.mark.parametrize(
    "extra,message",
    [
        ("sweep:\n  seed: [1, 2]\n", "export after a sweep is not supported yet"),
        ("", "export merges a LoRA adapter, but train.finetuning_type is full"),
    ],
)
def test_then_export_refusals_submit_nothing(tmp_path, extra, message):
    cfg, env = setup(tmp_path, extra, fake=slurm_fakes())
    if not extra:
        cfg.write_text(cfg.read_text().replace("finetuning_type: lora", "finetuning_type: full"))
    result = xgen("submit", str(cfg), "--then", "export", env=env)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1
    assert calls(tmp_path) == []


def test_submit_without_sbatch_is_one_line(tmp_path):
    cfg, env = setup(tmp_path, fake={})
    result = xgen("submit", str(cfg), env={**env, "PATH": str(tmp_path / "bin")})
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "xgen: error: sbatch: sbatch not found; run xgen submit on a Slurm login node"
    )


# --- the runtime side: XGEN_TRAIN_OVERRIDES over train: ---


def test_runtime_reads_train_overrides(tmp_path, monkeypatch):
    cfg = write(tmp_path / "job.yaml", CONFIG.format(python="python3", extra=""))
    monkeypatch.setenv("XGEN_TRAIN_OVERRIDES", '{"learning_rate": 0.0003, "output_dir": "out/sweep-1"}')
    loaded = load_config(cfg)
    assert (loaded.learning_rate, loaded.output_dir) == (0.0003, "out/sweep-1")
    assert any("XGEN_TRAIN_OVERRIDES" in note and "learning_rate=0.0003" in note for note in loaded.notes)
    monkeypatch.setenv("XGEN_TRAIN_OVERRIDES", "[1]")
    with pytest.raises(ConfigError, match="XGEN_TRAIN_OVERRIDES: must be a JSON object"):
        load_config(cfg)
    monkeypatch.setenv("XGEN_TRAIN_OVERRIDES", '{"lora_rank": "eight"}')
    with pytest.raises(ConfigError, match="train.lora_rank"):
        load_config(cfg)


# --- xgen status of an array job ---

ARRAY_SCONTROL = """#!/usr/bin/env bash
w={workdir}
echo "JobId=51 ArrayJobId=50 ArrayTaskId=1 JobName=sw JobState=RUNNING ExitCode=0:0 WorkDir=$w"
echo "JobId=50 ArrayJobId=50 ArrayTaskId=2-3 JobName=sw JobState=PENDING ExitCode=0:0 WorkDir=$w"
echo "JobId=52 ArrayJobId=50 ArrayTaskId=0 JobName=sw JobState=COMPLETED ExitCode=0:0 WorkDir=$w"
"""


def test_status_of_an_array_job_is_one_line_per_task(tmp_path):
    cfg, env = setup(tmp_path, fake={"scontrol": ARRAY_SCONTROL.format(workdir=tmp_path)})
    run_dir = tmp_path / "xgen-runs" / "50_1"
    run_dir.mkdir(parents=True)
    (run_dir / "sweep-task.json").write_text('{"seed": 2, "output_dir": "out/sweep-1-seed=2"}\n')
    out = tmp_path / "out" / "sweep-1-seed=2"
    out.mkdir(parents=True)
    (out / "xgen_progress.json").write_text(json.dumps({"step": 3, "total": 10, "phase": "training"}))
    result = xgen("status", "50", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "array job 50: 3 task records (xgen status 50_N for one)",
        "task 0: COMPLETED (job 52, exit 0:0)",
        f"task 1: RUNNING (job 51, exit 0:0) | {out} | step 3/10 | (training, updated ?)",
        "task 2-3: PENDING (job 50, exit 0:0)",
    ]


def test_check_names_the_sweep(tmp_path):
    cfg, _ = setup(tmp_path, SWEEP)
    result = xgen("check", str(cfg))
    assert result.returncode == 0, result.stderr
    assert (
        "sweep:    4 array tasks (--array=0-3%2) over learning_rate (2) x lora_target (2); "
        "task 0 -> out/sweep-0-learning_rate=0.0001-lora_target=q_proj_v_proj\n"
    ) in result.stdout


@settings(max_examples=30, deadline=None)
@given(
    values=st.lists(
        st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=30),
        min_size=1,
        max_size=3,
        unique=True,
    )
)
def test_any_sweep_value_reaches_the_runtime_byte_for_byte(values):
    """The rendered table, read back by bash: every row is the task's JSON, whatever the text."""
    from xgen.load import parse_mapping
    from xgen.sweep import tasks
    from xgen.targets import slurm

    raw = {
        "cluster": {"device": "cpu"},
        "sweep": {"run_name": values},
        "train": {"model_name_or_path": "m", "dataset": "d"},
    }
    config = parse_mapping(raw, Path("/cluster/xgen/job.yaml"))
    text = slurm.build(config)
    table = text[text.index("XGEN_SWEEP_ROWS=(") : text.index("\n)\n") + 3]
    read = subprocess.run(
        ["bash", "-c", table + 'printf "%s\\0" "${XGEN_SWEEP_ROWS[@]}"'], capture_output=True, timeout=30
    )
    assert read.returncode == 0, read.stderr
    rows = read.stdout.decode().split("\0")[:-1]
    assert rows == [task.row for task in tasks(config)]
    assert [json.loads(row)["run_name"] for row in rows] == values
