"""Issue 6 (2): the same training through hand-run nodes (`xgen shell`) and a DeepSpeed hostfile cluster."""

from __future__ import annotations

import subprocess
from pathlib import Path

import e2e
import harness


def _check_trained(out: str, shared: Path) -> e2e.StartLine:
    start = e2e.start_line(out)
    assert (start.world_size, start.nodes, sorted(start.hosts)) == (4, 2, ["node0", "node1"]), start
    assert (start.device, start.backend) == ("cpu", "gloo"), start
    saved = e2e.saved_dir(out)
    assert saved == shared / "out"
    e2e.reload_model(saved)
    return start


def test_shell_scripts_on_both_nodes(
    cluster: harness.Cluster, tiny: Path, shared_dir: Path, procs: list[subprocess.Popen]
) -> None:
    config = e2e.merge(
        e2e.base_config(tiny, shared_dir, name="xgt-shell"), {"cluster": {"master_port": 29631}}
    )
    cfg = e2e.write_config(shared_dir, config)
    logs = {}
    for rank, node in enumerate(("node0", "node1")):
        script = e2e.render(shared_dir, "shell", cfg, "--node-rank", str(rank), script=f"{node}.sh")
        logs[node] = shared_dir / f"{node}.log"
        with open(logs[node], "wb") as log:
            procs.append(
                cluster.popen_in_node(
                    node,
                    ["bash", str(script)],
                    cwd=shared_dir,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=cluster.env(e2e.RUN_ENV),
                )
            )
    codes = [proc.wait(timeout=300) for proc in procs]
    text = {node: path.read_text(errors="replace") for node, path in logs.items()}
    assert codes == [0, 0], (
        f"exit codes {codes}\n--- node0:\n{text['node0'][-4000:]}\n--- node1:\n{text['node1'][-4000:]}"
    )
    _check_trained(text["node0"], shared_dir)


def test_deepspeed_hostfile_over_pdsh(cluster: harness.Cluster, tiny: Path, shared_dir: Path) -> None:
    config = e2e.merge(
        e2e.base_config(tiny, shared_dir, name="xgt-ds"),
        {
            "launcher": "deepspeed",
            "cluster": {"master_port": 29641, "ssh_port": cluster.spec.ssh_port},
            "train": {"deepspeed": "z2"},  # a named ZeRO stage, resolved by the runtime on every node
        },
    )
    cfg = e2e.write_config(shared_dir, config)
    hostfile = shared_dir / "hostfile"
    script = e2e.render(shared_dir, "deepspeed", cfg, "--hostfile", str(hostfile))
    assert hostfile.read_text().split() == ["node0", "slots=2", "node1", "slots=2"]
    proc = cluster.run_in_node(
        "node0", ["bash", str(script)], cwd=shared_dir, timeout=300, check=False, env=cluster.env(e2e.RUN_ENV)
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "pdsh" in out, "DeepSpeed did not use its pdsh multi-node runner"
    start = _check_trained(out, shared_dir)
    assert start.strategy == "deepspeed-z2", start
