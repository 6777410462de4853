"""runtime.perf: the throughput levers each device gets; the packed path trains like the padded one.

The CPU equivalence test is the fp32 half of issue 7's correctness check (the bf16 GPU half is in
test_perf_gpu.py): same data, same seed, packing on vs off, per-step losses within 1e-5 relative.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from trainer_harness import base_config

from runtime.config import ConfigError, TrainConfig, parse_train_config
from runtime.perf import apply_perf, resolve_perf

BASE = {"model_name_or_path": "m", "dataset": "d", "stage": "sft"}
# fp32 on CPU: the packed row sees the same numbers in another order of summation (block-diagonal mask
# instead of a padding mask), so per-step losses agree to float32 rounding, far below 1e-5 relative.
FP32_RTOL = 1e-5


def plan(device: str, *, liger: bool = True, fa2: bool = False, **keys):
    cfg = parse_train_config({**BASE, **keys})
    return resolve_perf(cfg, device, liger_available=liger, fa2_available=fa2), cfg


def test_cuda_defaults_turn_every_lever_on() -> None:
    p, _ = plan("cuda")
    assert (p.packing, p.flash_attn, p.liger, p.optim) == (True, "flex", True, "adamw_torch_fused")
    assert (p.torch_compile, p.activation_checkpointing, p.notes) == (False, False, [])
    assert plan("cuda", fa2=True)[0].flash_attn == "fa2"  # varlen flash attention when installed
    assert plan("cuda", liger=False)[0].liger is False  # not installed: quietly off
    assert p.line() == (
        "perf: auto (cuda) packing=on attention=flex liger=on optim=adamw_torch_fused compile=off "
        "activation_checkpointing=off"
    )


@pytest.mark.parametrize("device", ["cpu"])  # npu: tests/runtime/test_perf_npu.py
def test_cpu_and_npu_keep_the_plain_path(device: str) -> None:
    p, _ = plan(device)
    assert (p.packing, p.flash_attn, p.liger, p.notes) == (False, "auto", False, [])
    assert p.optim == {"cpu": "adamw_torch", "npu": "adamw_torch_npu_fused"}[device]


def test_keys_the_user_wrote_win() -> None:
    keys = dict(packing=False, enable_liger_kernel=False, optim="adamw_torch", flash_attn="sdpa")
    p, _ = plan("cuda", torch_compile=True, **keys)
    assert (p.packing, p.liger, p.optim, p.flash_attn, p.torch_compile) == (
        False,
        False,
        "adamw_torch",
        "sdpa",
        True,
    )
    p, _ = plan("cuda", packing=True, flash_attn="sdpa")  # packed, but with the attention the user chose
    assert (p.packing, p.flash_attn) == (True, "sdpa")


def test_perf_off_is_exactly_the_keys() -> None:
    p, _ = plan("cuda", perf="off")
    assert (p.packing, p.flash_attn, p.liger, p.optim) == (False, "auto", False, "adamw_torch")


def test_pairwise_stages_get_only_the_fused_optimizer() -> None:
    for stage in ("rm", "dpo"):
        p, _ = plan("cuda", stage=stage)
        assert (p.packing, p.liger, p.optim) == (False, False, "adamw_torch_fused")


def test_liger_asked_for_where_it_cannot_run_falls_back_with_a_note() -> None:
    p, _ = plan("cpu", enable_liger_kernel=True)
    assert not p.liger and p.notes == ["enable_liger_kernel: Liger's Triton kernels need CUDA; off on cpu"]
    p, _ = plan("cuda", liger=False, use_liger_kernel=True)  # transformers' name is read as ours
    assert p.liger is False and "not installed" in p.notes[0]


def test_apply_writes_the_plan_into_the_keys() -> None:
    p, cfg = plan("cuda")
    apply_perf(cfg, p)
    # perf's packing is the padding-free lever; `packing` keeps LLaMA-Factory's meaning (offline rows).
    assert (cfg.padding_free, cfg.packing, cfg.flash_attn, cfg.enable_liger_kernel, cfg.optim) == (
        True,
        False,
        "flex",
        True,
        "adamw_torch_fused",
    )
    direct = TrainConfig(model_name_or_path="m", dataset="d")  # built in code: nothing counts as written
    assert resolve_perf(direct, "cuda", liger_available=False).packing is True


def test_config_checks_the_new_keys() -> None:
    with pytest.raises(ConfigError, match="^perf: must be one of auto, off"):
        parse_train_config({**BASE, "perf": "fast"})
    cfg = parse_train_config({**BASE, "flash_attn": "flex", "neat_packing": True})
    assert cfg.flash_attn == "flex" and cfg.packing is True and "packing" in cfg.explicit
    p = resolve_perf(cfg, "cuda", liger_available=False)
    apply_perf(cfg, p)
    assert p.packing and not cfg.padding_free  # the config's neat_packing, not the padding-free lever


def test_flex_off_cuda_falls_back_to_sdpa() -> None:
    from runtime.model import resolve_attention

    assert resolve_attention("flex", "cuda") == ("flex_attention", None)
    attn, warning = resolve_attention("flex", "cpu")
    assert attn == "sdpa" and "flex needs CUDA" in warning


def _run(tiny_dir: Path, out: Path, padding_free: bool = False, **keys):
    from runtime.config import parse_train_config
    from runtime.train import run_training

    raw = base_config(tiny_dir, out, per_device_train_batch_size=4, max_steps=5, save_strategy="no", **keys)
    cfg = parse_train_config(raw)
    cfg.padding_free = padding_free  # what perf auto sets on CUDA; not a key (`packing` is LLaMA-Factory's)
    result = run_training(cfg)
    assert result.code == 0
    history = result.trainer.state.log_history
    return result, [e["loss"] for e in history if "loss" in e]


def test_packed_training_matches_padded_training_on_cpu(tiny_dir: Path, tmp_path: Path, capsys) -> None:
    """Same batches, same seed: packing (one flattened row, block-diagonal attention) vs padding."""
    padded, padded_losses = _run(tiny_dir, tmp_path / "padded", packing=False)
    packed, packed_losses = _run(tiny_dir, tmp_path / "packed", padding_free=True)
    assert packed.trainer.data_collator.__class__.__name__ == "PackingCollator"
    assert padded.trainer.data_collator.__class__.__name__ == "PaddingCollator"
    assert len(packed_losses) == 5 and len(set(packed_losses)) > 1  # it trained: the losses move
    for step, (a, b) in enumerate(zip(padded_losses, packed_losses, strict=True), 1):
        assert abs(a - b) <= FP32_RTOL * abs(a), f"step {step}: padded {a} vs packed {b}"
    # Both count only real tokens (non_padding): the packed row has no pads, the padded batch's are skipped.
    assert padded.trainer.state.num_input_tokens_seen == packed.trainer.state.num_input_tokens_seen
    assert "xgen-runtime: perf: auto (cpu) packing=on attention=auto liger=off optim=adamw_torch" in (
        capsys.readouterr().out
    )
