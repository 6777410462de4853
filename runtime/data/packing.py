"""Padding-free packing: a batch of examples flattened into one row whose position_ids restart at 0
for every example, like transformers' DataCollatorWithFlattening.

No attention_mask is passed: transformers then reads packed sequences from position_ids and builds a
block-diagonal causal mask (eager, sdpa, flex) or uses varlen kernels (flash attention), so examples
never attend to each other. tests/runtime/test_data_packing.py checks packed logits == per-example
logits for eager and sdpa on CPU. Any other implementation is refused rather than trusted.
The model must run without a KV cache (use_cache False): check_packing_support(model) makes sure.
"""

from __future__ import annotations

from typing import Any

from runtime.config import ConfigError

IGNORE_INDEX = -100
# Implementations whose transformers code path isolates packed sequences given position_ids only.
PACKING_ATTENTION = ("eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3")


def check_packing_support(model_or_attn: Any) -> None:
    """Call after loading the model when packing is on: never let packed examples cross-attend silently.

    Takes the model (or its attention implementation name). Given the model it also turns the KV cache
    off: transformers only reads packed sequences from position_ids when no cache is passed, and a
    forward with use_cache=True creates one. (Trainer already sets config.use_cache from
    TrainingArguments.use_cache, False by default; this keeps it so outside Trainer too.)
    """
    config = getattr(model_or_attn, "config", None)
    attn = getattr(config, "_attn_implementation", None) if config is not None else model_or_attn
    if attn not in PACKING_ATTENTION:
        raise ConfigError(
            "packing",
            f"packed examples are kept apart only with attention {', '.join(PACKING_ATTENTION)}; "
            f"the model uses {attn!r}: set packing: false or another flash_attn",
        )
    if config is not None:
        config.use_cache = False


def flatten(features: list[dict]) -> dict[str, list[int]]:
    """One row: input_ids and labels concatenated, position_ids restarting per example (or per document
    inside a pt block, when the example brings its own position_ids). The first label of each sequence is
    -100: it would otherwise be predicted from the end of the previous example."""
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    for feature in features:
        ids = list(feature["input_ids"])
        positions = list(feature.get("position_ids") or range(len(ids)))
        example_labels = list(feature.get("labels", ids))
        input_ids += ids
        position_ids += positions
        labels += [
            IGNORE_INDEX if p == 0 else label for p, label in zip(positions, example_labels, strict=True)
        ]
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
