"""A tiny Qwen2.5-VL, Qwen3-VL and Qwen3-VL-MoE (2 text layers, a 2-block vision tower), their image
processor, a few small PNGs drawn in code and image datasets in LLaMA-Factory's mllm_demo shape.
No downloads.

`xgen-runtime make-tiny DIR` writes DIR/vl_model (Qwen2.5-VL), DIR/vl3_model (Qwen3-VL), DIR/vl3moe_model
(Qwen3-VL-MoE: 4 experts, 2 per token) and the images and
datasets into DIR/data beside the text ones (DIR/data/vl_images/*.png, dataset_info.json entries
`tiny_mllm` (sharegpt), `tiny_mllm_alpaca` and the preference rows `tiny_mllm_dpo`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
# Sizes in pixels (width, height): small, so the image processor and the vision tower stay fast on 2 cores.
IMAGE_SIZES = [(28, 28), (56, 28), (28, 56), (56, 56), (42, 35), (30, 44)]
COLORS = ["red", "blue", "green"]
_RGB = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}
# The image processor's own bounds: 28*28 lets a 28-pixel image stay 2x2 patches (4 rows of pixel_values;
# 16 at Qwen's default 56*56), which keeps pixel_values and the recorded cases small.
MIN_PIXELS, MAX_PIXELS = 28 * 28, 112 * 112


def build_tiny_vl(dest: Path, base_tokenizer, *, seed: int = 0) -> dict[str, Path]:
    """DIR/vl_model, DIR/vl3_model, DIR/vl3moe_model and DIR/data/vl_images + datasets; the paths by name."""
    dest = Path(dest)
    data = dest / "data"
    data.mkdir(parents=True, exist_ok=True)
    images = write_images(data / "vl_images", seed)
    tokenizer = vl_tokenizer(base_tokenizer)
    out = {"data": data}
    for name, family in (
        ("vl_model", "qwen2_5_vl"),
        ("vl3_model", "qwen3_vl"),
        ("vl3moe_model", "qwen3_vl_moe"),
    ):
        path = dest / name
        path.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(path)
        image_processor(family).save_pretrained(path)
        build_vl_model(family, tokenizer, seed).save_pretrained(path)
        out[name] = path
    write_vl_datasets(data, [p.relative_to(data).as_posix() for p in images], random.Random(seed))
    return out


def vl_tokenizer(base_tokenizer):
    """The tiny text tokenizer plus Qwen's vision markers as special tokens, and Qwen2-VL's chat template."""
    import copy

    from runtime.data.templates import chat_template

    tokenizer = copy.deepcopy(base_tokenizer)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": VISION_TOKENS}, replace_extra_special_tokens=False
    )
    tokenizer.chat_template = chat_template("qwen2_vl")
    return tokenizer


def image_processor(family: str):
    """Qwen's image processor through its PIL backend (the torchvision one cannot load here)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    patch = 16 if family.startswith("qwen3_vl") else 14
    size = {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}
    return Qwen2VLImageProcessorPil(patch_size=patch, merge_size=2, temporal_patch_size=2, size=size)


def build_vl_model(family: str, tokenizer, seed: int):
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS}
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        # M-RoPE splits the 16 rotary dims of a head into temporal/height/width sections.
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    }
    vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64}
    if family == "qwen3_vl_moe":  # 4 experts of width 32, 2 per token
        text.update(moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2)
    if family.startswith("qwen3_vl"):
        text["head_dim"] = 16
        text["rope_parameters"]["mrope_interleaved"] = True
        vision.update(patch_size=16, num_position_embeddings=64, deepstack_visual_indexes=[1])
    else:
        vision.update(patch_size=14, window_size=56, fullatt_block_indexes=[1])
    config = AutoConfig.for_model(
        family,
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return AutoModelForImageTextToText.from_config(config)


def write_images(folder: Path, seed: int) -> list[Path]:
    """Small PNGs: a colored block on a gradient, one per size (deterministic, compresses well)."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for i, (w, h) in enumerate(IMAGE_SIZES):
        color = COLORS[i % len(COLORS)]
        image = Image.new("RGB", (w, h))
        image.putdata([((x * 255) // w, (y * 255) // h, 128) for y in range(h) for x in range(w)])
        x0, y0 = rng.randrange(w // 2), rng.randrange(h // 2)
        ImageDraw.Draw(image).rectangle([x0, y0, x0 + w // 3, y0 + h // 3], fill=_RGB[color])
        path = folder / f"{i}_{color}.png"
        image.save(path)
        paths.append(path)
    return paths


def write_vl_datasets(data: Path, images: list[str], rng: random.Random) -> None:
    """mllm_demo's shape: sharegpt `messages` (role/content) + `images`; an alpaca variant; RLHF-V's."""

    def color(path: str) -> str:
        return Path(path).stem.split("_")[1]

    sharegpt = []
    for i in range(24):
        first = images[i % len(images)]
        messages = [
            {"role": "user", "content": "<image>what color is the block?"},
            {"role": "assistant", "content": f"the block is {color(first)}"},
        ]
        row_images = [first]
        if i % 3 == 1:  # a second turn with a second image
            second = images[(i + 2) % len(images)]
            messages += [
                {"role": "user", "content": f"and here <image> {rng.choice(['count', 'name'])}?"},
                {"role": "assistant", "content": f"{color(second)} one"},
            ]
            row_images.append(second)
        sharegpt.append({"messages": messages, "images": row_images})
    alpaca = [
        {
            "instruction": "<image>name the color",
            "input": "" if i % 2 else "one word",
            "output": color(images[i % len(images)]),
            "images": [images[i % len(images)]],
        }
        for i in range(12)
    ]
    # RLHF-V's shape (LLaMA-Factory's rlhf_v): sharegpt `conversations` (from/value) + chosen/rejected
    preference = [
        {
            "conversations": [{"from": "human", "value": "<image>what color is the block?"}],
            "chosen": {"from": "gpt", "value": f"the block is {color(images[i % len(images)])}"},
            "rejected": {"from": "gpt", "value": f"the block is {color(images[(i + 1) % len(images)])}"},
            "images": [images[i % len(images)]],
        }
        for i in range(12)
    ]
    (data / "tiny_mllm.json").write_text(json.dumps(sharegpt, indent=1) + "\n", encoding="utf-8")
    (data / "tiny_mllm_dpo.json").write_text(json.dumps(preference, indent=1) + "\n", encoding="utf-8")
    (data / "tiny_mllm_alpaca.json").write_text(json.dumps(alpaca, indent=1) + "\n", encoding="utf-8")
    info_path = data / "dataset_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
    # LLaMA-Factory's mllm_demo entry, key for key.
    info["tiny_mllm"] = {
        "file_name": "tiny_mllm.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": tags,
    }
    info["tiny_mllm_alpaca"] = {
        "file_name": "tiny_mllm_alpaca.json",
        "columns": {"prompt": "instruction", "query": "input", "response": "output", "images": "images"},
    }
    info["tiny_mllm_dpo"] = {  # LLaMA-Factory's rlhf_v entry, key for key (a local file for its hub id)
        "file_name": "tiny_mllm_dpo.json",
        "ranking": True,
        "formatting": "sharegpt",
        "columns": {
            "messages": "conversations",
            "chosen": "chosen",
            "rejected": "rejected",
            "images": "images",
        },
    }
    info_path.write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
