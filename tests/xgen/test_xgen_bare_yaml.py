"""A bare LLaMA-Factory training YAML at the launcher, and flags that set config keys.

`xgen slurm my_lf_config.yaml --nodes 2 --partition gpu` treats the file's keys as `train:`, takes the
cluster from the flags and runs the job from the current directory; the script freezes the equivalent full
xgen config. A flag also beats a full config's value, and goes through the same checks as a file value.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from xgen_helpers import REPO, run_xgen

# LLaMA-Factory's examples/train_lora/llama3_lora_sft.yaml, model and datasets swapped for the tiny ones
# (paths relative to where the command runs, as llamafactory-cli reads them).
LLAMA3_LORA_SFT = """\
### model
model_name_or_path: model
trust_remote_code: true

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all

### dataset
dataset_dir: data
dataset: tiny_alpaca,tiny_sharegpt
template: llama3
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16
dataloader_num_workers: 4

### output
output_dir: saves/llama3-8b/lora/sft
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
save_only_model: false
report_to: none

### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000
resume_from_checkpoint: null
"""
FULL = REPO / "examples" / "gpu-2node-full-zero3.yaml"
COMMANDS = ("slurm", "submit", "shell", "deepspeed", "accelerate", "check")


@pytest.fixture
def project(tmp_path: Path, tiny_dir: Path) -> Path:
    """A LLaMA-Factory checkout's shape: model/ and data/ here, the YAML under examples/train_lora/."""
    (tmp_path / "model").symlink_to(tiny_dir / "model")
    (tmp_path / "data").symlink_to(tiny_dir / "data")
    config = tmp_path / "examples" / "train_lora" / "llama3_lora_sft.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(LLAMA3_LORA_SFT)
    return tmp_path


BARE = "examples/train_lora/llama3_lora_sft.yaml"


def frozen(script: str) -> dict:
    """The config embedded in a script (the heredoc the run directory's config.yaml is written from)."""
    match = re.search(r"<<'(XGEN_FROZEN_CONFIG_\w+)'\n(.*?)^\1$", script, re.MULTILINE | re.DOTALL)
    assert match, "no frozen config in the script"
    return yaml.safe_load(match[2])


