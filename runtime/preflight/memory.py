"""Check 11: the configured run's memory plan (runtime.contract.plan, what `xgen plan` prints) against the
memory this node's devices report, before any model loads. One line: what does not fit, by how much,
what to change. Only with cluster.device_memory_gb set (a number, a device name or `auto`)."""

from __future__ import annotations

import os
import shutil
from typing import Any

from runtime.contract.plan import misfit, read_shape, run_from_config, stated_memory
from runtime.contract.plan.devices import GIB, parse_npu_memory, parse_nvidia_memory
from runtime.preflight.devices import _run
from runtime.preflight.findings import Finding
from runtime.preflight.settings import Settings

NVIDIA_QUERY = ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"]


def reported(s: Settings) -> tuple[list[int], str]:
    """Bytes per device as this node's tool reports them (NPUs first, as the scripts detect), and the tool."""
    if s.device in ("auto", "npu") and shutil.which("npu-smi"):
        text, _ = _run(["npu-smi", "info"])
        found = parse_npu_memory(text or "")
        if found:
            return found, "npu-smi info"
    if s.device in ("auto", "cuda") and shutil.which("nvidia-smi"):
        text, _ = _run(NVIDIA_QUERY)
        found = parse_nvidia_memory(text or "")
        if found:
            return found, "nvidia-smi"
    return [], ""


def check_memory(s: Settings, cfg: Any) -> list[Finding]:
    """The plan against the smallest device here: the memory the node reports (`auto`, or a stated value
    larger than what the node has), else the stated one."""
    if s.device_memory is None or s.device == "cpu" or cfg is None or not cfg.model_name_or_path:
        return []
    stated = stated_memory(s.device_memory)
    sizes, tool = reported(s)
    if not sizes and stated is None:
        return [
            Finding(
                s.host,
                "memory",
                "device_memory_gb is auto but no nvidia-smi/npu-smi answered here; memory plan not checked",
                level="note",
            )
        ]
    memory = min(sizes) if sizes else stated
    assert memory is not None
    source = (
        f"{tool} reports {memory / GIB:.1f} GiB" if sizes else f"cluster.device_memory_gb {s.device_memory}"
    )
    if sizes and stated is not None and stated > memory:
        source += f" (less than the stated {s.device_memory})"
    path = cfg.model_name_or_path
    path = path if os.path.isabs(path) else os.path.join(s.workdir, path)
    try:
        shape = read_shape(path)
    except (OSError, KeyError, ValueError):
        return [
            Finding(
                s.host, "memory", f"no readable config.json in {path}; memory plan not checked", level="note"
            )
        ]
    world = s.nnodes * (s.devices_per_node or len(sizes) or 1)
    run = run_from_config(shape, cfg, world, "npu" if tool.startswith("npu") else "cuda")
    line = misfit(run, memory, cfg.gradient_accumulation_steps)
    if line is None:
        return []
    return [Finding(s.host, "cluster.device_memory_gb", f"{source}; {line}")]
