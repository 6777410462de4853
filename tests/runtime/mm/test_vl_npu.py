"""Vision-language models under `perf: auto` on Ascend, with the fake torch_npu (tests/runtime/fakes): the
fused RMSNorm/SwiGLU/rotary kernels are patched into the vision tower as well as the language model and
compute what the plain modules compute; the padding-free rows and the variable-length fused attention
that perf auto picks for text models are left off with one note (Qwen's M-RoPE positions are per row).
No NPU here: these prove decisions, wiring and numbers, not NPU speed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from runtime.config import parse_train_config
from runtime.perf.npu import NPU_OPS
from runtime.perf.plan import resolve_perf

FP32_TOL = 1e-5
PADDING_FREE_NOTE = "padding-free rows are off for vision-language models (Qwen's M-RoPE position ids)"


def test_fake_torch_npu_perf_auto_leaves_padding_free_and_varlen_attention_off_for_vl(
    tiny_vl_dir: Path,
) -> None:
    keys = {"dataset": "d", "stage": "sft", "template": "qwen2_vl"}
    plan = resolve_perf(
        parse_train_config({**keys, "model_name_or_path": str(tiny_vl_dir / "vl_model")}),
        "npu",
        liger_available=False,
        fa2_available=False,
        npu_ops=frozenset(NPU_OPS.values()),
    )
    assert (plan.padding_free, plan.rows) == (False, "-") and plan.flash_attn != "fa2"
    assert plan.npu_kernels == ("rms_norm", "swiglu", "rotary") and plan.notes == [PADDING_FREE_NOTE]
    text = resolve_perf(
        parse_train_config({**keys, "model_name_or_path": str(tiny_vl_dir / "model")}),
        "npu",
        liger_available=False,
        fa2_available=False,
        npu_ops=frozenset(NPU_OPS.values()),
    )
    assert (text.padding_free, text.flash_attn) == (True, "fa2")  # the text model keeps them


@pytest.mark.parametrize(
    "model,in_tower",
    [
        # Qwen2.5-VL's 2 vision blocks: RMSNorm norm1/norm2 and a SiLU-gated MLP each, and the merger's
        # RMSNorm; the vision rotary (apply_rotary_pos_emb_vision, 2-D positions) is not patched
        ("vl_model", {"npu_rms_norm": 5, "npu_swiglu": 2}),
        # Qwen3-VL's vision blocks: LayerNorm and a GELU MLP, kept as they are
        ("vl3_model", {}),
    ],
)
def test_fake_torch_npu_kernels_in_the_vision_tower_match_the_plain_modules(
    npu_transformers, tiny_vl_dir: Path, model: str, in_tower: dict[str, int]
) -> None:
    """Logits on an image row before and after the patch, within fp32 noise; the kernels that ran in the
    vision tower's own forward, and all three in the whole model (the language model's rotary included)."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from runtime.levers.use_v1_kernels import apply_npu_kernels
    from runtime.mm.data import VisionCollator
    from runtime.mm.plugin import VISION_BOS, VISION_EOS, ImageSettings
    from runtime.mm.stage import load_image_processor

    path = tiny_vl_dir / model
    tokenizer = AutoTokenizer.from_pretrained(path)
    collator = VisionCollator(
        pad_token_id=0,
        image_processor=load_image_processor(str(path)),
        settings=ImageSettings(),
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        vision_start_id=tokenizer.convert_tokens_to_ids(VISION_BOS),
        vision_end_id=tokenizer.convert_tokens_to_ids(VISION_EOS),
    )
    batch = collator([{"input_ids": [5, 9, 14], "labels": [5, 9, 14], "attention_mask": [1, 1, 1]}])
    batch["attention_mask"] = torch.ones_like(batch["attention_mask"])  # the dummy image counts here
    batch.pop("labels")
    net = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        before = net(**batch).logits
        apply_npu_kernels(net)
        npu_transformers.reset()
        net.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"])
        tower = dict(npu_transformers.CALLS)
        after = net(**batch).logits
    assert tower == in_tower, tower
    assert {"npu_rms_norm", "npu_swiglu", "npu_rotary_mul"} <= set(npu_transformers.CALLS)
    assert "npu_fusion_attention" not in npu_transformers.CALLS
    assert (before - after).abs().max().item() <= FP32_TOL
