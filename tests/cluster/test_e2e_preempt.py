"""On the real cluster: preemption, a kill mid-save, and re-running hand-run nodes.

Every run here trains the same model (same seed, data, steps, world size 2 nodes × 2 ranks) and is
compared with ONE uninterrupted Slurm run, submitted once per module and running alongside the first
test (each job waits ~10 s for Slurm's credential expiry after a requeue; the reference uses that time).

- Proofs 1 and 3: one job, USR1 to the batch shell three times (`scancel --signal=USR1 --batch`, what
  `--signal=B:USR1@N` does before a time limit) → checkpoint → `scontrol requeue` → resume, each time.
- Proof 2: rank 0 SIGKILLed between writing checkpoint-N and publishing it → the job fails; the same
  script resubmitted resumes from the previous complete checkpoint, never the half-published one.
- The per-node shell path: SIGTERM to both nodes' torchrun → checkpoint → the same two scripts rerun resume.
- The DeepSpeed hostfile path (ZeRO-2, pdsh): SIGUSR1 reaches one rank on node1 only → every rank
  checkpoints the same step → the same script rerun resumes.

Why TOLERANCE is 1e-5 and not 0: a restarted process's first step reduces gradients with DDP's initial
buckets (rebuilt after the first step of every process), so the sum over 4 ranks can round differently
once; measured max |Δweight| over 120 steps was 1.2e-7 to 2.4e-7 (one or two float32 ulps at 1.0), also
after three restarts: Adam's normalised updates keep it there. 1e-5 is ~50× that, and ~100× below what a
wrong resume produces: one step repeated or skipped moves weights by ~lr = 1e-3.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import e2e
import harness
import pytest

STEPS = 120
PREEMPTIONS = 3
TOLERANCE = 1e-5
STEP_RE = re.compile(rf"xgen-runtime: step (\d+)/{STEPS} \| loss (\S+)")
RESUME_RE = re.compile(r"xgen-runtime: resuming from (\S+)/checkpoint-(\d+) \(newest complete checkpoint")
START = "xgen-runtime: world_size="


def _config(tiny: Path, shared: Path, out: Path, *, requeue: bool = True, **train) -> dict:
    """The one training every test runs; only where it saves (and how often) differs."""
    # save_steps beyond max_steps by default: the only checkpoints are the ones a signal asks for.
    settings = {"max_steps": STEPS, "save_strategy": "steps", "save_steps": 10 * STEPS, "max_samples": None}
    return e2e.merge(
        e2e.base_config(tiny, shared, name=f"xgt-{out.name}"),
        {
            "slurm": {"requeue": requeue, "max_requeues": PREEMPTIONS},
            "train": {**settings, **train, "output_dir": str(out)},
        },
    )


def _steps(text: str) -> list[int]:
    return [int(step) for step, _ in STEP_RE.findall(text)]


def _stops(signal_name: str, text: str) -> list[int]:
    """The steps at which the runtime stopped for `signal_name` (on rank 0 or first on another rank)."""
    found = re.findall(rf"{signal_name} received(?: \(on another rank\))?: checkpointing at step (\d+)", text)
    return [int(step) for step in found]


def _losses(text: str) -> dict[int, float]:
    return {int(step): float(loss) for step, loss in STEP_RE.findall(text)}


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


def _complete(out: Path) -> list[str]:
    """Published checkpoints (what resume may pick), oldest first."""
    found = [p for p in out.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return [p.name for p in sorted(found, key=lambda p: int(p.name.split("-")[1]))]


@dataclass
class Reference:
    """The uninterrupted run: submitted at once, waited for only when a test compares with it."""

    cluster: harness.Cluster
    job: int
    out: Path

    @functools.cached_property
    def losses(self) -> dict[int, float]:
        info = self.cluster.wait_done(self.job, timeout=300)
        text = Path(info["StdOut"]).read_text(errors="replace")
        assert info["JobState"] == "COMPLETED", text[-4000:]
        assert _steps(text) == list(range(1, STEPS + 1)), text[-4000:]
        return _losses(text)

    def check_same_model(self, text: str, resumed_at: list[int]) -> None:
        """The first loss after each resume and the final weights match the uninterrupted run."""
        losses = _losses(text)
        for step in resumed_at:  # printed with 4 significant digits
            assert losses[step + 1] == pytest.approx(self.losses[step + 1], rel=2e-4), (step, text[-3000:])
        diff = _max_weight_diff(self.out, e2e.saved_dir(text))
        print(f"max |Δweight| vs the uninterrupted run: {diff:.2e} (resumed at {resumed_at})")
        assert diff < TOLERANCE, f"the model differs from the uninterrupted run's by {diff}"


@pytest.fixture(scope="module")
def reference(cluster: harness.Cluster, tiny: Path) -> Reference:
    root = Path(tempfile.mkdtemp(prefix="reference-", dir=cluster.paths.shared))
    config = e2e.write_config(root, _config(tiny, root, root / "ref", requeue=False), "ref.yaml")
    script = e2e.render(root, "slurm", config, script="ref.sh")
    return Reference(cluster, cluster.sbatch(script, cwd=root, env=e2e.RUN_ENV), root / "ref")


def _wait_running(cluster: harness.Cluster, job: int, restarts: int) -> dict[str, str]:
    def running():
        info = cluster.show_job(job)
        assert info.get("JobState") not in harness.FINAL_STATES, (
            f"job ended before restart {restarts}: {info}"
        )
        return info if info.get("JobState") == "RUNNING" and info.get("Restarts") == str(restarts) else None

    return harness.wait_until(running, 180, f"job {job} running after {restarts} restarts", interval=0.5)


def _wait_steps(log: Path, run: int, steps: int, timeout: float = 240) -> None:
    """Wait until the run-th start of the runtime in `log` has logged `steps` steps."""

    def trained():
        runs = log.read_text(errors="replace").split(START)[1:] if log.exists() else []
        return len(runs) >= run and len(STEP_RE.findall(runs[run - 1])) >= steps

    try:
        harness.wait_until(trained, timeout, f"{steps} steps of run {run} in {log}", interval=0.3)
    except harness.HarnessError as err:
        raise AssertionError(
            f"{err}:\n{log.read_text(errors='replace')[-5000:] if log.exists() else ''}"
        ) from None


def test_three_preemptions_in_one_job(
    cluster: harness.Cluster, tiny: Path, shared_dir: Path, reference: Reference
) -> None:
    """Proofs 1 and 3: USR1 → checkpoint → requeue → resume at the same step, three times in one job."""
    out = shared_dir / "preempted"
    config = e2e.write_config(shared_dir, _config(tiny, shared_dir, out), "preempt.yaml")
    script = e2e.render(shared_dir, "slurm", config, script="preempt.sh")
    job = cluster.sbatch(script, cwd=shared_dir, env=e2e.RUN_ENV)
    for restarts in range(PREEMPTIONS):
        log = Path(_wait_running(cluster, job, restarts)["StdOut"])
        _wait_steps(log, restarts + 1, steps=3)  # this run trains: its pid files and the trap are in place
        cluster.signal_batch(job, "USR1")
    info = cluster.wait_done(job, timeout=300)
    text = log.read_text(errors="replace")
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, text[-5000:])
    assert info["Restarts"] == str(PREEMPTIONS), (info, text[-5000:])

    stops = _stops("SIGUSR1", text)
    assert len(stops) == PREEMPTIONS and stops == sorted(set(stops)) and stops[-1] < STEPS, (
        f"not {PREEMPTIONS} stops before the end: {stops}\n{text[-5000:]}"
    )
    requeues = re.findall(rf"requeueing job {job} \(restart (\d+) of {PREEMPTIONS}\)", text)
    assert requeues == [str(i) for i in range(1, PREEMPTIONS + 1)], text[-5000:]
    # Each restart resumes from the checkpoint its predecessor wrote, in this job's output_dir.
    assert [(Path(d), int(n)) for d, n in RESUME_RE.findall(text)] == [(out, s) for s in stops], text[-5000:]
    assert text.count("xgen-runtime: starting fresh") == 1 and text.count(START) == PREEMPTIONS + 1
    # The step counter over all four runs: exactly the configured steps, none repeated or skipped.
    assert _steps(text) == list(range(1, STEPS + 1)), text[-5000:]
    # The three preemption checkpoints, plus the one the Trainer always writes at the last step.
    assert _complete(out) == [f"checkpoint-{s}" for s in [*stops, STEPS]], sorted(
        p.name for p in out.iterdir()
    )
    assert not list((out / ".xgen-partial").glob("checkpoint-*")), "a staged checkpoint was left behind"
    reference.check_same_model(text, stops)


def test_rank_killed_mid_save_then_resubmit_resumes_previous_checkpoint(
    cluster: harness.Cluster, tiny: Path, shared_dir: Path, reference: Reference
) -> None:
    """Proof 2: rank 0 SIGKILLed after every rank staged checkpoint-40 and before it was published."""
    out = shared_dir / "killed"
    config = _config(tiny, shared_dir, out, save_steps=20, save_total_limit=2)
    script = e2e.render(shared_dir, "slurm", e2e.write_config(shared_dir, config), script="job.sh")
    # The fault goes in through the submit environment, so the very same script is resubmitted clean.
    job = cluster.sbatch(script, cwd=shared_dir, env={**e2e.RUN_ENV, "XGEN_FAULT_KILL_IN_SAVE": "40"})
    staged = out / ".xgen-partial" / "checkpoint-40"
    harness.wait_until(staged.exists, 240, f"{staged} to be written")
    seen = time.monotonic()
    info = cluster.wait_done(job, timeout=120)
    took = time.monotonic() - seen
    text = Path(info["StdOut"]).read_text(errors="replace")
    assert info["JobState"] == "FAILED" and info["ExitCode"] != "0:0", (info, text[-4000:])
    assert info["Restarts"] == "0", "a crash (no checkpoint-and-stop) must not requeue"
    assert took < 90, f"the job took {took:.0f} s to fail after the kill"
    # Every rank wrote its part (trainer_state.json is written last), yet it was never published.
    assert (staged / "trainer_state.json").is_file()
    assert _complete(out) == ["checkpoint-20"], sorted(p.name for p in out.iterdir())

    rerun = cluster.wait_done(cluster.sbatch(script, cwd=shared_dir, env=e2e.RUN_ENV), timeout=300)
    text = Path(rerun["StdOut"]).read_text(errors="replace")
    assert rerun["JobState"] == "COMPLETED" and rerun["ExitCode"] == "0:0", (rerun, text[-5000:])
    assert RESUME_RE.findall(text) == [(str(out), "20")], text[-5000:]
    assert _steps(text) == list(range(21, STEPS + 1)), text[-5000:]
    assert not staged.exists(), "the half-published checkpoint survived the next start"
    assert _complete(out) == ["checkpoint-100", "checkpoint-120"], "save_total_limit=2 not kept"
    reference.check_same_model(text, [20])


def test_shell_nodes_sigterm_then_same_scripts_resume(
    cluster: harness.Cluster,
    tiny: Path,
    shared_dir: Path,
    reference: Reference,
    procs: list[subprocess.Popen],
) -> None:
    """Hand-run nodes (`xgen shell`): SIGTERM to each node's torchrun → checkpoint; rerunning resumes."""
    out = shared_dir / "shell"
    config = e2e.merge(_config(tiny, shared_dir, out), {"cluster": {"master_port": 29651}})
    cfg = e2e.write_config(shared_dir, config)
    scripts = {
        node: e2e.render(shared_dir, "shell", cfg, "--node-rank", str(rank), script=f"{node}.sh")
        for rank, node in enumerate(("node0", "node1"))
    }
    logs = e2e.start_node_scripts(cluster, shared_dir, scripts, "first", procs)
    _wait_steps(logs["node0"], 1, steps=5)
    for node in scripts:  # what a scheduler or an operator stopping the nodes does
        (agent,) = [
            pid
            # torchrun is given the config frozen into the run directory, not the YAML itself.
            for pid in cluster.node_processes(node, str(shared_dir / "xgen-runs"))
            if "runtime launch" in harness._cmdline(pid)
        ]
        os.kill(agent, signal.SIGTERM)
    codes = [proc.wait(timeout=120) for proc in procs]
    first = logs["node0"].read_text(errors="replace")
    assert all(code != 0 for code in codes), f"exit codes {codes}\n{e2e.node_logs(logs)}"
    stopped = _stops("SIGTERM", first)
    assert len(stopped) == 1 and stopped[0] < STEPS, e2e.node_logs(logs)
    stop = stopped[0]
    assert _complete(out) == [f"checkpoint-{stop}"], e2e.node_logs(logs)

    procs.clear()
    logs = e2e.start_node_scripts(cluster, shared_dir, scripts, "again", procs)
    codes = [proc.wait(timeout=300) for proc in procs]
    second = logs["node0"].read_text(errors="replace")
    assert codes == [0, 0], f"exit codes {codes}\n{e2e.node_logs(logs)}"
    assert RESUME_RE.findall(second) == [(str(out), str(stop))], second[-5000:]
    assert _steps(first) + _steps(second) == list(range(1, STEPS + 1)), (first[-3000:], second[-3000:])
    reference.check_same_model(second, [stop])