def shell_clean(path: Path) -> None:
    syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (scripts/setup.sh installs it)")
    lint = subprocess.run(["shellcheck", "-s", "bash", str(path)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout


def test_slurm_renders_a_bare_yaml_and_freezes_the_equivalent_full_config(project):
    result = run_xgen("slurm", BARE, "--nodes", "2", "--partition", "gpu", "-o", "job.sh", cwd=project)
    assert result.returncode == 0, result.stderr
    script = (project / "job.sh").read_text()
    assert "#SBATCH --nodes=2\n" in script and "#SBATCH --partition=gpu\n" in script
    # The job runs where the command ran (where llamafactory-cli would have), not in the YAML's directory.
    assert f"#SBATCH --chdir={project}\n" in script
    assert "#SBATCH --job-name=llama3_lora_sft\n" in script
    assert "`xgen slurm CONFIG --nodes 2 --partition gpu`" in script  # the regenerate hint repeats the flags
    shell_clean(project / "job.sh")

    wrapped = {
        "job": {"name": "llama3_lora_sft", "workdir": str(project)},
        "train": yaml.safe_load(LLAMA3_LORA_SFT),
        "cluster": {"nodes": 2},
        "slurm": {"partition": "gpu"},
    }
    assert frozen(script) == wrapped
    # The frozen copy is a full xgen config in its own right, and renders the same job.
    (project / "wrapped.yaml").write_text(yaml.safe_dump(wrapped, sort_keys=False))
    again = run_xgen("slurm", "wrapped.yaml", cwd=project)
    assert again.returncode == 0, again.stderr
    assert frozen(again.stdout) == wrapped
    body = script.split("# --- frozen config ---")[0].split("\n", 1)[1]
    assert "#SBATCH --nodes=2\n#SBATCH --ntasks-per-node=1\n" in body


def test_a_bare_yaml_turns_on_runs_that_survive_from_flags(project):
    """A LLaMA-Factory user gets restarts, c10d and the hang timeout without writing a cluster: section."""
    flags = ["--nodes", "2", "--max-restarts", "2", "--rendezvous", "c10d", "--hang-timeout", "600"]
    result = run_xgen("slurm", BARE, *flags, "-o", "job.sh", cwd=project)
    assert result.returncode == 0, result.stderr
    script = (project / "job.sh").read_text()
    assert "#SBATCH --requeue\n" in script  # a lost node requeues the job
    assert "--max-restarts 2 \\\n" in script and "--rdzv-backend c10d \\\n" in script
    assert frozen(script)["cluster"] == {
        "nodes": 2,
        "max_restarts": 2,
        "rendezvous": "c10d",
        "hang_timeout": 600,
    }
    shell_clean(project / "job.sh")


def test_shell_renders_a_bare_yaml(project):
    result = run_xgen("shell", BARE, "--node-rank", "0", "--nodes", "2", "-o", "node0.sh", cwd=project)
    assert result.returncode == 0, result.stderr
    script = (project / "node0.sh").read_text()
    assert "NODE_RANK=0\n" in script
    assert frozen(script)["cluster"] == {"nodes": 2}
    assert frozen(script)["train"] == yaml.safe_load(LLAMA3_LORA_SFT)
    shell_clean(project / "node0.sh")


def test_check_prints_the_parsed_stage_and_method(project):
    result = run_xgen("check", BARE, cwd=project)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^train: +sft/lora ", result.stdout, re.MULTILINE), result.stdout
    assert f"llama3_lora_sft in {project}\n" in result.stdout
    assert "not visible" not in result.stdout  # data/ resolved from the current directory
    assert result.stdout.rstrip().endswith("ok")


@pytest.mark.parametrize("command", ["deepspeed", "accelerate"])
def test_other_generators_take_a_bare_yaml(project, command):
    args = ["--hostfile", "hostfile"] if command == "deepspeed" else ["--node-rank", "0"]
    result = run_xgen(command, BARE, *args, "--nodes", "2", "--hosts", "n0,n1", cwd=project)
    assert result.returncode == 0, result.stderr
    assert frozen(result.stdout)["cluster"] == {"nodes": 2, "hosts": ["n0", "n1"]}


@pytest.mark.parametrize("doctor", [["slurm"], ["shell", "--node-rank", "0"]])
def test_doctor_takes_a_bare_yaml(project, doctor):
    result = run_xgen("doctor", *doctor, BARE, "--nodes", "2", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "runtime.doctor" in result.stdout


def test_flags_beat_a_full_config():
    flags = ["--nodes", "4", "--partition", "debug", "--time", "01:00:00", "--job-name", "z3-test"]
    result = run_xgen("slurm", str(FULL), *flags)
    assert result.returncode == 0, result.stderr
    for line in ("--nodes=4", "--partition=debug", "--time=01:00:00", "--job-name=z3-test"):
        assert f"#SBATCH {line}\n" in result.stdout
    expected = yaml.safe_load(FULL.read_text())
    expected["cluster"]["nodes"] = 4
    expected["slurm"] = {**expected.get("slurm", {}), "partition": "debug", "time": "01:00:00"}
    expected["job"]["name"] = "z3-test"
    assert frozen(result.stdout) == expected
    # Without flags the file is the config: its exact text is frozen, comments and all.
    plain = run_xgen("slurm", str(FULL))
    assert FULL.read_text() in plain.stdout


def test_workdir_flag_is_relative_to_the_current_directory(project):
    (project / "runs").mkdir()
    result = run_xgen("slurm", BARE, "--workdir", "runs", cwd=project)
    assert result.returncode == 0, result.stderr
    assert f"#SBATCH --chdir={project / 'runs'}\n" in result.stdout
    assert frozen(result.stdout)["job"]["workdir"] == str(project / "runs")


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--nodes", "two"], "xgen: error: cluster.nodes: must be an integer, got str 'two'"),
        (["--nodes", "0"], "xgen: error: cluster.nodes: must be at least 1"),
        (["--device", "gpu"], "xgen: error: cluster.device: must be one of auto|cuda|npu|cpu"),
        (["--master-port", "port"], "xgen: error: cluster.master_port: must be an integer"),
        (["--time", "soon"], "xgen: error: slurm.time: 'soon' is not a Slurm time"),
        (["--partition", "gpu\nrm -rf /"], "xgen: error: slurm.partition: --partition holds a newline"),
    ],
)
@pytest.mark.parametrize("config", ["bare", "full"])
def test_a_bad_flag_value_is_one_line_and_writes_nothing(project, flags, line, config):
    path = BARE if config == "bare" else str(FULL)
    before = sorted(p.name for p in project.iterdir())
    result = run_xgen("slurm", path, *flags, "-o", "job.sh", cwd=project)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(line), result.stderr
    assert sorted(p.name for p in project.iterdir()) == before


def test_a_file_mixing_sections_and_training_keys_is_one_line(tmp_path):
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text("cluster:\n  nodes: 2\nmodel_name_or_path: model\nstage: sft\n")
    for args in (["slurm", str(mixed), "-o", str(tmp_path / "job.sh")], ["check", str(mixed)]):
        result = run_xgen(*args)
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith("xgen: error: model_name_or_path: a training key at the top level")
        assert "move it under train:" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed.yaml"]


def test_a_bare_yaml_names_its_bad_keys_as_written(project):
    config = project / "typo.yaml"
    config.write_text(LLAMA3_LORA_SFT.replace("lora_rank: 8", "lora_rnak: 8"))
    result = run_xgen("slurm", str(config), cwd=project)
    assert result.returncode == 2
    assert result.stderr == "xgen: error: lora_rnak: unknown key; did you mean 'lora_rank'?\n"


def test_detection_rule():
    from xgen.load import is_bare_training

    assert is_bare_training({"model_name_or_path": "m", "stage": "sft"})
    assert is_bare_training(
        {"output_dir": "out", "unknown_key": 1}
    )  # transformers' key: the runtime says which is wrong
    assert not is_bare_training({})
    assert not is_bare_training({"foo": 1})  # nothing a training YAML holds: the usual unknown-key error
    assert not is_bare_training({"train": {"stage": "sft"}})
    assert not is_bare_training({"cluster": {}, "stage": "sft"})  # mixed: refused by the loader
    assert not is_bare_training(["stage"])


@pytest.mark.parametrize("command", [*COMMANDS, "doctor slurm"])
def test_help_shows_a_bare_yaml_example(command):
    result = run_xgen(*command.split(), "--help")
    assert result.returncode == 0
    assert f"xgen {command} my_lf_config.yaml --nodes 2" in result.stdout
    assert "--nodes N" in result.stdout and "Sets cluster.nodes:" in result.stdout


def test_submit_keeps_the_equivalent_full_config(project):
    """`xgen submit` with a bare YAML: the run directory's config.yaml is the full config that runs."""
    bin_dir = project / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/usr/bin/env bash\ncp "${!#}" "$(dirname "$0")/submitted"\necho 41\n')
    (bin_dir / "sbatch").chmod(0o755)
    env = dict(os.environ, PYTHONPATH=str(REPO), PATH=f"{bin_dir}:{os.environ['PATH']}")
    argv = [sys.executable, "-m", "xgen.cli", "submit", BARE, "--nodes", "2", "--partition", "gpu"]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=project, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "41\n"
    kept = yaml.safe_load((project / "xgen-runs" / "41" / "config.yaml").read_text())
    assert kept == frozen((bin_dir / "submitted").read_text())
    assert kept["train"] == yaml.safe_load(LLAMA3_LORA_SFT) and kept["cluster"] == {"nodes": 2}
