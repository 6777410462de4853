"""How much memory one device has: a number of GiB, a known device name, or what the node's tool reports.

`cluster.device_memory_gb` takes any of the three; `auto` is read on each node by the preflight
(`nvidia-smi --query-gpu=memory.total`, `npu-smi info`). Standard library only.
"""

from __future__ import annotations

import re

GIB = 1024**3
MIB = 1024**2

# memory.total as the vendor tool reports it, in MiB (what a job can address, not the marketing GB).
KNOWN_DEVICES: dict[str, int] = {
    "H100-80GB": 81559,
    "H800-80GB": 81559,
    "H100-94GB": 95830,
    "H200-141GB": 143771,
    "A100-40GB": 40960,
    "A100-80GB": 81920,
    "A800-80GB": 81920,
    "L40S-48GB": 46068,
    "A10-24GB": 23028,
    "RTX4090-24GB": 24564,
    "V100-32GB": 32768,
    "910B-64GB": 65536,
    "910B-32GB": 32768,
}


def known_device(name: str) -> int | None:
    """Bytes of a device named like the table (case and `Ascend ` prefix ignored), or None."""
    wanted = name.strip().upper().removeprefix("ASCEND ").replace(" ", "-")
    for key, mib in KNOWN_DEVICES.items():
        if key.upper() == wanted:
            return mib * MIB
    return None


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


MAX_DEVICE_GIB = 4096  # above any accelerator's memory: a value in bytes or MB given as GiB


def memory_setting_problem(value: object) -> str | None:
    """Why a `cluster.device_memory_gb` value is not usable, or None (None, `auto`, > 0, a known name)."""
    if value is None or value == "auto":
        return None
    number = _number(value)
    if number is not None:
        if number > MAX_DEVICE_GIB:
            return f"{value} GiB per device is more than any accelerator has; give GiB per device (e.g. 80)"
        return None if number > 0 else f"must be > 0 GiB, got {value}"
    if isinstance(value, str) and known_device(value) is not None:
        return None
    import difflib

    close = difflib.get_close_matches(str(value).upper(), [k.upper() for k in KNOWN_DEVICES], n=1, cutoff=0.5)
    hint = next((f"did you mean {k}? " for k in KNOWN_DEVICES if close and k.upper() == close[0]), "")
    names = ", ".join(KNOWN_DEVICES)
    return f"{value!r} is not a number of GiB, `auto` or a known device; {hint}known: {names}"


def stated_memory(value: object) -> int | None:
    """Bytes per device the config states; None for unset or `auto` (the node says)."""
    if value is None or value == "auto":
        return None
    number = _number(value)
    if number is not None:
        return int(number * GIB)
    return known_device(str(value))


def parse_nvidia_memory(text: str) -> list[int]:
    """Bytes per GPU from `nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits` (MiB)."""
    return [int(m) * MIB for m in re.findall(r"^\s*(\d+)(?:\s*MiB)?\s*$", text, re.MULTILINE)]


def parse_npu_memory(text: str) -> list[int]:
    """Bytes per NPU chip from `npu-smi info`: the last `used / total` (HBM-Usage, MB) of each chip row
    (the row carrying the chip's PCI bus id)."""
    found = []
    for line in text.splitlines():
        if re.search(r"[0-9A-Fa-f]{4}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.\d", line):
            pairs = re.findall(r"(\d+)\s*/\s*(\d+)", line)
            if pairs:
                found.append(int(pairs[-1][1]) * MIB)
    return found
