"""Runs that survive on the real two-node Slurm cluster: a worker killed on node1 is restarted inside the
job (no requeue) and the job COMPLETES with an uninterrupted run's weights; a hand-run (`xgen shell`) job
does the same; a checkpoint written by 2 nodes resumes on 1 node with the same global batch."""

from __future__ import annotations

import re
import tempfile
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
