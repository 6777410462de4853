"""Runs that survive on the real Slurm cluster: a worker killed on node1 is restarted inside the
job (no requeue) and the job COMPLETES with an uninterrupted run's weights; a hand-run (`xgen shell`) job
does the same; a checkpoint written by 2 nodes resumes on 1 node with the same global batch; a hung
worker is named and restarted; a node lost for good requeues the job onto the spare node."""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

import e2e
import harness
import pytest

STEPS = 12
# Measured: the restarted run's final weights equal the uninterrupted run's exactly (0.0), as every
# resume here is exact; the tolerance only allows for gloo's reduction order should it ever change.
TOLERANCE = 1e-5


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _config(tiny: Path, shared: Path, name: str, out: str, **cluster: object) -> dict:
    train = {"max_steps": STEPS, "save_strategy": "steps", "save_steps": 4, "output_dir": str(shared / out)}
    return e2e.merge(e2e.base_config(tiny, shared, name=name), {"cluster": cluster, "train": train})


@pytest.fixture(scope="module")
def reference(cluster: harness.Cluster, tiny: Path) -> Path:
    """An uninterrupted 2-node run of the same training, once for the module."""
    root = Path(tempfile.mkdtemp(prefix="survive-reference-", dir=cluster.paths.shared))
    cfg = e2e.write_config(root, _config(tiny, root, "xgt-survive-ref", "ref"), "ref.yaml")
    script = e2e.render(root, "slurm", cfg, script="ref.sh")
    info = cluster.wait_done(cluster.sbatch(script, cwd=root, env=e2e.RUN_ENV), timeout=400)
    out = Path(info["StdOut"]).read_text(errors="replace")
    assert info["JobState"] == "COMPLETED", out[-4000:]
    return root / "ref"


def test_killed_worker_restarts_inside_the_slurm_job(
    cluster: harness.Cluster, tiny: Path, shared_dir: Path, reference: Path
) -> None:
    # Rank 3 (node1's second worker) SIGKILLs itself after step 5, one step past checkpoint-4.
    config = _config(tiny, shared_dir, "xgt-survive-kill", "killed", max_restarts=2)
    script = e2e.render(
        shared_dir, "slurm", e2e.write_config(shared_dir, config, "kill.yaml"), script="kill.sh"
    )
    env = {**e2e.RUN_ENV, "XGEN_FAULT_KILL_AT_STEP": "5@3"}
    info = cluster.wait_done(cluster.sbatch(script, cwd=shared_dir, env=env), timeout=600)
    out = Path(info["StdOut"]).read_text(errors="replace")
    assert info["JobState"] == "COMPLETED" and info.get("Restarts", "0") == "0", (info, out[-6000:])
    restart = re.search(r"xgen-runtime: restart 1/2: rank (\d+) on node1 failed \(killed by SIGKILL\)", out)
    assert restart, out[-6000:]
    assert re.search(r"restart cost: [\d.]+ s from the failure", out), out[-6000:]
    assert f"resuming from {shared_dir / 'killed' / 'checkpoint-4'}" in out, out[-6000:]
    assert _max_diff(_weights(shared_dir / "killed"), _weights(reference)) <= TOLERANCE


def test_c10d_rendezvous_restarts_inside_the_slurm_job(
    cluster: harness.Cluster, tiny: Path, shared_dir: Path, reference: Path
) -> None:
    """The seeds' form (--rdzv-backend c10d --rdzv-endpoint first-node:port --rdzv-id job id) across
    the two nodes: the node ranks come from the rendezvous, a killed worker restarts every node."""
    config = _config(tiny, shared_dir, "xgt-survive-c10d", "c10d", max_restarts=2, rendezvous="c10d")
    cfg = e2e.write_config(shared_dir, config, "c10d.yaml")
    script = e2e.render(shared_dir, "slurm", cfg, script="c10d.sh")
    assert "--rdzv-backend c10d" in script.read_text()
    env = {**e2e.RUN_ENV, "XGEN_FAULT_KILL_AT_STEP": "5@3"}
    info = cluster.wait_done(cluster.sbatch(script, cwd=shared_dir, env=env), timeout=600)
    out = Path(info["StdOut"]).read_text(errors="replace")
    assert info["JobState"] == "COMPLETED" and info.get("Restarts", "0") == "0", (info, out[-6000:])
    assert re.search(r"xgen-runtime: world_size=4 nodes=2 hosts=node[01],node[01] ", out), out[-6000:]
    assert re.search(r"xgen-runtime: restart 1/2: rank 3 on node\d failed \(killed by SIGKILL\)", out), out[
        -6000:
    ]
    assert _max_diff(_weights(shared_dir / "c10d"), _weights(reference)) <= TOLERANCE


