"""`train:` has one owner, the runtime's parser: xgen parses it once (paths from the workdir), every
generator reads the parsed result, and the runtime's own check runs in `xgen check` and on each node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from xgen_helpers import REPO, run_xgen

from xgen.load import parse_mapping
from xgen.targets import accelerate

ALPACA_ROWS = [{"instruction": f"say {i}", "input": "", "output": f"{i}"} for i in range(4)]


def write_job(root: Path, train: dict, **sections) -> Path:
    """root/job.yaml running in root/run, with a model directory and an alpaca dataset `demo` there."""
    run = root / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text("{}")  # not empty: the preflight checks that
    (run / "data").mkdir()
    (run / "data" / "demo.json").write_text(json.dumps(ALPACA_ROWS))
    (run / "data" / "dataset_info.json").write_text(json.dumps({"demo": {"file_name": "demo.json"}}))
    config = {
        "job": {"name": "t", "workdir": "run"},
        "cluster": {"nodes": 1, "device": "cpu", "devices_per_node": 1},
        "python": sys.executable,
        "train": {"model_name_or_path": "model", "dataset": "demo", "output_dir": "out", **train},
        **sections,
    }
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_deepspeed_json_relative_to_workdir_passes_check_from_any_cwd(tmp_path):
    job = write_job(tmp_path / "proj", {"deepspeed": "ds.json"})
    (tmp_path / "proj" / "run" / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_xgen("check", str(job), cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert "strategy deepspeed ds.json (ZeRO-2)" in result.stdout
    # Not found in the workdir: refused, whatever the cwd holds.
    (elsewhere / "ds.json").write_text("{}")
    (tmp_path / "proj" / "run" / "ds.json").unlink()
    result = run_xgen("check", str(job), cwd=elsewhere)
    assert result.returncode == 2 and "train.deepspeed: file not found" in result.stderr


def test_fsdp_cpu_offload_reaches_the_accelerate_config(tmp_path):
    for fsdp, fsdp_config in ((True, {"cpu_offload": True}), ("full_shard offload", None), (True, None)):
        train = {"model_name_or_path": "m", "dataset": "d", "fsdp": fsdp, "fsdp_config": fsdp_config}
        config = parse_mapping({"train": train}, tmp_path / "job.yaml")
        text = accelerate.accelerate_yaml(config)
        expected = "false" if fsdp is True and fsdp_config is None else "true"
        assert f"fsdp_offload_params: {expected}\n" in text, (fsdp, fsdp_config)


def test_check_prints_the_parsed_method_and_the_port_the_scripts_use(tmp_path):
    config = {
        "cluster": {"nodes": 2, "hosts": ["n0", "n1"]},
        "train": {"model_name_or_path": "m", "dataset": "d"},  # stage and finetuning_type defaulted
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_xgen("check", str(path))
    assert result.returncode == 0, result.stderr
    assert "train:    sft/lora m, strategy ddp\n" in result.stdout
    assert "master:   n0:29500 (xgen slurm: 20000 + SLURM_JOB_ID % 20000)\n" in result.stdout


def test_check_reads_the_datasets_as_the_runtime_will(tmp_path):
    job = write_job(tmp_path / "a", {"dataset": "demo"})
    result = run_xgen("check", str(job), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "datasets: ok (1 dataset read, columns present)\n" in result.stdout

    typo = write_job(tmp_path / "b", {"dataset": "dmeo"})
    result = run_xgen("check", str(typo), cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "xgen: error: train.dataset: unknown dataset 'dmeo': not in data/dataset_info.json "
        "(known: demo) and not a file"
    ]

    column = write_job(tmp_path / "c", {})
    info = {"demo": {"file_name": "demo.json", "columns": {"prompt": "question"}}}
    (tmp_path / "c" / "run" / "data" / "dataset_info.json").write_text(json.dumps(info))
    result = run_xgen("check", str(column), cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert (
        "train.dataset: dataset 'demo' (data/demo.json): column 'question' (columns.prompt)" in result.stderr
    )

    hidden = write_job(tmp_path / "d", {"dataset_dir": "/nonexistent/shared/data"})
    result = run_xgen("check", str(hidden), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "datasets: not checked: dataset_dir /nonexistent/shared/data is not visible from" in result.stdout


def fake_python(tmp_path: Path) -> Path:
    """The job's python: prints the accelerate config instead of launching; anything else is real python."""
    script = tmp_path / "python"
    script.write_text(
        "#!/usr/bin/env bash\n"
        'if [[ "$2" == accelerate.commands.launch ]]; then cat "$4"; exit 0; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    script.chmod(0o755)
    return script


def test_accelerate_one_node_without_master_port_picks_a_free_port(tmp_path):
    job = write_job(tmp_path, {}, python=str(fake_python(tmp_path)))
    script = tmp_path / "node0.sh"
    assert run_xgen("accelerate", str(job), "-o", str(script)).returncode == 0
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    ports = [
        line.split(": ")[1] for line in result.stdout.splitlines() if line.startswith("main_process_port")
    ]
    assert len(ports) == 1 and ports[0].isdigit() and 0 < int(ports[0]) < 65536, result.stdout


def test_node_config_error_is_one_line_before_torchrun(tmp_path):
    """A column only the node can see: the runtime's check on the node says it, no launcher starts."""
    job = write_job(tmp_path, {})
    info = {"demo": {"file_name": "demo.json", "columns": {"prompt": "question"}}}
    (tmp_path / "run" / "data" / "dataset_info.json").write_text(json.dumps(info))
    script = tmp_path / "node0.sh"
    assert run_xgen("shell", str(job), "--node-rank", "0", "-o", str(script)).returncode == 0
    env = {k: v for k, v in os.environ.items() if k not in ("NODE_RANK", "MASTER_ADDR", "MASTER_PORT")}
    result = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, cwd=REPO, env=env, timeout=120
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == [
        "xgen-runtime: error: train.dataset: dataset 'demo' (data/demo.json): column 'question' "
        "(columns.prompt) not found; the file has: input, instruction, output"
    ]
    assert "ChildFailedError" not in result.stderr and "Traceback" not in result.stderr
    assert "torch.distributed" not in result.stderr


def test_several_runtime_errors_are_one_line_each(tmp_path, monkeypatch):
    """The runtime's parser may report several keys at once (a ConfigError with `.errors`)."""
    import pytest

    import runtime.config
    from runtime.commands.check import error_lines
    from runtime.config.schema import ConfigError, ConfigErrors
    from xgen.errors import XgenError

    err = ConfigErrors([ConfigError("train.a", "x"), ConfigError("train.b", "y")])
    assert error_lines(err) == ["train.a: x", "train.b: y"]

    def parse(*args, **kwargs):
        raise err

    monkeypatch.setattr(runtime.config, "parse_train_config", parse)
    with pytest.raises(XgenError) as raised:
        parse_mapping({"train": {"model_name_or_path": "m"}}, tmp_path / "job.yaml")
    assert raised.value.line() == "xgen: error: train.a: x\nxgen: error: train.b: y"


def test_check_refuses_a_fixed_deepspeed_batch_that_contradicts_the_pinned_world(tmp_path):
    """With devices pinned, the world size is known at generation: a DeepSpeed JSON whose fixed
    train_batch_size contradicts micro-batch x accumulation x world size fails here, not on every rank."""
    ds = {"train_batch_size": 16, "zero_optimization": {"stage": 2}}
    config = write_job(tmp_path, {"deepspeed": "ds.json", "per_device_train_batch_size": 2})
    (tmp_path / "run" / "ds.json").write_text(json.dumps(ds))
    data = yaml.safe_load(config.read_text())
    data["cluster"] = {**data.get("cluster", {}), "nodes": 2, "devices_per_node": 2}
    config.write_text(yaml.safe_dump(data))
    result = run_xgen("check", str(config))
    assert result.returncode == 2, result.stdout
    assert "train.deepspeed" in result.stderr and "train_batch_size" in result.stderr, result.stderr
    data["cluster"]["devices_per_node"] = 4  # 2 x 1 x 2 x 4 = 16: consistent
    config.write_text(yaml.safe_dump(data))
    result = run_xgen("check", str(config))
    assert result.returncode == 0, result.stderr
