"""Names and interfaces: the node's hostname, the master address as this node sees it, cluster.nic,
and the InfiniBand switch. All local, no traffic (the master port is probed in `exchange`)."""

from __future__ import annotations

import ipaddress
import os
import socket

from runtime.preflight.findings import Finding
from runtime.preflight.settings import Settings

HOSTS_FIX = "fix /etc/hosts or DNS so it resolves to the address other nodes reach"


def resolve(name: str) -> str | None:
    """The first address `name` resolves to (what sockets and torch use), or None."""
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return None
    return str(infos[0][4][0]) if infos else None


def is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr.split("%")[0]).is_loopback
    except ValueError:
        return False


def check_names(s: Settings) -> list[Finding]:
    """Check 1: with more than one node, neither this node's hostname nor the master may be loopback."""
    out: list[Finding] = []
    if s.nnodes < 2:
        return out
    hostname = socket.gethostname()
    addr = resolve(hostname)
    if addr is None:
        out.append(Finding(s.host, "hostname", f"{hostname} does not resolve here", HOSTS_FIX))
    elif is_loopback(addr):
        out.append(
            Finding(
                s.host,
                "hostname",
                f"{hostname} resolves to loopback {addr} here, so peers get an address they cannot reach",
                HOSTS_FIX + f" (drop a '{addr} {hostname}' line)",
            )
        )
    if s.master_addr:
        maddr = resolve(s.master_addr)
        if maddr is None:
            out.append(
                Finding(
                    s.host,
                    "cluster.master_addr",
                    f"{s.master_addr} does not resolve here",
                    "fix DNS or /etc/hosts on this node, or set cluster.master_addr to an address",
                )
            )
        elif is_loopback(maddr):
            out.append(
                Finding(
                    s.host,
                    "cluster.master_addr",
                    f"{s.master_addr} resolves to loopback {maddr} here, which other nodes cannot reach",
                    HOSTS_FIX + ", or set cluster.master_addr to node 0's address",
                )
            )
    return out


def interfaces(root: str = "/sys/class/net") -> list[str]:
    try:
        return sorted(os.listdir(root))
    except OSError:
        return []


def nic_matches(nic: str, names: list[str]) -> bool | None:
    """NCCL_SOCKET_IFNAME semantics: a comma list of prefixes ("=" = exact names); any one present
    is enough. None for an exclusion list ("^…"), which cannot be missing."""
    if nic.startswith("^"):
        return None
    exact = nic.startswith("=")
    wanted = [w for w in nic.lstrip("=").split(",") if w]
    return any(n == w or (not exact and n.startswith(w)) for w in wanted for n in names)


def check_nic(s: Settings, root: str = "/sys/class/net") -> list[Finding]:
    """Check 2: cluster.nic names an interface this node has."""
    if not s.nic:
        return []
    names = interfaces(root)
    if not names:
        return [
            Finding(s.host, "cluster.nic", f"cannot list {root} here, interface not checked", level="note")
        ]
    if nic_matches(s.nic, names) is False:
        return [
            Finding(
                s.host,
                "cluster.nic",
                f"no interface {s.nic.lstrip('=')} here (has: {', '.join(names)})",
                "set cluster.nic to an interface every node has, or a comma list",
            )
        ]
    return []


def check_ib(s: Settings) -> list[Finding]:
    """Warning: InfiniBand switched off (it runs, over TCP sockets, at a fraction of the speed)."""
    if s.ib_disable or os.environ.get("NCCL_IB_DISABLE") == "1":
        return [
            Finding(
                s.host,
                "NCCL_IB_DISABLE",
                "set to 1: NCCL uses TCP sockets and will be slow",
                "fix InfiniBand (ibstat; a port stuck in Initializing has no subnet manager) and drop it",
                level="warning",
            )
        ]
    return []
