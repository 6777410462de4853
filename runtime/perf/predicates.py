"""What every perf plan asks of a config: may `perf: auto` choose this key, is this package installed.

Shared by the device-neutral plan (runtime/perf/plan.py) and the NPU plan (runtime/perf/npu.py), which
both import from here and never from each other. Torch-free.
"""

from __future__ import annotations

import importlib.util

from runtime.config import TrainConfig

# Stages whose batches are plain token streams with labels: the only ones packing and FLCE apply to.
TUNED_STAGES = ("pt", "sft")
PLAIN_ADAMW = "adamw_torch"


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def is_set(cfg: TrainConfig, key: str) -> bool:
    """A key the user wrote is never overridden: `packing: false` stays false under perf auto."""
    return key in cfg.explicit


def auto_chooses(cfg: TrainConfig, key: str) -> bool:
    """perf auto may choose this key: it is unset, the stage is pt/sft and the run trains (one that only
    predicts, do_predict, generates from left-padded prompts: no lever applies; runtime/perf/npu.py too)."""
    trains = cfg.do_train or not cfg.do_predict
    return cfg.perf == "auto" and not is_set(cfg, key) and cfg.stage in TUNED_STAGES and trains


def tunes(cfg: TrainConfig, key: str, device: str) -> bool:
    """perf auto may choose this key and the device is CUDA."""
    return auto_chooses(cfg, key) and device == "cuda"
