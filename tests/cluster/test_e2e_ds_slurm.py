"""`launcher: deepspeed` under `xgen slurm` trains over both nodes of the allocation.

Lean on purpose (the suite is at its time ceiling): one process per node, two steps, ZeRO-2 on CPU.
"""

from __future__ import annotations

import re
from pathlib import Path

import e2e
import harness

# Runtime test scaffolding (runtime/scaffolding/testing.py): every rank checks these are set and prints
# their names.
# Each node's shell exports them (communication section, cluster.env), never the submitting shell.
NODE_ENV = "NCCL_SOCKET_IFNAME,GLOO_SOCKET_IFNAME,NCCL_DEBUG,OMP_NUM_THREADS,XGT_FROM_CLUSTER_ENV"


def test_deepspeed_launcher_inside_slurm_trains_over_both_nodes(
    cluster: harness.Cluster, tiny: Path, shared_dir: Path
) -> None:
    config = e2e.merge(
        e2e.base_config(tiny, shared_dir, name="xgt-ds-slurm"),
        {
            "launcher": "deepspeed",
            "cluster": {
                "devices_per_node": 1,
                "hosts": None,
                "env": {"XGT_FROM_CLUSTER_ENV": "1"},
            },  # the nodes come from the allocation
            "train": {"deepspeed": "z2", "max_steps": 2},
        },
    )
    script = e2e.render(shared_dir, "slurm", e2e.write_config(shared_dir, config))
    job = cluster.sbatch(script, cwd=shared_dir, env={**e2e.RUN_ENV, "XGEN_TEST_ASSERT_ENV": NODE_ENV})
    info = cluster.wait_done(job, timeout=300)
    out = Path(info["StdOut"]).read_text(errors="replace")
    print(f"launcher: deepspeed job {job}: RunTime {info.get('RunTime')}")
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", out[-6000:]
    # The hostfile the job wrote from its own allocation, slots detected by a step on each node.
    hostfile = shared_dir / "xgen-runs" / str(job) / "hostfile"
    assert hostfile.read_text() == "node0 slots=1\nnode1 slots=1\n", out[-4000:]
    assert "--include node0:0@node1:0" in out, out[-4000:]
    # DeepSpeed's own launcher ran on each node (no ssh, no pdsh), node ranks in hostfile order.
    for rank, node in enumerate(("node0", "node1")):
        assert re.search(rf"(?m)^xgen: \S+ {node}: deepspeed node_rank={rank}/2 ", out), out[-4000:]
    assert "deepspeed.launcher.launch" in out and "pdsh" not in out, out[-4000:]
    # The node env reached every rank (rank 0 on node0, rank 1 on node1), and the world is the config's.
    for rank, node in enumerate(("node0", "node1")):
        said = f"xgen-runtime: test hook: rank {rank} on {node}: set: {NODE_ENV.replace(',', ', ')}"
        assert said in out, out[-4000:]
    start = e2e.start_line(out)
    assert (start.world_size, start.nodes, sorted(start.hosts)) == (2, 2, ["node0", "node1"]), start
    assert (start.device, start.backend, start.strategy) == ("cpu", "gloo", "deepspeed-z2"), start
    assert e2e.saved_dir(out) == shared_dir / "out"
    assert (shared_dir / "out" / "model.safetensors").is_file()
