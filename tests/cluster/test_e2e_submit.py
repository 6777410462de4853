"""On the real two-node Slurm: `xgen submit --then export` chains, and a sweep's job array.

Lean on purpose (the suite is at its time ceiling): one node and one process per job, a tiny LoRA,
one or two optimizer steps.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import e2e
import harness
import yaml

# Imported by every python on the nodes of the job whose cluster.env PYTHONPATH names its directory
# (not in xgen's own environment: xgen is python too): the training fails at start.
FAIL = 'raise SystemExit("xgt: injected failure of the first job")\n'


def lora_config(tiny: Path, work: Path, name: str, **train) -> dict:
    """One node, one CPU process, a LoRA of the tiny model: the smallest job that trains."""
    return e2e.merge(
        e2e.base_config(tiny, work, name=name),
        {
            # preflight off: its srun step and python start are proven elsewhere and cost ~10 s a job here
            "cluster": {"nodes": 1, "devices_per_node": 1, "hosts": None, "preflight": False},
            "slurm": {"cpus_per_task": 1, "output": "slurm-%j.out"},
            "train": {"finetuning_type": "lora", "lora_rank": 4, "max_steps": 1, "max_samples": 8, **train},
        },
    )


def xgen_submit(cluster: harness.Cluster, config: Path, *args: str, env: dict | None = None) -> list[int]:
    """The real `xgen submit`, as a user runs it on a login node; the job ids it prints."""
    proc = subprocess.run(
        [str(e2e.XGEN), "submit", str(config), *args],
        capture_output=True,
        text=True,
        env=cluster.env({**e2e.RUN_ENV, **(env or {})}),
        cwd="/",
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return [int(line) for line in proc.stdout.split()]


def pending_or_running(cluster: harness.Cluster, jobs: list[int]) -> list[str]:
    """squeue's lines (id, state, reason) for these jobs; [] once none is queued or running."""
    out = cluster.slurm(["squeue", "-h", "-o", "%i %T %r"]).stdout
    return [line for line in out.splitlines() if int(line.split()[0].split("_")[0]) in jobs]


def test_submit_then_export_runs_in_order_and_a_failed_training_leaves_nothing_pending(
    cluster: harness.Cluster, tiny: Path, shared_dir: Path
) -> None:
    """Two chains at once: one trains then exports (the merged model loads); one whose training fails,
    after which its export job is cancelled by Slurm (--kill-on-invalid-dep), not left pending."""
    good, bad = shared_dir / "good", shared_dir / "bad"
    for work in (good, bad):
        work.mkdir()
    (bad / "fault").mkdir()
    (bad / "fault" / "sitecustomize.py").write_text(FAIL)
    train_id, export_id = xgen_submit(
        cluster, e2e.write_config(good, lora_config(tiny, good, "xgt-chain")), "--then", "export"
    )
    failing = e2e.merge(
        lora_config(tiny, bad, "xgt-chain-fail"), {"cluster": {"env": {"PYTHONPATH": str(bad / "fault")}}}
    )
    bad_train, bad_export = xgen_submit(cluster, e2e.write_config(bad, failing), "--then", "export")
    # What was submitted stays in the run directory: the scripts and the config.
    for work, job in ((good, train_id), (good, export_id), (bad, bad_train)):
        assert {"job.sh", "config.yaml"} <= {p.name for p in (work / "xgen-runs" / str(job)).iterdir()}
    export_script = (good / "xgen-runs" / str(export_id) / "job.sh").read_text()
    assert f"#SBATCH --dependency=afterok:{train_id}\n#SBATCH --kill-on-invalid-dep=yes\n" in export_script

    # The failing chain: training FAILED, the export cancelled, nothing of the chain left in squeue.
    info = cluster.wait_done(bad_train, timeout=90)
    assert info["JobState"] == "FAILED", info
    dead = cluster.wait_done(bad_export, timeout=60)
    assert dead["JobState"] == "CANCELLED", dead
    deadline = time.monotonic() + 30
    while pending_or_running(cluster, [bad_train, bad_export]):
        assert time.monotonic() < deadline, pending_or_running(cluster, [bad_train, bad_export])
        time.sleep(1)
    assert not (bad / "xgen-runs" / str(bad_export) / "logs").exists()  # it never started

    # The good chain: training, then the export after it, then a standalone model that loads.
    trained = cluster.wait_done(train_id, timeout=180)
    assert trained["JobState"] == "COMPLETED", Path(trained["StdOut"]).read_text(errors="replace")[-4000:]
    exported = cluster.wait_done(export_id, timeout=180)
    log = Path(exported["StdOut"]).read_text(errors="replace")
    assert exported["JobState"] == "COMPLETED", log[-4000:]
    assert exported["StartTime"] >= trained["EndTime"], (trained["EndTime"], exported["StartTime"])
    merged = good / "out" / "merged"
    assert f"xgen-runtime: exported model to {merged}" in log, log[-4000:]
    assert (good / "out" / "adapter_config.json").is_file()
    # A standalone model: weights and config, no adapter (runtime tests prove the merge's numbers).
    assert f"xgen-runtime: export: merged {good / 'out'} on cpu" in log, log[-4000:]
    assert (merged / "config.json").is_file() and (merged / "model.safetensors").is_file()
    assert not (merged / "adapter_config.json").exists()


def test_sweep_two_by_two_trains_four_outputs(cluster: harness.Cluster, tiny: Path, shared_dir: Path) -> None:
    """sweep: 2 learning rates x 2 LoRA ranks -> ONE array job of 4 tasks (at most 2 at once), each
    into its own output_dir with its own values."""
    config = lora_config(tiny, shared_dir, "xgt-sweep")
    config["sweep"] = {"learning_rate": [1.0e-3, 2.0e-3], "lora_rank": [4, 8]}
    config["slurm"]["array_limit"] = 2
    (array_id,) = xgen_submit(cluster, e2e.write_config(shared_dir, config))
    script = (shared_dir / "xgen-runs" / str(array_id) / "job.sh").read_text()
    assert "#SBATCH --array=0-3%2\n" in script
    assert cluster.show_job(array_id).get("ArrayTaskThrottle") == "2"
    expected = [(1.0e-3, 4), (1.0e-3, 8), (2.0e-3, 4), (2.0e-3, 8)]
    for task, (lr, rank) in enumerate(expected):
        info = cluster.wait_done(f"{array_id}_{task}", timeout=240)
        run_dir = shared_dir / "xgen-runs" / f"{array_id}_{task}"
        assert info["JobState"] == "COMPLETED", (
            run_dir,
            Path(info["StdOut"]).read_text(errors="replace")[-4000:],
        )
        row = json.loads((run_dir / "sweep-task.json").read_text())
        name = f"sweep-{task}-learning_rate={lr}-lora_rank={rank}"
        assert row == {"learning_rate": lr, "lora_rank": rank, "output_dir": str(shared_dir / "out" / name)}
        resolved = yaml.safe_load((shared_dir / "out" / name / "xgen_config_resolved.yaml").read_text())
        assert (resolved["learning_rate"], resolved["lora_rank"]) == (lr, rank), resolved
        adapter = json.loads((shared_dir / "out" / name / "adapter_config.json").read_text())
        assert adapter["r"] == rank, adapter
        assert (shared_dir / "out" / name / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in (shared_dir / "out").iterdir()) == sorted(
        f"sweep-{t}-learning_rate={lr}-lora_rank={r}" for t, (lr, r) in enumerate(expected)
    )
