"""Predicted activation bytes (runtime/contract/plan/terms.py) against what autograd really saves on CPU:
every tensor packed by `torch.autograd.graph.saved_tensors_hooks` during one forward with the loss,
distinct storages, parameters left out (as bench/activation_bytes.py counts them). Within 5%."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from runtime.contract.plan.shape import shape_from_config, total_params
from runtime.contract.plan.terms import Run, autocast_weight_copies, forward_saved

LLAMA = dict(
    model_type="llama",
    vocab_size=1000,
    hidden_size=256,
    intermediate_size=688,
    num_hidden_layers=2,
    num_attention_heads=8,
    num_key_value_heads=2,
    tie_word_embeddings=True,
)
QWEN3 = dict(LLAMA, model_type="qwen3", head_dim=32, tie_word_embeddings=False)
BATCH, SEQ = 2, 128


def saved_bytes(model: torch.nn.Module, autocast: bool, padded: bool) -> int:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    torch.manual_seed(0)
    ids = torch.randint(0, LLAMA["vocab_size"], (BATCH, SEQ))
    mask = torch.ones_like(ids)
    if padded:
        mask[1, : SEQ // 4] = 0  # left padding in the second row: transformers builds a 4-D mask
    kwargs = {"attention_mask": mask} if padded else {}
    context = (
        torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    )
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), context:
        _ = model(input_ids=ids, labels=ids, **kwargs).loss
    return sum(seen.values())


CASES = [
    # (config, attention, checkpointing, padded, pure bf16 weights)
    (LLAMA, "sdpa", False, False, False),
    (LLAMA, "sdpa", True, False, False),
    (LLAMA, "eager", False, False, False),
    (LLAMA, "eager", True, False, False),
    (LLAMA, "sdpa", False, True, False),
    (LLAMA, "sdpa", False, False, True),
    (LLAMA, "eager", False, True, True),
    (QWEN3, "sdpa", False, False, False),
    (QWEN3, "sdpa", True, False, True),
]


@pytest.mark.parametrize(("config", "attention", "checkpointing", "padded", "pure"), CASES)
def test_activations_within_5_percent_of_what_autograd_saves(config, attention, checkpointing, padded, pure):
    hf = AutoConfig.for_model(**config, attn_implementation=attention)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf, dtype=torch.bfloat16 if pure else torch.float32)
    model.train()
    if checkpointing:  # as runtime.model.enable_gradient_checkpointing (reentrant, LLaMA-Factory's default)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    measured = saved_bytes(model, autocast=not pure, padded=padded)
    shape = shape_from_config(config)
    run = Run(
        shape=shape,
        method="full",
        trainable=total_params(shape),
        device="cpu",
        pure_bf16=pure,
        micro_batch=BATCH,
        seq=SEQ,
        checkpointing=checkpointing,
        attention=attention,
        padded=padded,
    )
    predicted = forward_saved(run) + autocast_weight_copies(run)
    print(f"{predicted / measured - 1:+.2%}")
    assert abs(predicted / measured - 1) < 0.05, (predicted, measured, f"{predicted / measured - 1:+.2%}")


@pytest.mark.parametrize("trainable_layers", [1, 2, -1])
def test_freeze_saves_only_from_the_first_trainable_layer_up(trainable_layers: int) -> None:
    """Freeze tuning of a 4-layer Llama (LLaMA-Factory's freeze_trainable_layers: the last N, or the first
    -N): nothing below the first trainable layer requires grad, so autograd saves nothing there."""
    config = dict(LLAMA, num_hidden_layers=4)
    hf = AutoConfig.for_model(**config, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf, dtype=torch.float32)
    model.train()
    layers = config["num_hidden_layers"]
    train = range(layers - trainable_layers, layers) if trainable_layers > 0 else range(-trainable_layers)
    for name, param in model.named_parameters():
        param.requires_grad = any(f"layers.{i}." in name for i in train)
    measured = saved_bytes(model, autocast=True, padded=False)
    shape = shape_from_config(config)
    run = Run(
        shape=shape,
        method="freeze",
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        device="cpu",
        micro_batch=BATCH,
        seq=SEQ,
        padded=False,
        freeze_layers=trainable_layers,
    )
    predicted = forward_saved(run) + autocast_weight_copies(run)
    print(f"{predicted / measured - 1:+.2%}")
    assert abs(predicted / measured - 1) < 0.05, (predicted, measured, f"{predicted / measured - 1:+.2%}")
