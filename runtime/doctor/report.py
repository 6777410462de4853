"""The doctor's verdict: bandwidth warnings, the per-node table (rich on a terminal, plain in a log) and
the JSON report. Torch-free, so it is tested without a process group."""

from __future__ import annotations

import io
import json
import sys
from typing import Any


def bus_bandwidth(nbytes: int, seconds: float, ranks: int) -> float:
    """nccl-tests' all-reduce busbw in GB/s: algbw x 2(n-1)/n (0 for one rank: nothing crosses a link)."""
    if ranks < 2 or seconds <= 0:
        return 0.0
    return nbytes / seconds / 1e9 * 2 * (ranks - 1) / ranks


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
        for node in result["nodes"]:
            speed = node.get("link_mbps")
            if speed and cross * 8 * 1000 < speed * 0.1:
                out.append(
                    f"{node['host']}: cross-node busbw {cross * 8:.2f} Gbit/s is under a tenth of "
                    f"{node['nic']}'s link speed ({speed / 1000:g} Gbit/s); a slow or shaped link, or TCP "
                    "instead of InfiniBand"
                )
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
