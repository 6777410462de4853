"""The doctor's verdict: bandwidth warnings, the per-node table (rich on a terminal, plain in a log) and
the JSON report. Torch-free, so it is tested without a process group."""

from __future__ import annotations

import io
import json
import sys
from typing import Any

from runtime.doctor.facts import ROUTED


def bus_bandwidth(nbytes: int, seconds: float, ranks: int) -> float:
    """nccl-tests' all-reduce busbw in GB/s: algbw x 2(n-1)/n (0 for one rank: nothing crosses a link)."""
    if ranks < 2 or seconds <= 0:
        return 0.0
    return nbytes / seconds / 1e9 * 2 * (ranks - 1) / ranks


# When is the cross-node link slow? busbw is nccl-tests' figure (github.com/NVIDIA/nccl-tests,
# doc/PERFORMANCE.md: for all-reduce busbw = algbw x 2(n-1)/n), defined so that it can be compared with the
# hardware's peak bandwidth whatever the rank count: a healthy all-reduce across nodes comes near the
# slowest link's speed, TCP sockets included. The doctor names the link when both guards fail:
# - under a tenth of the interface's speed (/sys/class/net/<nic>/speed, Mb/s; busbw x 8 = Gbit/s), and
# - under a twentieth of the same run's intra-node busbw (the slowest node's), when a node has 2+ ranks.
# The second guard keeps quiet a backend that cannot fill the link anyway: gloo on CPU all-reduces at
# 1-2 GB/s even inside a node, a tenth of a 100 Gbit/s NIC, with nothing wrong with the link. Measured on
# the test cluster (gloo, 2 nodes x 2 CPU ranks, 8 MiB, veths that say 10000 Mb/s): clean, 0.17-0.80 GB/s
# across nodes against 0.80-2.10 inside one; node1's link shaped by tc tbf to 100 Mbit/s, 0.011 GB/s; issue
# #25's shaped link, 0.004 GB/s against 0.64-0.95 inside. On GPUs the first guard decides: NVLink inside a
# node is 10-50x a NIC. Speed unknown (-1: some virtual and IPoIB drivers): under a hundredth of the
# intra-node busbw alone, a lower bar since a healthy GPU node's NVLink busbw is 20-40x one 100-200 Gbit/s
# NIC's (issue #25's link: 0.006x).
LINK_FRACTION = 0.1
INTRA_FRACTION = 0.05
UNKNOWN_SPEED_FRACTION = 0.01


def warnings(result: dict[str, Any], min_gbps: float | None) -> list[str]:
    """Bandwidth and InfiniBand warnings (the job still exits 0)."""
    out = []
    cross = result.get("cross_node_busbw_gbps")
    if cross is not None:
        if min_gbps and cross * 8 < min_gbps:
            out.append(
                f"cross-node busbw {cross:.3f} GB/s ({cross * 8:.2f} Gbit/s) is under "
                f"cluster.min_bandwidth_gbps={min_gbps:g}; check the link (NCCL_DEBUG=INFO shows the path)"
            )
        out += slow_link(result["nodes"], cross)
    for node in result["nodes"]:
        for port in node.get("ib") or []:
            if port["state"].lower().startswith("initializ"):
                out.append(
                    f"{node['host']}: InfiniBand {port['ca']} port {port['port']} is Initializing: no subnet "
                    "manager on the fabric (start opensm, or ask the fabric's admin)"
                )
            elif not port["state"].lower().startswith("active"):
                out.append(f"{node['host']}: InfiniBand {port['ca']} port {port['port']} is {port['state']}")
    return out


def slow_link(nodes: list[dict[str, Any]], cross: float) -> list[str]:
    """One line per interface whose nodes see a cross-node busbw far under what the link and the nodes
    themselves do: the nodes, the busbw, the interface and its speed, what to do."""
    intras = [n["intra_busbw_gbps"] for n in nodes if n.get("intra_busbw_gbps")]
    intra = min(intras) if intras else None
    slow: dict[tuple[str, int | None], list[dict[str, Any]]] = {}
    for node in nodes:
        nic, speed = node.get("nic"), node.get("link_mbps")
        if not nic:
            continue
        if speed:
            under_intra = intra is None or cross < intra * INTRA_FRACTION
            hit = cross * 8000 < speed * LINK_FRACTION and under_intra
        else:
            hit = intra is not None and cross < intra * UNKNOWN_SPEED_FRACTION
        if hit:
            slow.setdefault((nic, speed), []).append(node)
    out = []
    for (nic, speed), group in slow.items():
        routed = ", the route to MASTER_ADDR" if any(n.get("nic_from") == ROUTED for n in group) else ""
        if speed:
            what = f"under a tenth of {nic}'s link speed ({speed / 1000:g} Gbit/s{routed})"
            if intra is not None:
                what += f" and a twentieth of the intra-node {intra:.3f} GB/s"
        else:
            what = f"under a hundredth of the intra-node {intra:.3f} GB/s ({nic}{routed}: link speed unknown)"
        if any(n.get("ib_disabled") for n in group):
            cause = "NCCL_IB_DISABLE=1 is set, so NCCL uses TCP sockets: fix InfiniBand and drop it, or"
        else:
            cause = "a slow or shaped link, or TCP where InfiniBand was meant (ibstat, NCCL_IB_DISABLE):"
        hosts = ", ".join(n["host"] for n in group)
        out.append(
            f"{hosts}: cross-node busbw {cross:.3f} GB/s ({cross * 8:.2f} Gbit/s) is {what}; {cause} check "
            f"{nic} (ethtool, tc qdisc), or set cluster.nic to the fast interface (NCCL_DEBUG=INFO names it)"
        )
    return out


COLUMNS = ("host", "devices", "versions", "nic", "shm", "checks", "intra busbw", "cross busbw")


def rows(result: dict[str, Any]) -> list[list[str]]:
    out = []
    for node in result["nodes"]:
        v = node["versions"]
        out.append(
            [
                node["host"],
                f"{node['devices']} {node['device']}",
                f"py {v['python']} torch {v['torch']}",
                f"{node['nic'] or '-'} {node['address'] or ''}".strip(),
                node["shm"],
                "passed" if result.get("preflight", "passed") == "passed" else "failed",
                _gbps(node.get("intra_busbw_gbps")),
                _gbps(result.get("cross_node_busbw_gbps")),
            ]
        )
    return out


def _gbps(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} GB/s"


def table(result: dict[str, Any], rich: bool | None = None) -> str:
    """One row per node; rich box drawing on a terminal, plain aligned text in a log."""
    body = rows(result)
    if rich if rich is not None else sys.stdout.isatty():
        try:
            from rich.console import Console
            from rich.table import Table

            t = Table(title="xgen doctor")
            for c in COLUMNS:
                t.add_column(c)
            for r in body:
                t.add_row(*r)
            console = Console(file=io.StringIO(), width=160)
            console.print(t)
            return console.file.getvalue()  # type: ignore[attr-defined]
        except ImportError:
            pass
    widths = [max(len(c), *(len(r[i]) for r in body)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True))]
    lines += ["  ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def sizes_table(result: dict[str, Any]) -> str:
    lines = ["all-reduce   size        ranks  time/iter   algbw GB/s  busbw GB/s"]
    for m in result["measurements"]:
        lines.append(
            f"{m['scope']:<12} {m['bytes']:>10}  {m['ranks']:>5}  {m['seconds'] * 1e3:8.2f} ms  "
            f"{m['algbw_gbps']:10.3f}  {m['busbw_gbps']:10.3f}"
        )
    return "\n".join(lines) + "\n"


def write_json(path: str, result: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")