def test_killed_worker_restarts_inside_a_hand_run_job(
    cluster: harness.Cluster, tiny: Path, shared_dir: Path, reference: Path
) -> None:
    config = _config(tiny, shared_dir, "xgt-survive-shell", "shell", max_restarts=2, master_port=29661)
    cfg = e2e.write_config(shared_dir, config, "shell.yaml")
    scripts = {
        node: e2e.render(shared_dir, "shell", cfg, "--node-rank", str(rank), script=f"survive-{node}.sh")
        for rank, node in enumerate(("node0", "node1"))
    }
    procs: list = []
    fault = {"XGEN_FAULT_KILL_AT_STEP": "5@3"}  # rank 3: node1's second worker
    logs = e2e.start_node_scripts(cluster, shared_dir, scripts, "survive", procs, env=fault)
    codes = [proc.wait(timeout=600) for proc in procs]
    assert codes == [0, 0], e2e.node_logs(logs)
    node1 = logs["node1"].read_text(errors="replace")
    assert re.search(r"xgen-runtime: restart 1/2: rank \d on node1 failed \(killed by SIGKILL\)", node1), (
        e2e.node_logs(logs)
    )
    assert _max_diff(_weights(shared_dir / "shell"), _weights(reference)) <= TOLERANCE


def test_two_nodes_stopped_then_one_node_resumes_with_the_same_global_batch(
    cluster: harness.Cluster, tiny: Path, shared_dir: Path
) -> None:
    first = _config(tiny, shared_dir, "xgt-survive-2to1", "shrink")
    script = e2e.render(shared_dir, "slurm", e2e.write_config(shared_dir, first, "two.yaml"), script="two.sh")
    env = {**e2e.RUN_ENV, "XGEN_FAULT_SIGNAL_AT_STEP": "6"}  # a planned stop after step 6
    info = cluster.wait_done(cluster.sbatch(script, cwd=shared_dir, env=env), timeout=400)
    out = Path(info["StdOut"]).read_text(errors="replace")
    assert (shared_dir / "shrink" / "checkpoint-6").is_dir(), (info, out[-4000:])

    # The same training on one node (2 ranks instead of 4): a smaller allocation came free sooner.
    one = e2e.merge(first, {"cluster": {"nodes": 1, "hosts": ["node0"]}})
    script = e2e.render(shared_dir, "slurm", e2e.write_config(shared_dir, one, "one.yaml"), script="one.sh")
    info = cluster.wait_done(cluster.sbatch(script, cwd=shared_dir, env=e2e.RUN_ENV), timeout=400)
    out = Path(info["StdOut"]).read_text(errors="replace")
    assert info["JobState"] == "COMPLETED", out[-6000:]
    said = (
        "resume on world size 2 (checkpoint written by 4): "
        "gradient_accumulation_steps 1 -> 2 keeps the global batch at 8"
    )
    assert said in out, out[-6000:]
    assert f"resuming from {shared_dir / 'shrink' / 'checkpoint-6'}" in out, out[-6000:]
    steps = sorted({int(s) for s in re.findall(r"xgen-runtime: step (\d+)/", out)})
    assert steps and steps[-1] == STEPS and steps[0] > 6, steps


