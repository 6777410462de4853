"""Room on the node: /dev/shm (NCCL's intra-node buffers, DataLoader workers) and free disk under
output_dir for the whole run's checkpoints and the final save (check 8)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from runtime.preflight.findings import Finding
from runtime.preflight.settings import Settings

GiB = 1 << 30


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def check_shm(s: Settings, path: str = "/dev/shm") -> list[Finding]:
    if s.min_shm_gb <= 0:
        return []
    try:
        st = os.statvfs(path)
    except OSError:
        return [
            Finding(s.host, "/dev/shm", f"{path} is missing here, shared memory not checked", level="note")
        ]
    size = st.f_blocks * st.f_frsize
    if size < s.min_shm_gb * GiB:
        free = st.f_bavail * st.f_frsize
        return [
            Finding(
                s.host,
                "/dev/shm",
                f"{human(size)} here ({human(free)} free), below cluster.min_shm_gb={s.min_shm_gb:g}",
                "give the node or container a larger /dev/shm (docker run --shm-size=16g, or "
                "mount -o remount,size=16G /dev/shm), or lower cluster.min_shm_gb",
            )
        ]
    return []


def checkpoint_bytes(cfg: Any, weights: int) -> int:
    """A rough size of one checkpoint from the model's weight files (0 when unknown).

    Full/freeze fine-tuning saves the weights plus AdamW's two moments and fp32 master weights (about
    weights x 7 for bf16 weights, x 3 for fp32 ones; x 4 is the middle); without optimizer state
    (save_only_model, or no checkpoints at all) only the final weights. LoRA saves a small adapter: 5%.
    """
    if weights <= 0:
        return 0
    if getattr(cfg, "finetuning_type", "full") == "lora":
        return weights // 20
    with_optimizer = getattr(cfg, "save_strategy", "no") != "no" and not getattr(
        cfg, "save_only_model", False
    )
    return weights * 4 if with_optimizer else weights


def checkpoints_at_once(cfg: Any) -> tuple[int, str]:
    """How many checkpoints output_dir holds at most during the run, and how that was counted.

    save_total_limit N: N complete ones plus the one being staged before the oldest is removed (N + 1).
    Without it every checkpoint stays: max_steps / save_steps (a save_steps below 1 is a fraction of the
    run), or one per epoch. An epoch-based run saved by steps has a count that depends on the data: one
    checkpoint is checked and the reason says so."""
    strategy = getattr(cfg, "save_strategy", "steps")
    if strategy == "no":
        return 0, "no checkpoints (save_strategy: no)"
    limit = getattr(cfg, "save_total_limit", None)
    count: int | None = None
    max_steps = getattr(cfg, "max_steps", -1) or -1
    every = getattr(cfg, "save_steps", 500) or 500
    if strategy == "steps" and every < 1:
        count = math.ceil(1 / every)
    elif strategy == "steps" and max_steps > 0:
        count = math.ceil(max_steps / every)
    elif strategy == "epoch":
        count = math.ceil(getattr(cfg, "num_train_epochs", 1) or 1)
    if limit:
        bound = limit + 1
        return (min(count, bound), "save_total_limit") if count else (bound, "save_total_limit")
    if count is None:
        return 1, "at least 1 checkpoint (the count depends on the data; set save_total_limit to bound it)"
    return count, "every checkpoint (no save_total_limit)"


def run_bytes(cfg: Any, weights: int) -> tuple[int, str]:
    """Bytes the run's saves need at once under output_dir (0 when the model's size is unknown), and
    the sum in words: checkpoints x one checkpoint + the final save (weights, or a LoRA adapter)."""
    one = checkpoint_bytes(cfg, weights)
    if one <= 0:
        return 0, ""
    count, how = checkpoints_at_once(cfg)
    final = weights // 20 if getattr(cfg, "finetuning_type", "full") == "lora" else weights
    need = count * one + final
    return need, f"{count} x {human(one)} ({how}) + the final save {human(final)}"


def nearest_existing(path: Path) -> Path:
    """`path`, or its nearest parent that exists (output_dir before the run creates it)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(s: Settings, out_dir: Path, need: int, detail: str = "") -> list[Finding]:
    if need <= 0:
        return []
    existing = nearest_existing(out_dir)
    try:
        st = os.statvfs(existing)
    except OSError:
        return []
    free = st.f_bavail * st.f_frsize
    if free < need:
        return [
            Finding(
                s.host,
                "train.output_dir",
                f"{human(free)} free under {existing}, the run's saves need about {human(need)}"
                + (f": {detail}" if detail else ""),
                "free space there, set save_total_limit, or point output_dir at a larger filesystem",
            )
        ]
    return []
