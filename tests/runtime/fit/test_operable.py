"""What ran, at runtime level: the resolved training config in output_dir (credentials redacted), and
torch.distributed.run's summary showing the failing rank's real traceback (elastic `record`)."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest
import yaml
from trainer_harness import base_config, run_inprocess, run_torchrun, write_config

from runtime.fit.outputs import RESOLVED_CONFIG, redact_keys


def test_redact_masks_credential_keys_only() -> None:
    data = {"hub_token": "hf_abc", "lr": 1, "nested": {"api_key": "k", "password": None, "name": "x"}}
    assert redact_keys(data) == {
        "hub_token": "***",
        "lr": 1,
        "nested": {"api_key": "***", "password": None, "name": "x"},
    }


def test_resolved_config_has_every_key_after_translation(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    monkeypatch.setenv("XGEN_RUN_DIR", str(tmp_path / "xgen-runs" / "4242"))  # as a script exports it
    # LLaMA-Factory spelling in, resolved name and default values out.
    cfg = base_config(tiny_dir, out, max_steps=1, deepspeed="z2")
    assert run_inprocess(write_config(tmp_path / "cfg.yaml", cfg)) == 0
    path = out / RESOLVED_CONFIG
    resolved = yaml.safe_load(path.read_text())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert resolved["max_steps"] == 1
    assert resolved["model_name_or_path"] == str(tiny_dir / "model")
    assert "lora_alpha" in resolved and "save_strategy" in resolved  # defaults, not only what was written
    assert resolved["deepspeed_config_resolved"]["zero_optimization"]["stage"] == 2
    # The progress file `xgen status` reads.
    progress = json.loads((out / "xgen_progress.json").read_text())
    assert (progress["step"], progress["total"], progress["phase"]) == (1, 1, "done")
    assert progress["run"] == "4242"  # whose progress it is (xgen status RUNID)
    assert progress["loss"] > 0 and progress["tokens_per_s"] > 0


def test_failing_rank_traceback_reaches_the_launcher_summary(tiny_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "broken-model"
    shutil.copytree(tiny_dir / "model", model)
    (model / "model.safetensors").write_bytes(b"not a safetensors file")
    cfg = base_config(tiny_dir, tmp_path / "out", model_name_or_path=str(model), max_steps=1)
    result = run_torchrun(write_config(tmp_path / "cfg.yaml", cfg), tmp_path, nproc=1)
    assert result.returncode != 0
    assert "To enable traceback see" not in result.stderr, result.stderr[-3000:]
    # The root-cause section names the rank and carries the worker's own traceback.
    assert "Root Cause (first observed failure)" in result.stderr
    assert "Traceback (most recent call last)" in result.stderr.split("Root Cause")[-1], result.stderr[-3000:]


def test_world_problem_names_what_differs() -> None:
    from runtime.contract.expected_world import world_problem

    env = {"XGEN_EXPECT_NNODES": "2", "XGEN_EXPECT_WORLD_SIZE": "4"}
    assert world_problem(4, ["a", "a", "b", "b"], env) is None
    assert "joined 1 node(s) (a) with world size 2, but cluster.nodes is 2" in world_problem(
        2, ["a", "a"], env
    )
    assert "devices_per_node is 4" in world_problem(3, ["a", "a", "b"], env)
    assert world_problem(1, ["a"], {}) is None  # no expectation: a bare `xgen-runtime train`


def test_runtime_refuses_a_smaller_world_than_asked(
    tiny_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("XGEN_EXPECT_NNODES", "2")
    out = tmp_path / "out"
    assert run_inprocess(write_config(tmp_path / "cfg.yaml", base_config(tiny_dir, out, max_steps=1))) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and err[0].startswith("xgen-runtime: error: world: joined 1 node(s)"), err
    assert not (out / "model.safetensors").exists()
