"""Room on the node: /dev/shm (NCCL's intra-node buffers, DataLoader workers) and free disk under
output_dir for one checkpoint (check 8)."""

from __future__ import annotations

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


def check_disk(s: Settings, out_dir: Path, need: int) -> list[Finding]:
    if need <= 0:
        return []
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
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
                f"{human(free)} free under {existing}, one checkpoint needs about {human(need)}",
                "free space there or point output_dir at a larger filesystem",
            )
        ]
    return []
