"""DeepSpeed JSON for the named ZeRO stages (`z0` … `z3_offload`).

Pure Python on purpose: the generator (`xgen`) imports this to validate `train.deepspeed`
without importing torch or deepspeed. Batch-size and precision fields are "auto" so the
HF Trainer fills them from the training arguments; that keeps DeepSpeed's batch math and
the Trainer's in agreement on every world size.
"""

from __future__ import annotations

import copy
from typing import Any

NAMED_STAGES: tuple[str, ...] = ("z0", "z1", "z2", "z2_offload", "z3", "z3_offload")

_COMMON: dict[str, Any] = {
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "zero_allow_untested_optimizer": True,
    "fp16": {
        "enabled": "auto",
        "loss_scale": 0,
        "loss_scale_window": 1000,
        "initial_scale_power": 16,
        "hysteresis": 2,
        "min_loss_scale": 1,
    },
    "bf16": {"enabled": "auto"},
}

_OFFLOAD = {"device": "cpu", "pin_memory": True}


def _zero_section(stage: int, offload: bool) -> dict[str, Any]:
    section: dict[str, Any] = {"stage": stage}
    if stage in (1, 2):
        section.update(
            allgather_partitions=True,
            allgather_bucket_size=5e8,
            overlap_comm=False,
            reduce_scatter=True,
            reduce_bucket_size=5e8,
            contiguous_gradients=True,
            round_robin_gradients=True,
        )
    if stage == 3:
        section.update(
            overlap_comm=False,
            contiguous_gradients=True,
            sub_group_size=1e9,
            reduce_bucket_size="auto",
            stage3_prefetch_bucket_size="auto",
            stage3_param_persistence_threshold="auto",
            stage3_max_live_parameters=1e9,
            stage3_max_reuse_distance=1e9,
            # Without this a ZeRO-3 save writes empty/partitioned weights (LLaMA-Factory #2604, #7532).
            stage3_gather_16bit_weights_on_model_save=True,
        )
    if offload:
        section["offload_optimizer"] = dict(_OFFLOAD)
        if stage == 3:
            section["offload_param"] = dict(_OFFLOAD)
    return section


def zero_config(name: str) -> dict[str, Any]:
    """Return the DeepSpeed config dict for a named stage; raise ValueError for an unknown name."""
    if name not in NAMED_STAGES:
        raise ValueError(
            f"unknown ZeRO stage {name!r}; choose one of {', '.join(NAMED_STAGES)} or a JSON path"
        )
    stage = int(name[1])
    config = copy.deepcopy(_COMMON)
    config["zero_optimization"] = _zero_section(stage, offload=name.endswith("_offload"))
    return config
