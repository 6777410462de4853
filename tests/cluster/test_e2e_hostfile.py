"""The same training through hand-run nodes (`xgen shell`) and a DeepSpeed hostfile cluster."""

from __future__ import annotations

import subprocess
from pathlib import Path

import e2e
import harness


def test_shell_scripts_on_both_nodes(
    cluster: harness.Cluster, tiny: Path, shared_dir: Path, procs: list[subprocess.Popen]
) -> None:
    config = e2e.merge(
        e2e.base_config(tiny, shared_dir, name="xgt-shell"), {"cluster": {"master_port": 29631}}
    )
    cfg = e2e.write_config(shared_dir, config)
    scripts = {
        node: e2e.render(shared_dir, "shell", cfg, "--node-rank", str(rank), script=f"{node}.sh")
        for rank, node in enumerate(("node0", "node1"))
    }
    logs = e2e.start_node_scripts(cluster, shared_dir, scripts, "run", procs)
    codes = [proc.wait(timeout=300) for proc in procs]
    assert codes == [0, 0], f"exit codes {codes}\n{e2e.node_logs(logs)}"
    e2e.check_trained_on_both_nodes(logs["node0"].read_text(errors="replace"), shared_dir / "out")


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
    lines = hostfile.read_text().splitlines()
    assert lines[0].startswith("# written by xgen deepspeed --hostfile")  # so a rerun may replace it
    assert " ".join(lines[1:]).split() == ["node0", "slots=2", "node1", "slots=2"]
    proc = cluster.run_in_node(
        "node0", ["bash", str(script)], cwd=shared_dir, timeout=300, check=False, env=cluster.env(e2e.RUN_ENV)
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "pdsh" in out, "DeepSpeed did not use its pdsh multi-node runner"
    start = e2e.check_trained_on_both_nodes(out, shared_dir / "out")
    assert start.strategy == "deepspeed-z2", start
