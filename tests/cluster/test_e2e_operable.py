"""Operable on the real two-node Slurm: logs you can find, what ran stays what ran, `xgen status`."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import e2e
import harness

# Imported by every python of the job (PYTHONPATH): the worker with RANK=3 (node1, local rank 1) asks
# for a device kind the runtime does not know, so it alone fails inside training, after the node checks.
FAULT = """import os
if os.environ.get("RANK") == "3":
    os.environ["XGEN_DEVICE"] = "tpu"
"""


def test_missing_log_dir_and_failing_rank_named_by_status(
    cluster: harness.Cluster, tiny: Path, shared_dir: Path
) -> None:
    """slurm.output points into a directory that does not exist: `xgen slurm` makes it, the job logs.
    Rank 3 fails: `xgen status` names node1, rank 3 and its error."""
    config = e2e.merge(
        e2e.base_config(tiny, shared_dir, name="xgt-status"), {"slurm": {"output": "no-such-dir/job-%j.out"}}
    )
    fault = shared_dir / "fault"
    fault.mkdir()
    (fault / "sitecustomize.py").write_text(FAULT)
    script = e2e.render(shared_dir, "slurm", e2e.write_config(shared_dir, config))
    assert (shared_dir / "no-such-dir").is_dir()
    job = cluster.sbatch(script, cwd="/", env={**e2e.RUN_ENV, "PYTHONPATH": str(fault)})  # --chdir: workdir
    info = cluster.wait_done(job, timeout=120)
    out = Path(info["StdOut"]).read_text(errors="replace")
    assert Path(info["StdOut"]).parent == shared_dir / "no-such-dir"
    assert info["JobState"] == "FAILED", out[-4000:]
    status = subprocess.run(
        [str(e2e.XGEN), "status", str(job)], capture_output=True, text=True, env=cluster.env(), timeout=60
    )
    assert status.returncode == 0, status.stderr
    text = status.stdout
    assert f"job {job}: FAILED" in text, text
    assert "first failure: node node1, rank 3: ConfigError" in text and "got 'tpu'" in text, (
        text + out[-3000:]
    )
    run_dir = shared_dir / "xgen-runs" / str(job)
    assert {p.name for p in (run_dir / "logs").glob("*.log")} == {"node0.attempt0.log", "node1.attempt0.log"}
    assert os.stat(run_dir / "config.yaml").st_mode & 0o077 == 0


def test_yaml_edited_after_submission_then_requeued_keeps_the_original(
    cluster: harness.Cluster, tiny: Path, shared_dir: Path
) -> None:
    """Submitted held, the YAML then points output_dir elsewhere; released and later requeued, both runs
    read the frozen config: the edited output_dir never appears.

    Lean on purpose (the claim is about the config both nodes read, not about training): one process per
    node, 2 steps, no preflight, no wait for a periodic scheduling pass. What remains is two job starts and
    Slurm's ~11 s requeue delay."""
    config = e2e.merge(
        e2e.base_config(tiny, shared_dir, name="xgt-frozen"),
        {
            "cluster": {"devices_per_node": 1, "preflight": False},
            "slurm": {"cpus_per_task": 1},
            "train": {"max_steps": 2},
        },
    )
    config_path = e2e.write_config(shared_dir, config)
    script = e2e.render(shared_dir, "slurm", config_path)
    job = cluster.sbatch(script, "--hold", cwd=shared_dir, env=e2e.RUN_ENV)
    config_path.write_text(
        config_path.read_text().replace(str(shared_dir / "out"), str(shared_dir / "edited"))
    )
    began = time.monotonic()
    cluster.slurm(["scontrol", "release", str(job)])
    info = cluster.wait_done(job, timeout=120)
    assert info["JobState"] == "COMPLETED", Path(info["StdOut"]).read_text(errors="replace")[-4000:]
    first_s = time.monotonic() - began
    # Requeued held, released once Slurm's requeue delay is over (a requeued job may start only after
    # cred_expire + 1 s: 11 s with the harness's cred_expire=10): the release runs the scheduler at once,
    # where a plain `scontrol requeue` also waits for the next periodic scheduling pass (one run here: the
    # restart began ~40 s after the requeue, from log times). Same restart: Restarts=1, SLURM_RESTART_COUNT=1.
    cluster.slurm(["scontrol", "requeuehold", str(job)])
    time.sleep(12)
    cluster.slurm(["scontrol", "release", str(job)])
    logs = shared_dir / "xgen-runs" / str(job) / "logs"
    deadline = time.time() + 180  # a bound for a loaded machine, not the expected time
    while True:
        info = cluster.show_job(job)
        if info.get("Restarts") == "1" and info["JobState"] in harness.FINAL_STATES:
            break
        tails = "".join(f"--- {p.name}:\n{p.read_text(errors='replace')[-1500:]}" for p in logs.glob("*.log"))
        assert time.time() < deadline, f"{info}\n{tails}"
        time.sleep(1)
    second_s = time.monotonic() - began - first_s
    print(f"first attempt {first_s:.0f} s, requeue and second attempt {second_s:.0f} s")
    assert info["JobState"] == "COMPLETED"
    assert (shared_dir / "out" / "model.safetensors").is_file()
    assert not (shared_dir / "edited").exists()
    first = (logs / "node0.attempt0.log").read_text()
    assert "world_size=2 nodes=2" in first, first[-3000:]  # trained over both nodes
    second = (logs / "node0.attempt1.log").read_text()
    assert f"training already complete in {shared_dir / 'out'}" in second, second[-3000:]


