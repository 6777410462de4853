"""What one node says about itself in the doctor's table (torch-free, every tool with a time limit)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from typing import Any

from runtime.preflight import versions
from runtime.preflight.network import interfaces
from runtime.preflight.resources import human


def _run(argv: list[str], timeout: float = 10.0) -> str | None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def chosen_nic(nic: str | None) -> str | None:
    """The interface NCCL/gloo will use: the first present one named by cluster.nic."""
    if not nic or nic.startswith("^"):
        return None
    names = interfaces()
    for want in nic.lstrip("=").split(","):
        for have in names:
            if have == want or (not nic.startswith("=") and have.startswith(want)):
                return have
    return None


def nic_address(name: str) -> str | None:
    text = _run(["ip", "-o", "-4", "addr", "show", "dev", name])
    m = re.search(r"inet (\S+)", text or "")
    return m.group(1) if m else None


def link_speed_mbps(name: str) -> int | None:
    """/sys/class/net/<nic>/speed in Mb/s where the driver knows it (-1 or an error otherwise)."""
    try:
        value = int(open(f"/sys/class/net/{name}/speed").read().strip())
    except (OSError, ValueError):
        return None
    return value if value > 0 else None


def ib_ports() -> list[dict[str, str]] | None:
    """`ibstat` port states, or None when there is no ibstat (said once in the report)."""
    if shutil.which("ibstat") is None:
        return None
    text = _run(["ibstat"]) or ""
    ports = []
    ca = port = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("CA '"):
            ca = line[4:-1]
        elif line.startswith("Port ") and line.endswith(":"):
            port = line[5:-1]
        elif line.startswith("State:"):
            ports.append({"ca": ca, "port": port, "state": line.split(":", 1)[1].strip()})
    return ports


def collect(nic: str | None) -> dict[str, Any]:
    name = chosen_nic(nic or os.environ.get("NCCL_SOCKET_IFNAME") or os.environ.get("GLOO_SOCKET_IFNAME"))
    try:
        st = os.statvfs("/dev/shm")
        shm = human(st.f_blocks * st.f_frsize)
    except OSError:
        shm = "none"
    return {
        "host": socket.gethostname(),
        "device": os.environ.get("XGEN_DEVICE", "cpu"),
        "devices": int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
        "versions": versions.collect(),
        "nic": name,
        "address": nic_address(name) if name else None,
        "link_mbps": link_speed_mbps(name) if name else None,
        "shm": shm,
        "ib": ib_ports(),
    }
