"""Names, interfaces and ports: the node's hostname, the master address as this node sees it, cluster.nic,
the InfiniBand switch and, on NPU nodes, HCCL's host ports. All local, no traffic (the master port is
probed in `exchange`)."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket

from runtime.preflight.devices import npu_node
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


# --- HCCL's host ports ---
# NCCL takes ephemeral ports; HCCL listens on a fixed range from HCCL_IF_BASE_PORT (default 60000): 16
# ports up to CANN 8.2, 32 from CANN 8.3 on (a port per device, by its physical id). A stale process on
# one fails HCCL's init ("EJ0003 Failed to bind the IP port") after the model has loaded, and other nodes
# must reach the range as they reach the master port. A port in use is a warning, not an error: another
# job on the node's other NPUs legitimately holds its devices' ports, and inside a container the physical
# ids (hence which ports are this job's) are not known here.
HCCL_BASE_PORT = 60000
HCCL_PORTS, HCCL_PORTS_NEW = 16, 32


def hccl_ports() -> tuple[int, int]:
    """(first, last) of HCCL's host ports here, CANN 8.3's 32."""
    value = os.environ.get("HCCL_IF_BASE_PORT", "")
    base = int(value) if value.isdigit() else HCCL_BASE_PORT
    return base, base + HCCL_PORTS_NEW - 1


def comm_ports(s: Settings) -> str:
    """The collective library's ports, for a firewall fix: HCCL's fixed range on NPU nodes."""
    if not npu_node(s):
        return "NCCL's ports"
    first, last = hccl_ports()
    return f"HCCL's ports {first}-{last}, HCCL_IF_BASE_PORT"


def _in_use(port: int) -> bool:
    """Something listens on `port` here (SO_REUSEADDR: a connection in TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError as err:
            return err.errno == errno.EADDRINUSE
    return False


def check_hccl_ports(s: Settings) -> list[Finding]:
    """On an NPU node: the master port outside HCCL's range (an error), and HCCL's ports free here (a
    warning; the master port itself is checked by node 0's exchange)."""
    if not npu_node(s):
        return []
    first, last = hccl_ports()
    if s.master_port is not None and first <= s.master_port <= last:
        return [
            Finding(
                s.host,
                "cluster.master_port",
                f"{s.master_port} is one of HCCL's host ports ({first}-{last}, HCCL_IF_BASE_PORT), which "
                "HCCL binds on every node",
                "set cluster.master_port outside that range, or move HCCL's with HCCL_IF_BASE_PORT",
            )
        ]
    busy = [p for p in range(first, last + 1) if _in_use(p)]
    if not busy:
        return []
    shown = ", ".join(map(str, busy[:4])) + (", …" if len(busy) > 4 else "")
    return [
        Finding(
            s.host,
            "HCCL_IF_BASE_PORT",
            f"HCCL's host ports {first}-{last}: {shown} already in use here; if they are this job's devices' "
            "(a stale training, or another job on the same NPUs), HCCL fails to bind after the model loads",
            f"stop that process (`ss -ltnp 'sport = :{busy[0]}'` names it), or export HCCL_IF_BASE_PORT=<a "
            "free base> on every node (cluster.env)",
            level="warning",
        )
    ]
