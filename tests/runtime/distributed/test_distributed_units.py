"""Pieces of runtime.distributed that need no second process."""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import pytest
import torch

from runtime import distributed
from runtime.config import ConfigError, parse_train_config

BASE = {"model_name_or_path": "m", "dataset": "d"}


def test_npu_absent_is_false() -> None:
    assert distributed.is_npu_available() is False


def test_broken_torch_npu_install_is_not_fatal(monkeypatch) -> None:
    """torch_npu present but its libraries missing (findings §6): detection says False, no crash."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "torch_npu" else real(name, *a)
    )
    monkeypatch.setitem(sys.modules, "torch_npu", None)  # import raises ImportError
    assert distributed.is_npu_available() is False


def test_working_torch_npu_is_detected(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "torch_npu" else real(name, *a)
    )
    monkeypatch.setitem(sys.modules, "torch_npu", types.ModuleType("torch_npu"))
    monkeypatch.setattr(torch, "npu", types.SimpleNamespace(is_available=lambda: True), raising=False)
    assert distributed.is_npu_available() is True
    monkeypatch.delenv("XGEN_DEVICE", raising=False)
    assert distributed.detect_device(parse_train_config(BASE)) == "npu"


def test_xgen_device_wins_and_is_checked(monkeypatch, capsys) -> None:
    monkeypatch.setenv("XGEN_DEVICE", "cpu")
    assert distributed.detect_device(parse_train_config(BASE)) == "cpu"
    # Devices the script found but this python cannot use: CPU, with a warning naming the cause.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("XGEN_DEVICE", "cuda")
    assert distributed.detect_device(parse_train_config(BASE)) == "cpu"
    assert "XGEN_DEVICE=cuda but torch.cuda.is_available() is False" in capsys.readouterr().err
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.setenv("XGEN_DEVICE", "npu")
    assert distributed.detect_device(parse_train_config(BASE)) == "cpu"
    assert "XGEN_DEVICE=npu but torch_npu is missing" in capsys.readouterr().err
    monkeypatch.setenv("XGEN_DEVICE", "tpu")
    with pytest.raises(ConfigError, match="must be one of"):
        distributed.detect_device(parse_train_config(BASE))


def test_offload_on_cpu_uses_torch_adamw() -> None:
    ds = parse_train_config({**BASE, "deepspeed": "z3_offload"}).deepspeed_config
    fixed, note = distributed.deepspeed_for_device(ds, "cpu")
    assert fixed["zero_force_ds_cpu_optimizer"] is False and "zero_force_ds_cpu_optimizer=false" in note
    assert distributed.deepspeed_for_device(ds, "cuda") == (ds, None)
    plain = parse_train_config({**BASE, "deepspeed": "z3"}).deepspeed_config
    assert distributed.deepspeed_for_device(plain, "cpu") == (plain, None)


def test_requested_fsdp_or_deepspeed_but_plain_model_fails_loudly() -> None:
    """What accelerate does silently on CPU without the patch (E2): DDP instead of FSDP."""
    ddp_like = types.SimpleNamespace(model=torch.nn.Linear(2, 2), model_wrapped=torch.nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="fsdp was requested but the model is a Linear"):
        distributed.check_wrapped(ddp_like, parse_train_config({**BASE, "fsdp": True}))
    with pytest.raises(RuntimeError, match="not a DeepSpeedEngine"):
        distributed.check_wrapped(ddp_like, parse_train_config({**BASE, "deepspeed": "z2"}))
    distributed.check_wrapped(ddp_like, parse_train_config(BASE))  # plain DDP asked, plain DDP got


def test_start_line_format() -> None:
    info = distributed.StartInfo(4, ["a", "a", "b", "b"], "cpu", "gloo", "deepspeed-z3")
    assert info.line() == (
        "xgen-runtime: world_size=4 nodes=2 hosts=a,b device=cpu backend=gloo strategy=deepspeed-z3"
    )


def test_progress_without_tty_prints_plain_lines(capsys) -> None:
    from transformers import TrainerControl, TrainerState

    from runtime.fit.progress import ProgressCallback

    cb = ProgressCallback(enabled=True, tty=False)
    state = TrainerState(max_steps=10, global_step=0)
    cb.on_train_begin(None, state, TrainerControl())
    state.global_step, state.num_input_tokens_seen = 2, 400
    cb.on_log(None, state, TrainerControl(), logs={"loss": 1.5, "grad_norm": 0.5, "learning_rate": 1e-4})
    cb.on_log(None, state, TrainerControl(), logs={"eval_loss": 1.2, "eval_runtime": 0.1})
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("xgen-runtime: step 2/10 | loss 1.5 | grad_norm 0.5 | lr 1.000e-04 | tok/s ")
    assert out[1] == "xgen-runtime: eval step 2: eval_loss=1.2"
    assert all("\r" not in line and "\x1b" not in line for line in out)


@pytest.mark.parametrize(("stopped", "phase"), [(False, "done"), (True, "preempted")])
def test_progress_file_phase_at_train_end(tmp_path, stopped: bool, phase: str) -> None:
    """After a checkpoint-and-stop (exit 75) the progress file must not claim the run is done."""
    from transformers import TrainerControl, TrainerState

    from runtime.contract.slurm import PROGRESS_FILE
    from runtime.fit.progress import ProgressCallback

    args = types.SimpleNamespace(output_dir=str(tmp_path))
    cb = ProgressCallback(enabled=True, tty=False, preempt=types.SimpleNamespace(stopped=stopped))
    state = TrainerState(max_steps=10, global_step=0)
    cb.on_train_begin(args, state, TrainerControl())
    assert json.loads((tmp_path / PROGRESS_FILE).read_text())["phase"] == "training"
    state.global_step = 4
    cb.on_train_end(args, state, TrainerControl())
    progress = json.loads((tmp_path / PROGRESS_FILE).read_text())
    assert (progress["phase"], progress["step"], progress["total"]) == (phase, 4, 10)
