"""Quantised LoRA's keys (runtime/config/quantization.py): one line naming the key for every combination that
cannot train, at parse time when the config alone says so, at start (before any model loads) when it takes
the node's packages or the model's own config.json. What trains is in tests/runtime/test_qlora.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from runtime.config import ConfigError, parse_train_config
from runtime.config.rules import check_at_start

BASE = {"model_name_or_path": "m", "dataset": "d", "finetuning_type": "lora", "quantization_bit": 4}

REFUSED = [
    # (keys over BASE, the key named, the start of its message)
    (
        {"finetuning_type": "full"},
        "quantization_bit",
        "a quantised base trains adapters only: finetuning_type",
    ),
    ({"finetuning_type": "freeze"}, "quantization_bit", "a quantised base trains adapters only"),
    ({"quantization_bit": 3}, "quantization_bit", "bnb quantises to 4 or 8 bits; got 3"),
    ({"quantization_bit": 8, "fsdp": True}, "quantization_bit", "8-bit weights cannot be sharded by fsdp"),
    ({"quantization_bit": 8, "deepspeed": "z3"}, "quantization_bit", "DeepSpeed ZeRO-3 does not shard 8-bit"),
    (
        {"quantization_bit": 8, "deepspeed": "z3_offload"},
        "quantization_bit",
        "DeepSpeed ZeRO-3 does not shard 8-bit",
    ),
    ({"quantization_method": "gptq"}, "quantization_method", "gptq is not an on-the-fly method: give a GPTQ"),
    ({"quantization_method": "awq"}, "quantization_method", "awq is not an on-the-fly method"),
    ({"quantization_method": "quanto"}, "quantization_method", "must be one of bnb, hqq, eetq (on the fly)"),
    ({"quantization_method": "eetq"}, "quantization_bit", "eetq quantises to 8 bits; got 4"),
    (
        {"quantization_method": "hqq", "fsdp": True},
        "quantization_bit",
        "hqq weights cannot be sharded by fsdp",
    ),
    ({"quantization_type": "int4"}, "quantization_type", "must be one of nf4, fp4"),
    ({"pissa_init": True}, "pissa_init", "PiSSA's SVD needs the unquantised weights"),
    ({"resize_vocab": True}, "resize_vocab", "cannot resize the embeddings of a quantised model; drop it"),
    ({"add_tokens": "<x>"}, "resize_vocab", "cannot resize the embeddings of a quantised model (add_tokens"),
    ({"fp8": True}, "fp8", "FP8 training and quantization_bit exclude each other"),
    ({"fused_lora": True}, "fused_lora", "quantised layers keep peft's own forward"),
    (
        {"quantization_device_map": "auto"},
        "quantization_device_map",
        "LLaMA-Factory's device map for quantised",
    ),
    (
        {"ref_model_quantization_bit": 4},
        "ref_model_quantization_bit",
        "a separately quantised reference model",
    ),
    ({"export_quantization_bit": 4}, "export_quantization_bit", "quantised (GPTQ) export is not supported"),
]


@pytest.mark.parametrize(
    ("keys", "key", "message"), REFUSED, ids=[" ".join(map(str, k.items())) for k, _, _ in REFUSED]
)
def test_refused_at_parse_time_in_one_line(keys: dict, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_train_config({**BASE, **keys}, key_prefix="train.")
    assert [e.key for e in info.value.errors] == [f"train.{key}"]
    assert info.value.message.startswith(message), info.value.message
    assert "\n" not in str(info.value)


ACCEPTED = [
    # (keys over BASE, what the parse leaves): the measured strategies and LLaMA-Factory's spellings.
    ({"fsdp": True}, {}),
    ({"deepspeed": "z3"}, {}),
    ({"quantization_bit": 8, "deepspeed": "z2"}, {}),
    ({"finetuning_type": "oft", "oft_block_size": 16}, {}),
    ({"quantization_method": "bitsandbytes"}, {"quantization_method": "bnb"}),
    ({"quantization_type": "fp4", "double_quantization": False}, {"quantization_type": "fp4"}),
    ({"quantization_method": "hqq", "quantization_bit": 2}, {}),
]


@pytest.mark.parametrize(
    ("keys", "expect"), ACCEPTED, ids=[" ".join(map(str, k.items())) for k, _ in ACCEPTED]
)
def test_accepted(keys: dict, expect: dict) -> None:
    cfg = parse_train_config({**BASE, **keys})
    assert {k: getattr(cfg, k) for k in expect} == expect


def test_quantization_keys_without_quantization_bit_are_noted() -> None:
    cfg = parse_train_config({**BASE, "quantization_bit": None, "quantization_method": "hqq"})
    assert "quantization_method ignored: quantization_bit is not set" in cfg.notes
    cfg = parse_train_config({**BASE, "quantization_bit": 8, "quantization_type": "fp4"})
    assert "quantization_type ignored: they shape bnb 4-bit weights; this is bnb 8-bit" in cfg.notes


# --- at start, before any model loads --------------------------------------------------------------------


def test_missing_package_is_one_line_with_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "hqq" else real(name, *a)
    )
    cfg = parse_train_config({**BASE, "quantization_method": "hqq"})
    with pytest.raises(ConfigError) as info:
        check_at_start(cfg, world_size=1)
    assert str(info.value) == (
        "quantization_method: hqq needs the hqq package, not installed here: pip install hqq"
    )


@pytest.fixture
def gptq_model(tiny_dir: Path, tmp_path: Path) -> Path:
    """The tiny model's files with a GPTQ quantization_config in config.json (the weights are not GPTQ's:
    only the checks before loading read it)."""
    model = tmp_path / "gptq"
    shutil.copytree(tiny_dir / "model", model)
    config = json.loads((model / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    (model / "config.json").write_text(json.dumps(config))
    return model


def test_a_gptq_checkpoint_is_checked_before_it_loads(
    gptq_model: Path, tiny_dir: Path, tmp_path, capsys
) -> None:
    import importlib.util

    from trainer_harness import base_config, write_config

    from runtime.cli import main

    if importlib.util.find_spec("gptqmodel") is not None:
        pytest.skip("gptqmodel is installed here")
    cfg = base_config(tiny_dir, tmp_path / "out", model_name_or_path=str(gptq_model), fsdp=True)
    assert main(["train", str(write_config(tmp_path / "cfg.yaml", cfg))]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "xgen-runtime: error: model_name_or_path: a GPTQ model needs the gptqmodel package: "
        "pip install gptqmodel optimum",
        "xgen-runtime: error: model_name_or_path: a GPTQ model trains adapters only: "
        "finetuning_type lora or oft",
        "xgen-runtime: error: model_name_or_path: a GPTQ model cannot be sharded by FSDP or ZeRO-3 "
        "(as in LLaMA-Factory)",
    ]


def test_export_refuses_to_merge_into_a_quantised_checkpoint(
    gptq_model: Path, tmp_path: Path, capsys
) -> None:
    from runtime.cli import main

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    path = tmp_path / "merge.yaml"
    path.write_text(
        f"model_name_or_path: {gptq_model}\nadapter_name_or_path: {adapter}\nexport_dir: {tmp_path / 'x'}\n"
    )
    assert main(["export", str(path)]) == 2
    assert capsys.readouterr().err == (
        "xgen-runtime: error: model_name_or_path: the base is a gptq-quantised checkpoint: an adapter cannot "
        "be merged into it; give the unquantised model it was quantised from\n"
    )


def test_a_checkpoint_records_the_quantisation_it_was_trained_over() -> None:
    """runtime/fit/run_record.py: resuming over other quantised weights is another run; the records of
    unquantised runs (and their checkpoints from before QLoRA) carry no quantisation keys."""
    from runtime.fit.run_record import differences, run_record

    plain = run_record(parse_train_config({**BASE, "quantization_bit": None}), 1)
    four = run_record(parse_train_config(BASE), 1)
    eight = run_record(parse_train_config({**BASE, "quantization_bit": 8}), 1)
    assert not any(key.startswith(("quantization", "double")) for key in plain)
    assert differences(four, eight) == [("quantization_bit", 4, 8)]
    assert [key for key, _, _ in differences(plain, four)][0] == "quantization_bit"


def test_bnb_on_npu_needs_an_ascend_backend_registered() -> None:
    """LLaMA-Factory's *_bnb_npu examples on an NPU: bitsandbytes' own wheel (installed here) registers no
    Ascend backend, so the run stops before the model loads in one line; a registered one passes.
    Only what is registered is checked; no NPU ran here."""
    from runtime.model import bnb_npu_backends, check_bnb_on_npu

    here = bnb_npu_backends()
    assert not any("npu" in name.lower() for name in here), here
    with pytest.raises(ConfigError) as err:
        check_bnb_on_npu(4, here)
    assert err.value.key == "quantization_bit"
    assert "4-bit bitsandbytes on NPU needs bitsandbytes built for Ascend" in str(err.value)
    check_bnb_on_npu(4, ["bitsandbytes_npu"])  # a build that registers one
