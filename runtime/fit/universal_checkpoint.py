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
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
from pathlib import Path

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
    with contextlib.redirect_stdout(io.StringIO()):  # its progress prints and tqdm bars
        ds_to_universal.main(args)
    return target


def ensure_universal(checkpoint: str | Path) -> None:
    """Rank 0 converts while the others wait at a barrier; every rank then loads the universal copy."""
    from runtime.distributed import barrier, is_rank0

    if is_rank0():
        convert(Path(checkpoint))
    barrier()
