"""The nodes compare facts before torch.distributed starts, over the master port itself (checks 3-6).

Node 0 listens on MASTER_PORT (all interfaces, as torch's TCPStore will) and also connects to
MASTER_ADDR:MASTER_PORT itself, which proves the configured address reaches node 0. Every other node
connects, sends one JSON line of facts (versions, input files, a probe file it wrote in output_dir, its
clock) and waits for one JSON line back: the job-wide verdict. A node that cannot connect says why
(timed out = packets dropped by a filter; refused = nothing listens) once its window is over. Every wait
is bounded by the exchange window (min of cluster.preflight_timeout and cluster.rdzv_timeout), so the
master port is free again, and the verdict known everywhere, before the launcher starts.
A plain socket rather than a shared directory: output_dir may be exactly what is not shared.
"""

from __future__ import annotations

import contextlib
import errno
import json
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from runtime.preflight import inputs, network, versions
from runtime.preflight.findings import Finding
from runtime.preflight.settings import Settings

MAX_LINE = 4 << 20
SKEW_WARN_S = 5.0
PROBE_TIMEOUT = 5.0


def _send(sock: socket.socket, data: dict[str, Any]) -> None:
    sock.sendall(json.dumps(data).encode() + b"\n")


def _recv(sock: socket.socket, timeout: float) -> dict[str, Any] | None:
    """One JSON line, or None on timeout / EOF / garbage."""
    sock.settimeout(max(timeout, 0.05))
    buf = b""
    try:
        while b"\n" not in buf and len(buf) < MAX_LINE:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            buf += chunk
    except OSError:
        return None
    try:
        data = json.loads(buf.split(b"\n", 1)[0])
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


@dataclass
class Peer:
    conn: socket.socket
    facts: dict[str, Any]
    received: float  # time.time() when the facts arrived (clock skew)


@dataclass
class Master:
    """Node 0's side. `start()` binds (or records why not); `collect()` gathers; `finish()` answers."""

    s: Settings
    findings: list[Finding] = field(default_factory=list)
    peers: dict[int, Peer] = field(default_factory=dict)
    sock: socket.socket | None = None
    nonce: str = field(default_factory=lambda: secrets.token_hex(8))
    probe_ok: bool = False
    probe_error: str = ""

    def start(self) -> bool:
        port = self.s.master_port or 0
        try:
            if socket.has_dualstack_ipv6():
                self.sock = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
            else:
                self.sock = socket.create_server(("", port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                self.findings.append(
                    Finding(
                        self.s.host,
                        "cluster.master_port",
                        f"port {port} is already in use here by another process",
                        "stop it, or set cluster.master_port to a free port (on Slurm the default "
                        "20000 + job id % 20000 avoids most clashes)",
                    )
                )
            else:
                self.findings.append(
                    Finding(
                        self.s.host,
                        "cluster.master_port",
                        f"cannot listen on port {port}: {err}",
                        "pick another",
                    )
                )
            return False
        threading.Thread(target=self._probe, daemon=True).start()
        return True

    def _probe(self) -> None:
        """Connect to MASTER_ADDR:MASTER_PORT as the others will: it must lead back to this node."""
        try:
            with socket.create_connection(
                (self.s.master_addr, self.s.master_port or 0), timeout=PROBE_TIMEOUT
            ) as c:
                _send(c, {"probe": self.nonce})
                _recv(c, PROBE_TIMEOUT)  # wait for the listener to read it (it closes the connection)
        except OSError as err:
            self.probe_error = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))

    def collect(self, deadline: float) -> None:
        assert self.sock is not None
        want = set(range(1, self.s.nnodes))
        probe_until = time.monotonic() + PROBE_TIMEOUT + 1
        while time.monotonic() < deadline:
            if want <= set(self.peers) and (
                self.probe_ok or time.monotonic() > probe_until or self.probe_error
            ):
                break
            self.sock.settimeout(min(0.5, max(deadline - time.monotonic(), 0.05)))
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                break
            msg = _recv(conn, min(5.0, max(deadline - time.monotonic(), 0.5)))
            if msg is None:
                conn.close()
            elif msg.get("probe") == self.nonce:
                self.probe_ok = True
                conn.close()
            elif isinstance(msg.get("node_rank"), int) and msg["node_rank"] in want:
                self.peers[msg["node_rank"]] = Peer(conn, msg, time.time())
            else:
                conn.close()  # not one of ours (or a duplicate rank): ignore
        self.sock.close()  # the port is free for the launcher from here on
        if not self.probe_ok:
            why = self.probe_error or f"no answer within {PROBE_TIMEOUT:.0f} s"
            self.findings.append(
                Finding(
                    self.s.host,
                    "cluster.master_addr",
                    f"{self.s.master_addr}:{self.s.master_port} does not lead to this node "
                    f"(node rank 0) ({why})",
                    "set cluster.master_addr to node 0's address, or leave it out on Slurm",
                )
            )
        for rank in sorted(want - set(self.peers)):
            self.findings.append(
                Finding(
                    self.s.name_of(rank),
                    "preflight",
                    f"did not report to {self.s.host} within {deadline_s(self.s):.0f} s "
                    "(cluster.preflight_timeout / rdzv_timeout)",
                    "its own log says why (unreachable master port, no script started there?)",
                )
            )

    def compare(self, mine: dict[str, Any]) -> None:
        for rank in sorted(self.peers):
            peer = self.peers[rank]
            facts, host = peer.facts, str(peer.facts.get("host", f"node rank {rank}"))
            self.findings += versions.compare(self.s.host, mine["versions"], host, facts.get("versions", {}))
            self.findings += inputs.compare(self.s.host, mine["inputs"], host, facts.get("inputs", {}))
            self.findings += shared_output(self.s.host, mine, host, facts)
            skew = float(facts.get("time", peer.received)) - peer.received
            if abs(skew) > SKEW_WARN_S:
                self.findings.append(
                    Finding(
                        host,
                        "clock",
                        f"{skew:+.0f} s off {self.s.host}'s clock",
                        "run chrony/ntpd on every node (logs and checkpoint times disagree otherwise)",
                        level="warning",
                    )
                )

    def finish(self, local_errors: int) -> int:
        """Send every peer the job-wide error count; return it."""
        total = local_errors + sum(int(p.facts.get("errors", 0)) for p in self.peers.values())
        total += sum(1 for f in self.findings if f.level == "error")
        for peer in self.peers.values():
            with contextlib.suppress(OSError):
                _send(peer.conn, {"errors": total, "master": self.s.host})
        # Let the peers close first, so this side keeps no TIME_WAIT on the master port.
        for peer in self.peers.values():
            _recv(peer.conn, 2.0)
            peer.conn.close()
        return total


