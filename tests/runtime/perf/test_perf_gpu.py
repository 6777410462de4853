"""The GPU correctness check: the optimised path (packing + flex/fa2 + Liger + fused AdamW, bf16)
trains the same as the plain path (padding, sdpa, adamw_torch, bf16) on the same batches.

Skipped without CUDA. Run on the GPU machine by bench/run_gpu.sh (`pytest -m gpu`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from trainer_harness import base_config

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
# bf16 has an 8-bit mantissa (relative rounding 2^-8 = 0.4%): two kernels that sum in another order
# (flex vs sdpa, Liger's chunked fused CE vs logits + CE) differ by ~1e-3 in a mean loss; a real bug
# (cross-attention between packed examples, a wrongly scaled loss) moves it by far more than 1%.
BF16_RTOL = 1e-2
STEPS = 6


def _run(tiny_dir: Path, out: Path, **keys):
    from runtime.config import parse_train_config
    from runtime.train import run_training

    raw = base_config(
        tiny_dir, out, per_device_train_batch_size=8, max_steps=STEPS, save_strategy="no", bf16=True, **keys
    )
    result = run_training(parse_train_config(raw))
    assert result.code == 0
    return result, [e["loss"] for e in result.trainer.state.log_history if "loss" in e]


@pytest.mark.parametrize("finetuning_type", ["full", "lora"])
def test_optimised_path_matches_plain_path_in_bf16(tiny_dir: Path, tmp_path: Path, finetuning_type: str):
    plain, plain_losses = _run(tiny_dir, tmp_path / "plain", perf="off", finetuning_type=finetuning_type)
    fast, fast_losses = _run(tiny_dir, tmp_path / "fast", finetuning_type=finetuning_type)
    plan = fast.perf
    assert plan.device == "cuda" and plan.padding_free and plan.flash_attn in ("flex", "fa2")
    assert plan.optim == "adamw_torch_fused" and not plain.perf.padding_free
    liger = importlib.util.find_spec("liger_kernel") is not None
    assert plan.liger is liger
    base = fast.model.get_base_model() if finetuning_type == "lora" else fast.model
    assert base.config._attn_implementation in ("flex_attention", "flash_attention_2")
    if liger:  # Trainer really patched the model: Liger's RMSNorm replaced Llama's
        assert "Liger" in type(base.model.norm).__name__
    assert len(fast_losses) == STEPS and len(set(plain_losses)) > 1
    for step, (a, b) in enumerate(zip(plain_losses, fast_losses, strict=True), 1):
        assert abs(a - b) <= BF16_RTOL * abs(a), f"step {step}: plain {a} vs optimised {b}"
