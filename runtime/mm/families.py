"""Which models runtime/mm trains: a model folder's config.json model_type against LLaMA-Factory's
template for it. Torch-free and light, so the perf plan and the config rules can ask before anything loads."""

from __future__ import annotations

import json
from pathlib import Path

# transformers model_type → LLaMA-Factory's template for it (what `template:` must name)
FAMILIES = {
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_vl",
    "qwen3_vl": "qwen3_vl",
    "qwen3_vl_moe": "qwen3_vl",
}


def model_type(path: str) -> str | None:
    """The model folder's config.json model_type (None when there is none to read)."""
    try:
        return json.loads((Path(path) / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def vision_model_type(path: str) -> str | None:
    """The model_type of a vision-language model the runtime trains, else None."""
    kind = model_type(path)
    return kind if kind in FAMILIES else None