def test_two_jobs_on_the_same_nodes_get_different_ports_and_both_complete(
    cluster: harness.Cluster, tiny: Path, shared_dir: Path
) -> None:
    """Two 2-node jobs at once on node0+node1: master port 20000 + job id % 20000 differs, both train."""
    jobs = {}
    for name in ("a", "b"):
        work = shared_dir / name
        work.mkdir()
        config = e2e.merge(
            e2e.base_config(tiny, work, name=f"xgt-port-{name}"),
            {"cluster": {"devices_per_node": 1}, "slurm": {"cpus_per_task": 1}},
        )
        script = e2e.render(work, "slurm", e2e.write_config(work, config))
        jobs[name] = cluster.sbatch(script, cwd=work, env=e2e.RUN_ENV)
    for name in jobs:
        cluster.wait_state(jobs[name], {"RUNNING", *harness.FINAL_STATES}, timeout=60)
    running = {name: cluster.show_job(job) for name, job in jobs.items()}
    outs = {}
    for name, job in jobs.items():
        info = cluster.wait_done(job, timeout=120)
        outs[name] = Path(info["StdOut"]).read_text(errors="replace")
        assert info["JobState"] == "COMPLETED", outs[name][-4000:]
        assert (shared_dir / name / "out" / "model.safetensors").is_file()
    ports = {name: re.search(r"master=node0:(\d+)", out)[1] for name, out in outs.items()}
    assert ports["a"] != ports["b"], ports
    # Both held node0 and node1 at the same time (else this proves nothing about port clashes).
    assert all(info["JobState"] == "RUNNING" for info in running.values()), running


def test_deepspeed_launch_with_its_hostfile_removed_fails_at_once(
    cluster: harness.Cluster, tiny: Path, shared_dir: Path
) -> None:
    """DeepSpeed itself would say "local resources only" and train 2 nodes' job on node0, exit 0."""
    config = e2e.merge(
        e2e.base_config(tiny, shared_dir, name="xgt-ds-nohostfile"),
        {"launcher": "deepspeed", "cluster": {"ssh_port": cluster.spec.ssh_port}},
    )
    hostfile = shared_dir / "hostfile"
    script = e2e.render(
        shared_dir, "deepspeed", e2e.write_config(shared_dir, config), "--hostfile", str(hostfile)
    )
    hostfile.unlink()
    start = time.monotonic()
    proc = cluster.run_in_node(
        "node0", ["bash", str(script)], cwd=shared_dir, timeout=60, check=False, env=cluster.env(e2e.RUN_ENV)
    )
    took = time.monotonic() - start
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "error" in line.lower()]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    # xgen's line style: `xgen: <UTC time> <node>: <what>` (templates/_logs.sh.j2).
    assert [re.sub(r"^xgen: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", "xgen: ", line) for line in errors] == [
        f"xgen: node0: error: hostfile {hostfile} not found on node0; write it where the launching "
        "node can read it (xgen deepspeed --hostfile PATH)"
    ], errors
    assert took < 15, took
    assert not (shared_dir / "out").exists()
