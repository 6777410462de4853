"""What one node says about itself in the doctor's table (torch-free, every tool with a time limit)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from typing import Any

from runtime.preflight import versions
from runtime.preflight.network import interfaces, is_loopback, resolve
from runtime.preflight.resources import human

ROUTED = "route to MASTER_ADDR"  # `nic_from` when no setting named the interface


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


def routed_nic(host: str) -> str | None:
    """The interface this node's traffic to `host` (MASTER_ADDR) leaves by, as `ip -o route get` says: the
    one the rendezvous uses, and the sockets too when no *_SOCKET_IFNAME names one (NCCL first tries `ib*`
    interfaces, then any but docker and lo; the route is the best guess without asking NCCL). None for a
    loopback master, or without `ip`."""
    addr = resolve(host)
    if addr is None or is_loopback(addr):
        return None
    route = _run(["ip", "-o", "route", "get", addr]) or ""
    if route.startswith("local"):
        # The master's own address, routed over lo here: the interface holding it is the one its peers
        # reach it on ("2: eth0    inet 10.0.0.10/24 …").
        held = re.match(r"\d+:\s+([^\s@]+)", _run(["ip", "-o", "addr", "show", "to", addr]) or "")
        return held.group(1) if held else None
    dev = re.search(r"\bdev (\S+)", route)  # "10.0.0.10 dev eth0 src 10.0.0.11 uid 0 \    cache"
    return dev.group(1) if dev else None


def which_nic(nic: str | None) -> tuple[str | None, str | None]:
    """(interface, how it was found): cluster.nic, else the *_SOCKET_IFNAME the script exported, else the
    route to MASTER_ADDR (an exclusion list such as "^docker,lo" names no one interface: the route too)."""
    for source, value in (
        ("cluster.nic", nic),
        ("NCCL_SOCKET_IFNAME", os.environ.get("NCCL_SOCKET_IFNAME")),
        ("GLOO_SOCKET_IFNAME", os.environ.get("GLOO_SOCKET_IFNAME")),
    ):
        if value:
            name = chosen_nic(value)
            if name:
                return name, source
            break
    master = os.environ.get("MASTER_ADDR")
    name = routed_nic(master) if master else None
    return (name, ROUTED) if name else (None, None)


def nic_address(name: str) -> str | None:
    text = _run(["ip", "-o", "-4", "addr", "show", "dev", name])
    m = re.search(r"inet (\S+)", text or "")
    return m.group(1) if m else None


def link_speed_mbps(name: str, root: str = "/sys/class/net") -> int | None:
    """/sys/class/net/<nic>/speed in Mb/s where the driver knows it (-1 or an error otherwise; a veth
    says 10000)."""
    try:
        with open(f"{root}/{name}/speed") as fh:
            value = int(fh.read().strip())
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
    name, source = which_nic(nic)
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
        "nic_from": source,
        "address": nic_address(name) if name else None,
        "link_mbps": link_speed_mbps(name) if name else None,
        "shm": shm,
        "ib": ib_ports(),
        "ib_disabled": os.environ.get("NCCL_IB_DISABLE") == "1",
    }
