"""What the generated script tells the preflight (the cluster section lives in the xgen config, which the
runtime does not parse: the script passes the few values the checks need as arguments)."""

from __future__ import annotations

import argparse
import socket
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Settings:
    config: str
    workdir: str = "."
    host: str = field(default_factory=socket.gethostname)
    node_rank: int = 0
    nnodes: int = 1
    master_addr: str = ""
    master_port: int | None = None  # None: one node with a port picked at launch (no exchange)
    nic: str | None = None
    ib_disable: bool = False
    min_shm_gb: float = 1.0
    timeout: float = 60.0  # the whole preflight on this node, waiting for the others included
    rdzv_timeout: float = 300.0  # nodes never wait for each other longer than the rendezvous would
    device: str = "auto"  # auto | cuda | npu | cpu
    devices_per_node: int | None = None  # None = auto
    hosts: tuple[str, ...] = ()  # node names by node rank, when known (to name a node that never reports)
    ssh_hosts: tuple[str, ...] = ()  # hostfile launchers: run the preflight on these hosts over ssh
    ssh_port: int | None = None
    python: str = "python3"  # the interpreter the remote hosts run (ssh mode)
    # DeepSpeed over ssh: the device ids --include gives every host (the launching node's exported
    # CUDA_VISIBLE_DEVICES / ASCEND_RT_VISIBLE_DEVICES; "" = none exported). None: the node's own env.
    include_cuda: str | None = None
    include_npu: str | None = None
    device_memory: str | None = None  # cluster.device_memory_gb (GiB, a device name or auto); None: no check

    def name_of(self, rank: int) -> str:
        return self.hosts[rank] if rank < len(self.hosts) else f"node rank {rank}"

    @property
    def exchange_window(self) -> float:
        return min(self.timeout, self.rdzv_timeout)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m runtime.preflight",
        description="Check this node (and, over the master port, its peers) before training; "
        "exit 3 when something is wrong. See docs/preflight.md.",
    )
    p.add_argument("config", help="the xgen YAML (its train: section names the model, data and output)")
    p.add_argument("--workdir", default=".", help="directory relative train paths resolve from")
    p.add_argument("--host", default=None, help="name used in the lines (default: hostname)")
    p.add_argument("--node-rank", type=int, default=0)
    p.add_argument("--nnodes", type=int, default=1)
    p.add_argument("--master-addr", default="")
    p.add_argument("--master-port", default="", help="a port number; 'auto'/empty: no exchange (one node)")
    p.add_argument("--nic", default=None, help="cluster.nic (NCCL_SOCKET_IFNAME syntax)")
    p.add_argument("--ib-disable", action="store_true", help="cluster.ib_disable is set")
    p.add_argument("--min-shm-gb", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--rdzv-timeout", type=float, default=300.0)
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "npu", "cpu"))
    p.add_argument("--devices-per-node", default="auto")
    p.add_argument("--hosts", default="", help="comma list of node names by node rank, when known")
    p.add_argument("--ssh", default="", help="comma list of hosts: run the preflight there over ssh")
    p.add_argument("--ssh-port", type=int, default=None)
    p.add_argument("--python", default="python3", help="interpreter on the ssh hosts")
    p.add_argument(
        "--include-cuda",
        default=None,
        help="DeepSpeed over ssh: the launching node's CUDA_VISIBLE_DEVICES, which --include gives "
        "every host",
    )
    p.add_argument(
        "--include-npu",
        default=None,
        help="DeepSpeed over ssh: the launching node's ASCEND_RT_VISIBLE_DEVICES, which --include gives "
        "every host",
    )
    p.add_argument(
        "--device-memory",
        default=None,
        help="cluster.device_memory_gb: GiB, a device name or auto; the run's memory plan is checked",
    )
    return p


def from_args(argv: list[str] | None = None) -> Settings:
    a = parser().parse_args(argv)
    port = int(a.master_port) if str(a.master_port).isdigit() else None
    per_node = None if a.devices_per_node in ("", "auto") else int(a.devices_per_node)
    return Settings(
        config=a.config,
        workdir=a.workdir,
        host=a.host or socket.gethostname(),
        node_rank=a.node_rank,
        nnodes=a.nnodes,
        master_addr=a.master_addr,
        master_port=port,
        nic=a.nic or None,
        ib_disable=a.ib_disable,
        min_shm_gb=a.min_shm_gb,
        timeout=a.timeout,
        rdzv_timeout=a.rdzv_timeout,
        device=a.device,
        devices_per_node=per_node,
        hosts=tuple(h for h in a.hosts.split(",") if h),
        ssh_hosts=tuple(h for h in a.ssh.split(",") if h),
        ssh_port=a.ssh_port,
        python=a.python,
        include_cuda=a.include_cuda,
        include_npu=a.include_npu,
        device_memory=a.device_memory,
    )
