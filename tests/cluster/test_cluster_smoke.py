"""The harness itself: two hostnames under Slurm, torch.distributed across the nodes, ssh between them."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import harness

ALLREDUCE = """
import os, socket
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
total = torch.tensor([float(rank)])
dist.all_reduce(total)
hosts = [None] * world
dist.all_gather_object(hosts, socket.gethostname())
if rank == 0:
    print(f"ALLREDUCE world={world} sum={int(total.item())} hosts={','.join(sorted(set(hosts)))}", flush=True)
dist.barrier()
dist.destroy_process_group()
"""


def test_srun_runs_on_both_hostnames(cluster: harness.Cluster) -> None:
    proc = cluster.slurm(["srun", "-N2", "--ntasks-per-node=1", "hostname"], timeout=60)
    assert sorted(proc.stdout.split()) == ["node0", "node1"], proc.stdout + proc.stderr


def test_ssh_from_node0_reaches_node1(cluster: harness.Cluster) -> None:
    # Key-based ssh to every host, itself included, as DeepSpeed's pdsh runner needs.
    for target in ("node1", "node0"):
        proc = cluster.run_in_node("node0", ["ssh", target, "hostname"], timeout=30)
        assert proc.stdout.strip() == target


def test_pdsh_over_ssh_reaches_both_nodes(cluster: harness.Cluster) -> None:
    proc = cluster.run_in_node("node0", ["pdsh", "-R", "ssh", "-w", "node0,node1", "hostname"], timeout=30)
    answers = dict(line.split(": ", 1) for line in proc.stdout.splitlines())
    assert answers == {"node0": "node0", "node1": "node1"}, proc.stdout


def test_gloo_all_reduce_across_two_nodes(cluster: harness.Cluster, shared_dir: Path) -> None:
    (shared_dir / "allreduce.py").write_text(ALLREDUCE)
    out = shared_dir / "job.out"
    script = shared_dir / "allreduce.sbatch"
    script.write_text(
        textwrap.dedent(f"""\
        #!/usr/bin/env bash
        #SBATCH --nodes=2
        #SBATCH --ntasks-per-node=1
        #SBATCH --cpus-per-task=2
        #SBATCH --output={out}
        set -euo pipefail
        export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
        export MASTER_PORT=$((20000 + SLURM_JOB_ID % 10000))
        export PY={sys.executable}
        cd {shared_dir}
        srun --kill-on-bad-exit=1 bash -c 'exec "$PY" -m torch.distributed.run --nnodes 2 \\
          --node_rank "$SLURM_NODEID" --nproc_per_node 2 --master_addr "$MASTER_ADDR" \\
          --master_port "$MASTER_PORT" allreduce.py'
        """)
    )
    job = cluster.sbatch(script, cwd=shared_dir)
    info = cluster.wait_done(job, timeout=180)
    text = out.read_text()
    assert info["JobState"] == "COMPLETED", text
    assert info["ExitCode"] == "0:0"
    assert "ALLREDUCE world=4 sum=6 hosts=node0,node1" in text, text


def test_deepspeed_runner_reaches_node1_over_pdsh(cluster: harness.Cluster, shared_dir: Path) -> None:
    """DeepSpeed's own multi-node runner (pdsh over ssh, CPU accelerator) works on the harness."""
    (shared_dir / "allreduce.py").write_text(ALLREDUCE)
    (shared_dir / "hostfile").write_text("node0 slots=2\nnode1 slots=2\n")
    # The runner exports what .deepspeed_env lists on every node it reaches with pdsh.
    (shared_dir / ".deepspeed_env").write_text("DS_ACCELERATOR=cpu\n")
    argv = [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--hostfile",
        "hostfile",
        "--master_addr",
        "node0",
        "--master_port",
        "29611",
        "allreduce.py",
    ]
    proc = cluster.run_in_node(
        "node0", argv, cwd=shared_dir, timeout=120, env=cluster.env({"DS_ACCELERATOR": "cpu"})
    )
    assert "pdsh -S" in proc.stdout + proc.stderr
    assert "ALLREDUCE world=4 sum=6 hosts=node0,node1" in proc.stdout, proc.stdout + proc.stderr


REQUEUE_SCRIPT = """#!/usr/bin/env bash
#SBATCH --nodes=1
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output={out}
restart=${{SLURM_RESTART_COUNT:-0}}
echo "start restart=$restart host=$(hostname)"
if [ "$restart" -gt 0 ]; then echo "done"; exit 0; fi
on_usr1() {{
  echo "got USR1"
  scontrol requeue "$SLURM_JOB_ID"
}}
trap on_usr1 USR1
sleep 300 &
wait
sleep 30
"""


def test_batch_signal_and_requeue_helpers(cluster: harness.Cluster, shared_dir: Path) -> None:
    """The building blocks of the preemption tests: USR1 to the batch shell, requeue, RestartCnt."""
    out = shared_dir / "requeue.out"
    script = shared_dir / "requeue.sbatch"
    script.write_text(REQUEUE_SCRIPT.format(out=out))
    job = cluster.sbatch(script, cwd=shared_dir)
    cluster.wait_state(job, {"RUNNING"}, timeout=30)
    started = lambda: "start restart=0" in (out.read_text() if out.exists() else "")  # noqa: E731
    harness.wait_until(started, 30, "the batch shell to start")
    cluster.signal_batch(job, "USR1")
    info = cluster.wait_done(job, timeout=120)
    text = out.read_text()
    assert info["JobState"] == "COMPLETED", (info, text)
    assert info["Restarts"] == "1", info
    assert text.count("got USR1") == 1 and "start restart=1" in text and text.rstrip().endswith("done"), text


def test_each_node_has_its_own_tmp(cluster: harness.Cluster, shared_dir: Path) -> None:
    """/tmp is node-local (as on real clusters); the shared directory is seen by both nodes."""
    marker = f"xgt-{shared_dir.name}"
    cluster.run_in_node(
        "node0", ["sh", "-c", f"echo node0 > /tmp/{marker} && echo node0 > {shared_dir}/seen"]
    )
    probe = f"cat /tmp/{marker} 2>/dev/null || echo absent; cat {shared_dir}/seen"
    assert cluster.run_in_node("node1", ["sh", "-c", probe]).stdout.split() == ["absent", "node0"]
    assert cluster.run_in_node("node0", ["sh", "-c", probe]).stdout.split() == ["node0", "node0"]
    job_tmp = cluster.slurm(["srun", "-N2", "--ntasks-per-node=1", "sh", "-c", f"cat /tmp/{marker} || true"])
    assert job_tmp.stdout.split() == ["node0"], "Slurm tasks do not see the node-local /tmp"
