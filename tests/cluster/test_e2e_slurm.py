"""`xgen slurm` output submitted with sbatch to the two-node cluster: 2 processes on each node, and a fake
NPU node's Ascend environment on CPU."""

from __future__ import annotations

import re
from pathlib import Path

import e2e
import harness

FAKE_NPU_SMI = """#!/usr/bin/env bash
# Fake Ascend tool: answers `npu-smi info -l` like a node with two NPUs.
if [ "${1:-}" = info ] && [ "${2:-}" = -l ]; then
  printf '\\tTotal Count                    : 2\\n\\n'
  for i in 0 1; do
    printf '\\tNPU ID                         : %s\\n' "$i"
    printf '\\tProduct Name                   : Ascend910B\\n\\n'
  done
  exit 0
fi
echo "fake npu-smi: unsupported arguments: $*" >&2
exit 1
"""


def submit_and_wait(
    cluster: harness.Cluster, shared: Path, config: dict, env: dict | None = None, timeout: float = 300
) -> tuple[dict[str, str], str]:
    """Render with `xgen slurm`, sbatch it, wait for the end; return (scontrol info, job output)."""
    script = e2e.render(shared, "slurm", e2e.write_config(shared, config))
    job = cluster.sbatch(script, cwd=shared, env={**e2e.RUN_ENV, **(env or {})})
    info = cluster.wait_done(job, timeout=timeout)
    return info, Path(info["StdOut"]).read_text(errors="replace")


def test_slurm_two_nodes_two_processes_each(cluster: harness.Cluster, tiny: Path, shared_dir: Path) -> None:
    info, out = submit_and_wait(cluster, shared_dir, e2e.base_config(tiny, shared_dir))
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", out[-6000:]
    e2e.check_trained_on_both_nodes(out, shared_dir / "out")
    # The script says what it detected and which communication env it exported.
    for node in ("node0", "node1"):
        assert re.search(rf"(?m)^xgen: \S+Z {node}: device=cpu nproc_per_node=2$", out), out[:3000]
    # cluster.nic and cluster.omp_num_threads as exported on the nodes (the script's env lines).
    for line in ("NCCL_SOCKET_IFNAME=eth0", "OMP_NUM_THREADS=1"):
        assert line in out, f"{line!r} not shown in the job output:\n{out[:3000]}"
    # The preflight passed on both nodes, and its cost (measured, see docs/preflight.md).
    for node in ("node0", "node1"):
        m = re.search(rf"(?m)^xgen: preflight: {node}: ok \(\d+ checks, (\d+\.\d) s\)$", out)
        assert m and float(m.group(1)) < 15, f"no preflight ok line from {node} (or over 15 s):\n{out[:3000]}"
    m = re.search(r"(?m)^xgen: \S+Z node0: preflight: all 2 nodes passed in (\d+) ms$", out)
    assert m and int(m.group(1)) < 15000, f"no preflight step time (or over 15 s):\n{out[:3000]}"
    print(f"preflight step on a clean cluster: {m.group(1)} ms")


def test_fake_npu_exports_ascend_env_and_runs_on_cpu(
    cluster: harness.Cluster, tiny: Path, shared_dir: Path
) -> None:
    fake_bin = shared_dir / "fake-ascend-bin"
    fake_bin.mkdir()
    (fake_bin / "npu-smi").write_text(FAKE_NPU_SMI)
    (fake_bin / "npu-smi").chmod(0o755)
    config = e2e.merge(
        e2e.base_config(tiny, shared_dir, name="xgt-npu"),
        {"cluster": {"device": "auto", "devices_per_node": "auto", "nic": "eth0"}},
    )
    # The job inherits the submitter's PATH, so every node finds the fake tool first.
    path = f"{fake_bin}:{cluster.env()['PATH']}"
    info, out = submit_and_wait(cluster, shared_dir, config, env={"PATH": path})
    problems = []
    for node in ("node0", "node1"):
        if not re.search(rf"(?m)^xgen: \S+Z {node}: device=npu nproc_per_node=2$", out):
            problems.append(f"no 'device=npu nproc_per_node=2' detection line from {node}")
    # Detection found two NPUs per node; torch_npu is absent, so the runtime must fall back to CPU.
    if info["JobState"] != "COMPLETED" or info["ExitCode"] != "0:0":
        problems.append(f"job {info['JobState']} exit {info['ExitCode']}, not a CPU fallback")
    else:
        start = e2e.start_line(out)
        if (start.world_size, start.device, start.backend) != (4, "cpu", "gloo"):
            problems.append(f"start line {start}, expected world_size=4 device=cpu backend=gloo")
    for line in ("ASCEND_RT_VISIBLE_DEVICES=0,1", "HCCL_SOCKET_IFNAME=eth0", "TASK_QUEUE_ENABLE=2"):
        if line not in out:
            problems.append(f"{line!r} not shown in the job output")
    assert not problems, "\n".join(problems) + "\n--- job output:\n" + out[-5000:]
