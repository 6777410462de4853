"""Which models runtime/mm trains: a model folder's config.json model_type against LLaMA-Factory's
template for it. Torch-free and light, so the perf plan and the config rules can ask before anything loads."""

from __future__ import annotations

import json
from pathlib import Path

VISION_STAGES = ("sft", "dpo")  # the stages LLaMA-Factory's examples train vision-language models with
# transformers model_type → LLaMA-Factory's template for it (what `template:` must name)
FAMILIES = {
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_vl",
    "qwen3_vl": "qwen3_vl",
    "qwen3_vl_moe": "qwen3_vl",
}


def _config(path: str) -> dict:
    try:
        found = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def model_type(path: str) -> str | None:
    """The model folder's config.json model_type (None when there is none to read)."""
    return _config(path).get("model_type")


def unsupported_family(path: str) -> str | None:
    """The model_type of a vision-language model (its config.json has a vision_config) that runtime/mm
    does not train (MOSS-VL, LLaVA, Gemma 3, InternVL …), else None."""
    config = _config(path)
    kind = config.get("model_type")
    return str(kind) if "vision_config" in config and kind not in FAMILIES else None


def unsupported_message(kind: str) -> str:
    return (
        f"{kind}: this vision-language family is not supported for image rows (Qwen2-VL, Qwen2.5-VL, "
        "Qwen3-VL and Qwen3-VL-MoE train on images here; this one trains on text rows only); use one of "
        "those, a text-only dataset, or llamafactory-cli for this model"
    )


def vision_model_type(path: str) -> str | None:
    """The model_type of a vision-language model the runtime trains, else None."""
    kind = model_type(path)
    return kind if kind in FAMILIES else None


def refuse_stage(kind: str, stage: str) -> None:
    """ConfigError on `stage`: a stage runtime/mm does not train this vision-language model with."""
    from runtime.config import ConfigError

    raise ConfigError(
        "stage", f"{kind}: vision-language models train with stage sft or dpo here (not {stage})"
    )
