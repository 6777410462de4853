"""A ZeRO checkpoint written by N ranks, loaded by M: DeepSpeed's universal checkpoint.

ZeRO-1/2/3 keep each rank's slice of the optimizer state (and under ZeRO-3, of the weights) in its own
file, so DeepSpeed's loader needs the world size that wrote them. DeepSpeed's own converter
(`deepspeed.checkpoint.ds_to_universal`) merges the slices into one file per parameter, which an engine
of any world size loads when its config says `"checkpoint": {"load_universal": true}` (DeepSpeed's
universal checkpointing tutorial). runtime/fit/run_record.py sets that key when the world size changed;
`ensure_universal` runs the converter once, on rank 0, before Trainer loads the checkpoint.

The converted copy lives inside the checkpoint, next to the original shards: `global_stepN_universal/`
and DeepSpeed's `latest_universal` file (written by the converter last, so it marks a finished
conversion; a conversion cut short is removed and redone).

ZeRO-1/2 with `round_robin_gradients` (runtime/contract/zero.py turns it on) on more than one rank lays
the parameters out in its flat buffers in round-robin order, but DeepSpeed 0.19's `_link_all_hp_params`
maps each parameter to that buffer as if they lay in model order (it passes the real offsets only when
there is alignment padding). Both ends of a universal checkpoint read that map: the converter cuts the
shards by the `param_slice_mappings` saved from it, and the loader writes each parameter's merged state
through it. So the converter here is given maps recomputed from the flat layout the checkpoint itself
records (`param_shapes` in buffer order, `param_alignment_paddings`), and the loading engine links with
the real offsets (`_link_hp_params_at_real_offsets`). Without both, a resume on another world size
continues from scrambled weights and moments (the loss jumps back up at the first step).

ZeRO-3's universal loader gives every sub-group's optimizer state the same `step` tensor object, and
torch's Adam adds 1 to it in place once per sub-group per optimizer step, so the bias correction of all
but the first sub-group runs ahead and the losses drift from the uninterrupted run's
(`_one_step_per_subgroup` gives each its own copy).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
from pathlib import Path
from typing import Any

LATEST = "latest"  # DeepSpeed's file naming the tag of the checkpoint's shards
LATEST_UNIVERSAL = "latest_universal"


def wants_universal(deepspeed_config: dict | None) -> bool:
    return bool((deepspeed_config or {}).get("checkpoint", {}).get("load_universal"))


def convert(checkpoint: Path) -> Path:
    """Convert checkpoint/<tag> (the tag `latest` names) to checkpoint/<tag>_universal; idempotent."""
    from deepspeed.checkpoint import ds_to_universal

    tag = (checkpoint / LATEST).read_text().strip()
    target = checkpoint / f"{tag}_universal"
    if (checkpoint / LATEST_UNIVERSAL).is_file() and target.is_dir():
        return target
    shutil.rmtree(target, ignore_errors=True)
    args = argparse.Namespace(
        input_folder=str(checkpoint / tag),
        output_folder=str(target),
        num_extract_workers=1,  # in this process: no worker pool inside a training rank
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        # HF Trainer's checkpoints lack the universal_checkpoint_info Megatron-DeepSpeed writes.
        inject_missing_state=True,
    )
    with contextlib.redirect_stdout(io.StringIO()), _slices_from_flat_layout(ds_to_universal):
        ds_to_universal.main(args)  # its progress prints kept quiet
    return target


def ensure_universal(checkpoint: str | Path) -> None:
    """Rank 0 converts while the others wait at a barrier; every rank then loads the universal copy."""
    from runtime.distributed import barrier, is_rank0

    _link_hp_params_at_real_offsets()
    _one_step_per_subgroup()
    if is_rank0():
        convert(Path(checkpoint))
    barrier()


def flat_layout_slices(
    param_shapes: dict[str, Any], paddings: list[int], partition_size: int, rank: int
) -> dict[str, tuple[int, int]]:
    """name -> (start in this rank's partition, numel) of every parameter that overlaps it, for a ZeRO-1/2
    flat group laid out in `param_shapes` order, each parameter followed by its alignment padding."""
    import math

    low, high = rank * partition_size, (rank + 1) * partition_size
    slices, offset = {}, 0
    for index, (name, shape) in enumerate(param_shapes.items()):
        numel = math.prod(shape)
        start, end = max(offset, low), min(offset + numel, high)
        if start < end:
            slices[name] = (start - low, end - start)
        offset += numel + (paddings[index] if index < len(paddings) else 0)
    return slices


@contextlib.contextmanager
def _slices_from_flat_layout(ds_to_universal: Any):
    """While the converter runs, each ZeRO-1/2 shard it reads carries slice maps recomputed from the flat
    layout (the module docstring says why the saved ones can be wrong)."""
    import torch
    from deepspeed.checkpoint import constants as c
    from deepspeed.utils.tensor_fragment import fragment_address

    original = ds_to_universal.DeepSpeedCheckpoint
    shapes_of: dict[str, list[dict[str, Any]]] = {}

    class FlatLayoutCheckpoint(original):  # type: ignore[misc, valid-type]
        def get_zero_checkpoint_state(self, pp_index, tp_index, dp_index, **kwargs):
            sd = super().get_zero_checkpoint_state(pp_index, tp_index, dp_index, **kwargs)
            optim = sd[c.OPTIMIZER_STATE_DICT]
            if c.PARAM_SLICE_MAPPINGS not in optim:
                return sd
            model_file = self.mp_rank_files[pp_index * self.tp_degree + tp_index]
            if model_file not in shapes_of:  # read once, mapped: the file also holds the whole model
                model = torch.load(model_file, map_location="cpu", mmap=True, weights_only=False)
                shapes_of[model_file] = model[c.PARAM_SHAPES]
            shapes = shapes_of[model_file]
            paddings = optim.get(c.PARAM_ALIGNMENT_PADDINGS) or [[] for _ in shapes]
            partitions = optim[c.SINGLE_PARTITION_OF_FP32_GROUPS]
            optim[c.PARAM_SLICE_MAPPINGS] = [
                {
                    name: fragment_address(numel=numel, start=start)
                    for name, (start, numel) in flat_layout_slices(
                        shapes[group], paddings[group], partitions[group].numel(), dp_index
                    ).items()
                }
                for group in range(len(partitions))
            ]
            return sd

    ds_to_universal.DeepSpeedCheckpoint = FlatLayoutCheckpoint
    try:
        yield
    finally:
        ds_to_universal.DeepSpeedCheckpoint = original


def _link_hp_params_at_real_offsets() -> None:
    """Make ZeRO-1/2 link every parameter to its real offset in the flat buffer (the module docstring
    says why); installed once, before the engine is built."""
    from deepspeed.runtime.zero import stage_1_and_2
    from deepspeed.utils import link_hp_params

    optimizer = stage_1_and_2.DeepSpeedZeroOptimizer
    if getattr(optimizer._link_all_hp_params, "_xgen_real_offsets", False):
        return

    def _link_all_hp_params(self: Any) -> None:
        if self.cpu_offload:
            self._get_offload_gradient_dict()
        for i, _ in enumerate(self.optimizer.param_groups):
            group = self.real_dp_process_group[i]
            world = stage_1_and_2.dist.get_world_size(group=group)
            partition_size = self.bit16_groups_flat[i].numel() // world
            offset_of = {
                id(p): offset
                for p, offset in zip(
                    self.round_robin_bit16_groups[i], self.round_robin_bit16_offsets[i], strict=True
                )
            }
            link_hp_params(
                lp_param_list=self.bit16_groups[i],
                flat_hp_partition=self.single_partition_of_fp32_groups[i],
                gradient_dict=self.averaged_gradients,
                offload_gradient_dict=self.offload_gradient_dict,
                use_offload=self.cpu_offload,
                param_group_index=i,
                partition_start=stage_1_and_2.dist.get_rank(group=group) * partition_size,
                partition_size=partition_size,
                dp_group=group,
                param_offsets=[offset_of[id(p)] for p in self.bit16_groups[i]],
            )

    _link_all_hp_params._xgen_real_offsets = True  # type: ignore[attr-defined]
    optimizer._link_all_hp_params = _link_all_hp_params


def _one_step_per_subgroup() -> None:
    """After ZeRO-3's universal load, every sub-group's `step` is its own tensor (the module docstring
    says why); installed once, before the checkpoint loads."""
    from deepspeed.runtime.zero import stage3

    optimizer = stage3.DeepSpeedZeroOptimizer_Stage3
    original = optimizer.load_hp_checkpoint_state_from_checkpoint_dir_stage3
    if getattr(original, "_xgen_own_steps", False):
        return

    def load_hp_checkpoint_state_from_checkpoint_dir_stage3(self: Any, checkpoint_dir: str) -> None:
        original(self, checkpoint_dir)
        for fp32_param in self.fp32_partitioned_groups_flat:
            state = self.optimizer.state.get(fp32_param, {})
            if hasattr(state.get("step"), "clone"):
                state["step"] = state["step"].clone()

    load_hp_checkpoint_state_from_checkpoint_dir_stage3._xgen_own_steps = True  # type: ignore[attr-defined]
    optimizer.load_hp_checkpoint_state_from_checkpoint_dir_stage3 = (
        load_hp_checkpoint_state_from_checkpoint_dir_stage3
    )