def test_hung_worker_is_named_and_the_slurm_job_restarts(
    cluster: harness.Cluster, tiny: Path, shared_dir: Path, reference: Path
) -> None:
    # Rank 3 (node1's second worker) SIGSTOPs itself after step 5: alive, silent, its peers wait in the
    # next collective. hang_timeout 20 s: the watchdog must name it, write stacks, and end the workers.
    hang = 20
    config = _config(tiny, shared_dir, "xgt-survive-hang", "hung", max_restarts=1, hang_timeout=hang)
    script = e2e.render(
        shared_dir, "slurm", e2e.write_config(shared_dir, config, "hang.yaml"), script="hang.sh"
    )
    env = {**e2e.RUN_ENV, "XGEN_FAULT_STOP_AT_STEP": "5@3"}
    job = cluster.sbatch(script, cwd=shared_dir, env=env)
    harness.wait_until(lambda: cluster.stopped_processes("node1"), 300, "rank 3 to stop itself", interval=0.2)
    stopped_at = time.monotonic()
    stacks = shared_dir / "xgen-runs" / str(job) / "stacks"
    harness.wait_until(lambda: list(stacks.glob("node*-rank*.txt")), hang + 60, "the watchdog's stacks")
    named_within = time.monotonic() - stopped_at
    info = cluster.wait_done(job, timeout=600)
    out = Path(info["StdOut"]).read_text(errors="replace")
    assert info["JobState"] == "COMPLETED" and info.get("Restarts", "0") == "0", (info, out[-6000:])
    line = re.search(
        r"xgen-runtime: error: hang: no optimizer step for \d+ s after step \d+; stuck: (.*)", out
    )
    assert line and "rank 3 on node1" in line[1], out[-6000:]
    assert named_within <= hang + 60, named_within
    # Every live rank wrote its stacks, named by host and rank; the stopped one's were read from outside
    # by py-spy (installed with the runtime), from the live rank on its node.
    written = {p.name for p in stacks.glob("*.txt")}
    assert {"node0-rank0.txt", "node0-rank1.txt", "node1-rank2.txt", "node1-rank3.txt"} <= written, written
    assert "read by py-spy from rank 2" in (stacks / "node1-rank3.txt").read_text()
    assert re.search(r"xgen-runtime: restart 1/1: rank \d on node\d failed", out), out[-6000:]
    assert _max_diff(_weights(shared_dir / "hung"), _weights(reference)) <= TOLERANCE


def test_lost_node_requeues_the_job_onto_the_spare(
    cluster: harness.Cluster, tiny: Path, shared_dir: Path, reference: Path
) -> None:
    # Rank 3 freezes after step 5 (one step past checkpoint-4), so node1 is lost at a known step: its
    # slurmd and every process of it are SIGKILLed. Slurm marks node1 DOWN (SlurmdTimeout), the job
    # NODE_FAILs and, being requeueable (max_restarts > 0 adds --requeue), runs again on node0 + node2.
    config = _config(tiny, shared_dir, "xgt-survive-lost", "lost", max_restarts=1)
    script = e2e.render(
        shared_dir, "slurm", e2e.write_config(shared_dir, config, "lost.yaml"), script="lost.sh"
    )
    assert "#SBATCH --requeue" in script.read_text()
    env = {**e2e.RUN_ENV, "XGEN_FAULT_STOP_AT_STEP": "5@3"}
    job = cluster.sbatch(script, cwd=shared_dir, env=env)
    try:
        harness.wait_until(lambda: cluster.stopped_processes("node1"), 300, "rank 3 to stop itself", 0.2)
        lost_at = time.monotonic()
        cluster.lose_node("node1")
        info = cluster.wait_done(job, timeout=600)
        took = time.monotonic() - lost_at
    finally:
        cluster.restore_node("node1")
    out = Path(info["StdOut"]).read_text(errors="replace")
    assert info["JobState"] == "COMPLETED" and info.get("Restarts") == "1", (info, out[-6000:])
    assert info.get("NodeList") == "node[0,2]", info
    assert "requeued: attempt 1 of job" in out, out[-6000:]
    assert f"resuming from {shared_dir / 'lost' / 'checkpoint-4'}" in out, out[-6000:]
    steps = sorted({int(s) for s in re.findall(r"xgen-runtime: step (\d+)/", out)})
    assert steps and steps[-1] == STEPS, steps
    assert _max_diff(_weights(shared_dir / "lost"), _weights(reference)) <= TOLERANCE
    print(f"node lost -> job COMPLETED on the spare in {took:.1f} s")