def deadline_s(s: Settings) -> float:
    return s.exchange_window


def shared_output(master: str, mine: dict[str, Any], host: str, facts: dict[str, Any]) -> list[Finding]:
    """Check 6: the master looks for the probe file the peer wrote into output_dir."""
    probe = facts.get("probe")
    out_dir = mine.get("output_dir")
    if not probe or not out_dir:
        return []
    from pathlib import Path

    if (Path(out_dir) / probe).exists():
        return []
    need = mine.get("shared_needed")
    wrong = f"{out_dir} is not shared with {master} (a file written here is not seen there)"
    if need:
        return [
            Finding(
                host,
                "train.output_dir",
                f"{wrong}, and this run needs it: {need}",
                "put output_dir on a filesystem every node mounts at the same path",
            )
        ]
    return [
        Finding(
            host,
            "train.output_dir",
            wrong,
            "fine for this run (no checkpoints), but resume and checkpoints need it shared",
            level="warning",
        )
    ]


def report(
    s: Settings, facts: dict[str, Any], connect_until: float, answer_until: float
) -> tuple[list[Finding], int]:
    """A non-master node: send facts, get the job-wide error count. (findings about this node, errors)."""
    last = "no attempt"
    conn = None
    while time.monotonic() < connect_until:
        try:
            conn = socket.create_connection(
                (s.master_addr, s.master_port or 0),
                timeout=min(5.0, max(connect_until - time.monotonic(), 0.1)),
            )
            break
        except TimeoutError:
            last = "timed out: a filter drops the packets"
        except ConnectionRefusedError:
            last = "refused: nothing listens there yet"
            time.sleep(0.3)
        except OSError as err:
            last = err.strerror or str(err)
            time.sleep(0.5)
    if conn is None:
        fix = (
            f"open TCP port (and {network.comm_ports(s)}) between the nodes in the firewall, or set "
            "cluster.master_port to an open one"
            if last.startswith("timed out")
            else "check that node 0's script runs and that cluster.master_addr is node 0's address"
        )
        return [
            Finding(
                s.host,
                "cluster.master_port",
                f"cannot reach the master {s.master_addr}:{s.master_port} from here within "
                f"{deadline_s(s):.0f} s ({last}; cluster.preflight_timeout)",
                fix.replace("TCP port", f"TCP port {s.master_port}"),
            )
        ], 1
    with conn:
        facts = dict(facts, time=time.time())
        try:
            _send(conn, facts)
        except OSError as err:
            return [
                Finding(s.host, "cluster.master_port", f"lost the master while sending: {err}", "retry")
            ], 1
        verdict = _recv(conn, answer_until - time.monotonic())
    if verdict is None:
        return [
            Finding(
                s.host,
                "preflight",
                f"the master {s.master_addr}:{s.master_port} did not answer in time",
                "its log says why; raise cluster.preflight_timeout when nodes start far apart",
            )
        ], 1
    return [], int(verdict.get("errors", 0))
