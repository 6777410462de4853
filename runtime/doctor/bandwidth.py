"""The all-reduce test itself (imports torch): every rank runs this under the training launcher."""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from typing import Any

from runtime.doctor import facts, report

BACKENDS = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}
# Message sizes (bytes): small, medium, large; gloo on CPU gets smaller ones so the test stays quick.
SIZES = {
    "gloo": (1 << 16, 1 << 20, 1 << 23),
    "nccl": (1 << 20, 1 << 24, 1 << 28),
    "hccl": (1 << 20, 1 << 24, 1 << 28),
}
WARMUP, ITERS = 2, 5


def _device(kind: str):
    import torch

    if kind == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cuda", torch.cuda.current_device())
    if kind == "npu":
        import torch_npu  # noqa: F401

        torch.npu.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("npu", torch.npu.current_device())
    return torch.device("cpu")


def _sync(kind: str) -> None:
    import torch

    if kind == "cuda":
        torch.cuda.synchronize()
    elif kind == "npu":
        torch.npu.synchronize()


def time_allreduce(nbytes: int, group, kind: str, device) -> float:
    """Seconds per all-reduce of nbytes (fp32) in `group`, the slowest rank's view (max over the group)."""
    import torch
    import torch.distributed as dist

    x = torch.ones(max(nbytes // 4, 1), dtype=torch.float32, device=device)
    for _ in range(WARMUP):
        dist.all_reduce(x, group=group)
    _sync(kind)
    dist.barrier(group=group)
    start = time.perf_counter()
    for _ in range(ITERS):
        dist.all_reduce(x, group=group)
    _sync(kind)
    took = torch.tensor([(time.perf_counter() - start) / ITERS], dtype=torch.float64, device=device)
    dist.all_reduce(took, op=dist.ReduceOp.MAX, group=group)
    return float(took.item())


def run(nic: str | None) -> dict[str, Any]:
    import torch.distributed as dist

    kind = os.environ.get("XGEN_DEVICE", "cpu")
    backend = BACKENDS.get(kind, "gloo")
    device = _device(kind)
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=300))
    rank, world = dist.get_rank(), dist.get_world_size()
    # torchrun sets LOCAL_WORLD_SIZE, DeepSpeed's launcher LOCAL_SIZE; the scripts export NPROC_PER_NODE.
    local = int(
        os.environ.get("LOCAL_WORLD_SIZE")
        or os.environ.get("LOCAL_SIZE")
        or os.environ.get("NPROC_PER_NODE")
        or 1
    )
    node_count = world // local
    mine = facts.collect(nic) if int(os.environ.get("LOCAL_RANK", "0")) == 0 else None
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, mine)
    nodes = [f for f in gathered if f is not None]
    # One group per node (every rank creates every group, as torch requires), for the intra-node figure.
    groups = [dist.new_group(list(range(n * local, (n + 1) * local))) for n in range(node_count)]
    my_group = groups[rank // local]
    measurements = []
    for nbytes in SIZES[backend]:
        if local > 1:
            t = time_allreduce(nbytes, my_group, kind, device)
            intra = [None] * world
            dist.all_gather_object(intra, t)
            for n, node in enumerate(nodes):
                node.setdefault("intra", []).append(intra[n * local])
            measurements.append(_m("intra-node", nbytes, local, max(x for x in intra if x is not None)))
        if node_count > 1:
            measurements.append(_m("all ranks", nbytes, world, time_allreduce(nbytes, None, kind, device)))
    largest = SIZES[backend][-1]
    for node in nodes:
        times = node.pop("intra", [])
        node["intra_busbw_gbps"] = report.bus_bandwidth(largest, times[-1], local) if times else None
    cross = [m for m in measurements if m["scope"] == "all ranks" and m["bytes"] == largest]
    result = {
        "backend": backend,
        "world_size": world,
        "nodes": nodes,
        "measurements": measurements,
        "cross_node_busbw_gbps": cross[0]["busbw_gbps"] if cross else None,
        "preflight": "passed",
    }
    dist.barrier()
    dist.destroy_process_group()
    return result if rank == 0 else {}


def _m(scope: str, nbytes: int, ranks: int, seconds: float) -> dict[str, Any]:
    return {
        "scope": scope,
        "bytes": nbytes,
        "ranks": ranks,
        "seconds": seconds,
        "algbw_gbps": nbytes / seconds / 1e9 if seconds > 0 else 0.0,
        "busbw_gbps": report.bus_bandwidth(nbytes, seconds, ranks),
    }


def main(argv: list[str]) -> int:
    from runtime.config.files import read_yaml

    config = argv[0]
    raw = read_yaml(config)
    cluster = raw.get("cluster") if isinstance(raw.get("cluster"), dict) else {}
    result = run(cluster.get("nic"))
    if not result:
        return 0
    min_gbps = cluster.get("min_bandwidth_gbps")
    result["warnings"] = report.warnings(result, float(min_gbps) if min_gbps else None)
    job = os.environ.get("SLURM_JOB_ID") or time.strftime("%Y%m%d-%H%M%S")
    path = os.path.join(os.environ.get("XGEN_DOCTOR_DIR") or os.getcwd(), f"xgen-doctor-{job}.json")
    report.write_json(path, result)
    print("xgen: doctor: results")
    sys.stdout.write(report.sizes_table(result))
    sys.stdout.write(report.table(result))
    for w in result["warnings"]:
        print(f"xgen: doctor: warning: {w}", flush=True)
    print(f"xgen: doctor: report {path}", flush=True)
    return 0