def test_deepspeed_hostfile_signal_on_node1_then_same_script_resumes(
    cluster: harness.Cluster, tiny: Path, shared_dir: Path, reference: Reference
) -> None:
    """The DeepSpeed hostfile path (pdsh to node1) with ZeRO-2: SIGUSR1 reaches only rank 2, on node1,
    after step 30 → every rank on both nodes checkpoints step 30 and exits 75; rank 0 names the signal;
    the very same script rerun resumes there and ends with the uninterrupted run's model."""
    stop = 30
    out = shared_dir / "ds"
    config = e2e.merge(
        _config(tiny, shared_dir, out, deepspeed="z2"),
        {
            "launcher": "deepspeed",
            "cluster": {
                "master_port": 29661,
                "ssh_port": cluster.spec.ssh_port,
                # Via the config so pdsh carries it to node1 (DeepSpeed's env file), like any user env.
                "env": {"XGEN_FAULT_SIGNAL_AT_STEP": f"{stop}@2"},
            },
        },
    )
    cfg = e2e.write_config(shared_dir, config)
    script = e2e.render(shared_dir, "deepspeed", cfg, "--hostfile", str(shared_dir / "hostfile"))

    def run() -> str:
        proc = cluster.run_in_node(
            "node0",
            ["bash", str(script)],
            cwd=shared_dir,
            timeout=300,
            check=False,
            env=cluster.env(e2e.RUN_ENV),
        )
        return f"exit {proc.returncode}\n{proc.stdout}{proc.stderr}"

    first = run()
    assert not first.startswith("exit 0"), first[-5000:]
    assert "pdsh" in first, "DeepSpeed did not use its pdsh multi-node runner"
    assert e2e.start_line(first).strategy == "deepspeed-z2", first[-3000:]
    assert _stops("SIGUSR1", first) == [stop], first[-5000:]
    assert "SIGUSR1 received (on another rank)" in first, "rank 0 did not say the signal came from elsewhere"
    assert _complete(out) == [f"checkpoint-{stop}"], sorted(p.name for p in out.iterdir())

    second = run()
    assert second.startswith("exit 0"), second[-5000:]
    assert RESUME_RE.findall(second) == [(str(out), str(stop))], second[-5000:]
    assert _steps(first) == list(range(1, stop + 1)) and _steps(second) == list(range(stop + 1, STEPS + 1))
    reference.check_same_model(second, [stop])
