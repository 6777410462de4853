"""Issue 8 (1) on the real cluster: USR1 to the batch shell → checkpoint → requeue → resume → the same model.

The signal takes Slurm's real path (`scancel --signal=USR1 --batch`, what `--signal=B:USR1@N` does
before a time limit); the generated script forwards it, the runtime checkpoints and exits 75, the
script requeues, and the restarted job resumes from that checkpoint.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import e2e
import harness

STEPS = 80
STEP_RE = re.compile(rf"xgen-runtime: step (\d+)/{STEPS}\b")


def _config(tiny: Path, shared: Path, out: str, requeue: bool) -> dict:
    # save_steps beyond max_steps: the only checkpoint is the one the signal asks for.
    train = {"max_steps": STEPS, "save_strategy": "steps", "save_steps": 10 * STEPS, "max_samples": None}
    return e2e.merge(
        e2e.base_config(tiny, shared, name=f"xgt-{out}"),
        {
            "slurm": {"requeue": requeue, "max_requeues": 3},
            "train": {**train, "output_dir": str(shared / out)},
        },
    )


def _max_weight_diff(a: Path, b: Path) -> float:
    code = (
        "import sys; from safetensors.torch import load_file as L; "
        "x, y = L(sys.argv[1] + '/model.safetensors'), L(sys.argv[2] + '/model.safetensors'); "
        "assert x.keys() == y.keys(); print(max((x[k] - y[k]).abs().max().item() for k in x))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(a), str(b)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return float(proc.stdout.strip())


def test_usr1_checkpoints_requeues_and_resumes(
    cluster: harness.Cluster, tiny: Path, shared_dir: Path
) -> None:
    # The uninterrupted reference: same seed, data and steps.
    ref_config = e2e.write_config(shared_dir, _config(tiny, shared_dir, "ref", False), "ref.yaml")
    ref_script = e2e.render(shared_dir, "slurm", ref_config, script="ref.sh")
    ref = cluster.wait_done(cluster.sbatch(ref_script, cwd=shared_dir, env=e2e.RUN_ENV), timeout=300)
    ref_out = Path(ref["StdOut"]).read_text(errors="replace")
    assert ref["JobState"] == "COMPLETED", ref_out[-4000:]

    config = e2e.write_config(shared_dir, _config(tiny, shared_dir, "preempted", True), "preempt.yaml")
    script = e2e.render(shared_dir, "slurm", config, script="preempt.sh")
    job = cluster.sbatch(script, cwd=shared_dir, env=e2e.RUN_ENV)
    out_file = Path(cluster.wait_state(job, {"RUNNING"}, timeout=60)["StdOut"])
    e2e.wait_for(
        out_file, rf"xgen-runtime: step [5-9]/{STEPS}\b|xgen-runtime: step \d\d+/{STEPS}\b", timeout=240
    )
    cluster.signal_batch(job, "USR1")
    info = cluster.wait_done(job, timeout=300)
    out = out_file.read_text(errors="replace")
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, out[-5000:])
    assert info["Restarts"] == "1", (info, out[-5000:])

    stopped = re.search(r"SIGUSR1 received: checkpointing at step (\d+)", out)
    assert stopped, out[-5000:]
    step = int(stopped.group(1))
    assert step < STEPS, "the signal arrived after training had finished; nothing was preempted"
    assert re.search(rf"resuming from \S*checkpoint-{step}\b", out), out[-5000:]
    # The step counter over both runs of the job: never repeats, never skips.
    assert [int(s) for s in STEP_RE.findall(out)] == list(range(1, STEPS + 1)), out[-5000:]
    diff = _max_weight_diff(shared_dir / "ref", e2e.saved_dir(out))
    assert diff < 1e-4, f"preempted run's model differs from the uninterrupted one by {diff}"
