"""The plan's parameter counts (runtime/contract/plan/shape.py) equal the real models': transformers builds
each architecture on the meta device from the same config.json, peft wraps small ones with LoRA/DoRA."""

from __future__ import annotations

import pytest
import torch
from plan_shapes import REAL
from transformers import AutoConfig, AutoModelForCausalLM

from runtime.contract.plan.shape import (
    freeze_params,
    freeze_tensors,
    lora_params,
    lora_tensors,
    model_tensors,
    shape_from_config,
    total_params,
)


def build(config: dict, device: str = "meta") -> torch.nn.Module:
    cfg = AutoConfig.for_model(**config)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(cfg)


def count(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(sizes(model, trainable_only))


def sizes(model: torch.nn.Module, trainable_only: bool = False) -> list[int]:
    """Elements of each parameter in `model.parameters()` order (the order DeepSpeed partitions)."""
    return [p.numel() for p in model.parameters() if p.requires_grad or not trainable_only]


@pytest.mark.parametrize("name", list(REAL))
def test_total_parameters_equal_the_meta_model(name: str) -> None:
    shape = shape_from_config(REAL[name])
    model = build(REAL[name])
    assert total_params(shape) == count(model)
    assert model_tensors(shape) == [(n, p.numel()) for n, p in model.named_parameters()]


@pytest.mark.parametrize("name", ["Llama-3-8B", "Qwen2.5-7B", "Qwen3-4B", "Qwen3-30B-A3B", "Mixtral-8x7B"])
def test_weight_decay_groups_equal_the_trainers(name: str) -> None:
    """ZeRO-2's layout partitions the Trainer's two groups apart: the plan's split must be the Trainer's."""
    from transformers import Trainer

    from runtime.contract.plan.terms import no_decay

    model = build(small(REAL[name]))
    decay = set(Trainer.get_decay_parameter_names(None, model))  # it does not use self
    assert [no_decay(n) for n, _ in model.named_parameters()] == [
        n not in decay for n, _ in model.named_parameters()
    ]


def test_published_sizes() -> None:
    billions = {n: round(total_params(shape_from_config(c)) / 1e9, 2) for n, c in REAL.items()}
    assert (
        billions["Llama-3-8B"] == 8.03 and billions["Qwen3-4B"] == 4.02 and billions["Qwen3-30B-A3B"] == 30.53
    )


def small(config: dict) -> dict:
    """The same architecture, a few MB: LoRA counts scale per layer, so a small copy checks the formula."""
    moe = {"moe_intermediate_size": 32, "num_experts": 4} if "num_experts" in config else {}
    moe |= {"num_local_experts": 4} if "num_local_experts" in config else {}
    return {
        **config,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "vocab_size": 256,
        **moe,
    }


@pytest.mark.parametrize("name", ["Llama-3-8B", "Qwen2.5-7B", "Qwen3-4B", "Qwen3-30B-A3B", "Mixtral-8x7B"])
@pytest.mark.parametrize(
    ("target", "rank", "dora"), [("all", 8, False), ("q_proj,v_proj", 16, False), ("all", 4, True)]
)
def test_lora_parameters_equal_peft(name: str, target: str, rank: int, dora: bool) -> None:
    from peft import LoraConfig, get_peft_model

    from runtime.model import linear_module_names

    config = small(REAL[name])
    model = build(config, "cpu")
    targets = linear_module_names(model) if target == "all" else target.split(",")
    peft_model = get_peft_model(model, LoraConfig(r=rank, target_modules=targets, use_dora=dora))
    shape = shape_from_config(config)
    assert lora_params(shape, target, rank, dora) == count(peft_model, trainable_only=True)
    assert [n for _, n in lora_tensors(shape, target, rank, dora)] == sizes(peft_model, trainable_only=True)


@pytest.mark.parametrize("layers", [2, -1])
def test_freeze_parameters_equal_the_trained_layers(layers: int) -> None:
    from types import SimpleNamespace

    from runtime.model import apply_freeze

    config = small(REAL["Qwen3-4B"])
    model = build(config, "cpu")
    cfg = SimpleNamespace(
        freeze_trainable_layers=layers,
        use_llama_pro=False,
        freeze_trainable_modules="all",
        freeze_extra_modules=None,
        pure_bf16=True,
    )
    apply_freeze(model, cfg, stage="sft")
    shape = shape_from_config(config)
    assert freeze_params(shape, layers) == count(model, trainable_only=True)
    assert [n for _, n in freeze_tensors(shape, layers)] == sizes(model, trainable_only=True)


@pytest.mark.parametrize("double", [False, True])
def test_qlora_base_bytes_equal_bitsandbytes(double: bool) -> None:
    """A 4-bit nf4 weight as bitsandbytes stores it (runtime.model: blocksize 64, storage in the compute
    dtype): the packed weight and the absmax constants (nested: uint8 plus an fp32 constant per 256)."""
    bnb = pytest.importorskip("bitsandbytes.functional")
    from runtime.contract.plan.terms import Run, quantized_base_bytes

    w = torch.randn(512, 1024, dtype=torch.bfloat16)
    packed, state = bnb.quantize_4bit(
        w, blocksize=64, quant_type="nf4", compress_statistics=double, quant_storage=torch.bfloat16
    )
    held = packed.untyped_storage().nbytes() + state.absmax.untyped_storage().nbytes()
    if double:
        held += state.state2.absmax.untyped_storage().nbytes()
    run = Run(
        shape=shape_from_config(REAL["Llama-3.2-1B"]),
        method="lora",
        trainable=0,
        quant_bits=4,
        double_quant=double,
    )
    assert quantized_base_bytes(run) * w.numel() == pytest.approx(held, rel=1e-3)
