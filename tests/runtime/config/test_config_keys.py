"""Keys beyond TrainConfig's fields: TrainingArguments passthrough, LLaMA-Factory keys (refused with a
reason, or noted at their default), every bad key at once, and the checks made before the model loads."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest

from runtime.config import ConfigError, ConfigErrors, parse_train_config, train_fields
from runtime.config.hf_keys import TRAINING_ARGUMENTS, TRANSFORMERS_VERSION
from runtime.config.lf_keys import LF_KEYS
from runtime.config.rules import check_at_start

BASE = {"model_name_or_path": "m", "dataset": "d"}


def test_training_arguments_list_matches_installed_transformers() -> None:
    import transformers

    installed = [f.name for f in dataclasses.fields(transformers.TrainingArguments) if f.init]
    assert (TRANSFORMERS_VERSION, list(TRAINING_ARGUMENTS)) == (transformers.__version__, installed), (
        "regenerate: .venv/bin/python scripts/gen_key_lists.py hf"
    )


def test_lf_key_list_is_llamafactory_0_9_5() -> None:
    assert len(LF_KEYS) > 200
    assert LF_KEYS["quantization_bit"] == ("QuantizationArguments", None)
    assert LF_KEYS["disable_gradient_checkpointing"] == ("BaseModelArguments", False)


def test_every_bad_key_is_reported_at_once() -> None:
    bad = {
        **BASE,
        "split_special_tokens": True,
        "quantization_device_map": "auto",
        "audio_sampling_rate": 8000,
        "ray_num_workers": 2,
        "learnig_rate": 1e-4,
        "cutoff_len": "long",
        "use_unsloth": True,
    }
    with pytest.raises(ConfigErrors) as info:
        parse_train_config(bad, key_prefix="train.")
    lines = str(info.value).splitlines()
    assert [e.key for e in info.value.errors] == [f"train.{k}" for k in list(bad)[2:]]
    assert lines[0] == (
        "train.split_special_tokens: a LLaMA-Factory key (BaseModelArguments) "
        "that xgen-runtime does not implement"
    )
    assert "device map for quantised inference" in lines[1]
    assert "audio is not supported" in lines[2]
    assert "Ray is not supported" in lines[3]
    assert lines[4] == "train.learnig_rate: unknown key; did you mean 'learning_rate'?"
    assert lines[5] == "train.cutoff_len: expected an integer, got str 'long'"
    assert "unsloth is not supported" in lines[6]
    assert isinstance(info.value, ConfigError)  # callers catching ConfigError still catch it


@pytest.mark.parametrize("key", ["use_muon", "use_apollo", "use_asft_loss", "use_galore", "pissa_init"])
def test_lf_method_keys_get_a_reason_not_a_misleading_suggestion(key: str) -> None:
    if key in train_fields():
        pytest.skip(f"{key} is implemented now")
    with pytest.raises(ConfigError) as info:
        parse_train_config({**BASE, key: True})
    assert "did you mean" not in info.value.message and "LLaMA-Factory" in info.value.message


def test_suggestion_only_for_near_spellings() -> None:
    with pytest.raises(ConfigError, match="did you mean 'gradient_accumulation_steps'"):
        parse_train_config({**BASE, "gradient_acumulation_steps": 2})
    with pytest.raises(ConfigError) as info:
        parse_train_config({**BASE, "use_foo": True})
    assert info.value.message == "unknown key"


def test_lf_defaults_are_noted_not_refused() -> None:
    cfg = parse_train_config(
        {
            **BASE,
            "export_quantization_bit": None,
            "use_unsloth": False,
            "quantization_device_map": None,
            "eval_num_beams": None,
        }
    )
    assert sum("accepted with no effect" in n for n in cfg.notes) == 4, cfg.notes


def test_training_arguments_keys_pass_through() -> None:
    extra = {
        "lr_scheduler_kwargs": {"min_lr": 1e-6},
        "neftune_noise_alpha": 5,
        "gradient_checkpointing_kwargs": {"use_reentrant": False},
        "label_smoothing_factor": 0.1,
    }
    cfg = parse_train_config({**BASE, **extra, "remove_unused_columns": True})
    assert cfg.training_args == extra
    assert any("remove_unused_columns accepted and ignored" in n for n in cfg.notes)


def test_gradient_checkpointing_switch() -> None:
    assert parse_train_config({**BASE, "disable_gradient_checkpointing": False}).gradient_checkpointing
    assert not parse_train_config({**BASE, "disable_gradient_checkpointing": True}).gradient_checkpointing
    with pytest.raises(
        ConfigError, match="^disable_gradient_checkpointing: contradicts gradient_checkpointing"
    ):
        parse_train_config({**BASE, "disable_gradient_checkpointing": True, "gradient_checkpointing": True})
    fsdp = parse_train_config({**BASE, "fsdp": True, "gradient_checkpointing": True})
    assert fsdp.use_reentrant_gc is False


def test_model_key_rules() -> None:
    assert parse_train_config({**BASE, "new_special_tokens": "<a>,<b>"}).resize_vocab
    with pytest.raises(ConfigError, match="^rope_scaling: must be one of linear, dynamic, yarn, llama3"):
        parse_train_config({**BASE, "rope_scaling": "ntk"})
    with pytest.raises(ConfigError, match="^pure_bf16: incompatible with DeepSpeed ZeRO-3"):
        parse_train_config({**BASE, "pure_bf16": True, "deepspeed": "z3"})


def test_deepspeed_autotp_with_lora_is_refused() -> None:
    ds = {"zero_optimization": {"stage": 2}, "tensor_parallel": {"autotp_size": 2}}
    with pytest.raises(
        ConfigError, match=r"^deepspeed: tensor_parallel.autotp_size 2 .* does not work with LoRA"
    ):
        parse_train_config({**BASE, "finetuning_type": "lora", "deepspeed": ds})
    assert parse_train_config({**BASE, "finetuning_type": "full", "deepspeed": ds}).deepspeed_config == ds


def test_zero3_json_gathers_weights_for_the_save() -> None:
    cfg = parse_train_config({**BASE, "deepspeed": {"zero_optimization": {"stage": 3}}})
    assert cfg.deepspeed_config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert any("stage3_gather_16bit_weights_on_model_save" in n for n in cfg.notes)
    off = {"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": False}}
    assert parse_train_config({**BASE, "deepspeed": off}).deepspeed_config == off  # an explicit choice stays


def test_deepspeed_batch_sizes_checked_against_world_size() -> None:
    ds = {"train_batch_size": 16, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": "auto"}
    cfg = parse_train_config(
        {**BASE, "deepspeed": ds, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 4}
    )
    check_at_start(cfg, world_size=2)  # 2 x 4 x 2 = 16
    with pytest.raises(ConfigError) as info:
        check_at_start(cfg, world_size=1)
    assert str(info.value) == (
        "deepspeed: train_batch_size 16 in the DeepSpeed JSON contradicts 2 x 4 x world size 1 = 8; "
        'set it to "auto" (the trainer fills it in) or to 8'
    )


def test_missing_tracker_package_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a))
    cfg = parse_train_config({**BASE, "report_to": "wandb"})
    with pytest.raises(ConfigError, match=r"^report_to: wandb is not installed on .* \(pip install wandb\)"):
        check_at_start(cfg, world_size=1)
