"""The devices a node has (npu-smi, nvidia-smi) against the device ids a launch names.

`ASCEND_RT_VISIBLE_DEVICES` / `CUDA_VISIBLE_DEVICES` (and DeepSpeed's `--include host:ids`, which xgen
builds from them) count from 0 among the devices this node or container shows: host numbering inside a
container with two NPUs (`ASCEND_RT_VISIBLE_DEVICES=4,5`) starts ranks that cannot open a device. The
preflight on each node and `xgen check` (on a machine that is one of the job's nodes) both judge an id
list here, so they say the same line. Standard library only: the generator imports it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

TOOL_TIMEOUT = 15.0
# What each kind of device is called, the tool that counts it, and the variable that picks among them.
NPU = ("NPU", "npu-smi info -l", "ASCEND_RT_VISIBLE_DEVICES")
GPU = ("GPU", "nvidia-smi -L", "CUDA_VISIBLE_DEVICES")


@dataclass(frozen=True)
class Seen:
    """What a vendor tool shows on this node: the count and, for GPUs, each index's UUID."""

    kind: str  # NPU | GPU
    tool: str  # the command that showed them
    count: int
    uuids: tuple[str, ...] = ()


def parse_npu_count(text: str) -> int | None:
    m = re.search(r"Total Count\s*:\s*(\d+)", text)
    return int(m.group(1)) if m else None


def parse_gpu_list(text: str) -> list[tuple[str, str]]:
    """(index, uuid) per `nvidia-smi -L` line."""
    return re.findall(r"^GPU (\d+):.*\(UUID: ([^)]+)\)", text, re.MULTILINE)


def split_ids(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def id_problem(ids: list[str], seen: Seen, named_by: str) -> str | None:
    """Why `ids` (shown in the line as `named_by`, e.g. `4,5`) are not devices of this node, or None.
    Indexes must be below the count the tool shows; a GPU may also be named by (a prefix of) its UUID.
    MIG instances are left to CUDA."""
    bad = []
    for item in ids:
        if item.isdigit():
            if int(item) >= seen.count:
                bad.append(item)
        elif seen.kind == "GPU" and item.startswith("MIG-"):
            continue
        elif seen.kind == "GPU" and item.startswith("GPU-"):
            if not any(uuid.startswith(item) for uuid in seen.uuids):
                bad.append(item)
        else:
            bad.append(item)
    if not bad:
        return None
    have = f"{seen.count} {seen.kind}s" if seen.count != 1 else f"1 {seen.kind}"
    valid = "none" if seen.count == 0 else "0" if seen.count == 1 else f"0-{seen.count - 1}"
    return (
        f"{named_by} names {seen.kind} {', '.join(bad)}, but `{seen.tool}` shows {have} here (ids {valid}); "
        "ids count from 0 among the devices this node or container shows, not the host's numbering: "
        f"use ids {valid}"
    )


def _run(argv: list[str]) -> str | None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def seen_here() -> list[Seen]:
    """The NPUs and GPUs this machine's tools show (none when a tool is missing, fails or hangs)."""
    found = []
    if shutil.which("npu-smi"):
        count = parse_npu_count(_run(["npu-smi", "info", "-l"]) or "")
        if count:
            found.append(Seen(*NPU[:2], count))
    if shutil.which("nvidia-smi"):
        gpus = parse_gpu_list(_run(["nvidia-smi", "-L"]) or "")
        if gpus:
            found.append(Seen(*GPU[:2], len(gpus), tuple(uuid for _, uuid in gpus)))
    return found
