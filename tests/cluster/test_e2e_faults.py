"""A node dying mid-run and a wrong master address end the job quickly and say why."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import e2e
import harness


def _workers(cluster: harness.Cluster, node: str) -> list[int]:
    """Training worker processes on a node (the children of `runtime launch`, not the agent itself)."""
    return [
        pid
        for pid in cluster.node_processes(node, "runtime")
        if "train" in harness._cmdline(pid) and "runtime launch" not in harness._cmdline(pid)
    ]


def test_killing_node1_workers_fails_the_whole_job(
    cluster: harness.Cluster, tiny: Path, shared_dir: Path
) -> None:
    config = e2e.merge(
        e2e.base_config(tiny, shared_dir, name="xgt-kill"),
        {"train": {"max_steps": 100000, "max_samples": None}},
    )
    script = e2e.render(shared_dir, "slurm", e2e.write_config(shared_dir, config))
    job = cluster.sbatch(script, cwd=shared_dir, env=e2e.RUN_ENV)
    info = cluster.wait_state(job, {"RUNNING"} | harness.FINAL_STATES, timeout=60)
    out_file = Path(info["StdOut"])
    e2e.wait_for(out_file, e2e.START_RE.pattern, timeout=240)  # training has started on every rank
    time.sleep(2)
    victims = _workers(cluster, "node1")
    assert len(victims) == 2, f"expected 2 workers on node1, found {victims}"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    info = cluster.wait_done(job, timeout=120)
    took = time.monotonic() - killed_at
    out = out_file.read_text(errors="replace")
    assert info["JobState"] != "COMPLETED" and info["ExitCode"] != "0:0", (info, out[-4000:])
    assert took < 120
    assert re.search(r"(?i)node1.*(error|fail|exit)|(error|fail).*node1", out), out[-6000:]
    # Slurm reports the job ended while slurmstepd may still be reaping node0's workers (SIGTERM, then
    # SIGKILL after KillWait): allow a few seconds, then none may be left.
    deadline = time.monotonic() + 15
    while _workers(cluster, "node0") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _workers(cluster, "node0"), "workers left running on node0 15 s after the job ended"


def test_wrong_master_addr_fails_within_rdzv_timeout(
    cluster: harness.Cluster, tiny: Path, shared_dir: Path
) -> None:
    timeout = 20
    wrong = cluster.spec.unused_addr()  # in the harness subnet; nothing listens there
    config = e2e.merge(
        e2e.base_config(tiny, shared_dir, name="xgt-badmaster"),
        {"cluster": {"master_addr": wrong, "rdzv_timeout": timeout}},
    )
    script = e2e.render(shared_dir, "slurm", e2e.write_config(shared_dir, config))
    submitted = time.monotonic()
    job = cluster.sbatch(script, cwd=shared_dir, env=e2e.RUN_ENV)
    info = cluster.wait_done(job, timeout=timeout + 120)
    took = time.monotonic() - submitted
    out = Path(info["StdOut"]).read_text(errors="replace")
    assert info["JobState"] == "FAILED", (info, out[-4000:])
    # Start-up (imports on a loaded 2-core machine) plus the configured timeout, not torch's default.
    assert took < timeout + 60, f"took {took:.0f} s with rdzv_timeout={timeout}:\n{out[-4000:]}"
    assert wrong in out, out[-4000:]
    assert re.search(r"(?i)rendezvous|timed out|timeout", out), out[-4000:]
