"""`xgen submit CFG [--then export]`: render, sbatch, keep what was submitted in the run directory.

What a submission leaves (docs/submit.md):
  <workdir>/xgen-runs/<job id>/job.sh        the script exactly as submitted (also for an array job)
  <workdir>/xgen-runs/<job id>/config.yaml   the config as it was (0600); the job writes the same copy
  <workdir>/xgen-runs/<export id>/job.sh      with --then export: the export job's script, and its config
A sweep's tasks run in xgen-runs/<array job id>_<task>/ (their logs, the frozen config, sweep-task.json).

A chain is submitted all or nothing: the training job is submitted held, the export job after it
(--dependency=afterok:<id> --kill-on-invalid-dep=yes), and only then is the training released; if the
export submission fails, the held training job is cancelled and nothing stays queued.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runtime.contract.files import write_atomic
from xgen.config import Config
from xgen.errors import XgenError


@dataclass(frozen=True)
class Submitted:
    job_id: str
    run_dir: Path
    what: str  # "training", "sweep of N tasks", "export"


def _slurm(argv: Sequence[str]) -> str:
    """Run one Slurm client command; its stdout, or XgenError with Slurm's own last line."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise XgenError(argv[0], f"{argv[0]} not found; run xgen submit on a Slurm login node") from None
    except subprocess.TimeoutExpired:
        raise XgenError(argv[0], "no answer from Slurm within 120 s; is slurmctld reachable?") from None
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or [f"exit status {proc.returncode}"]
        raise XgenError(argv[0], lines[-1])
    return proc.stdout


def sbatch(script: Path, *options: str) -> str:
    """`sbatch --parsable [options] SCRIPT`; the job id (without a cluster name)."""
    out = _slurm(["sbatch", "--parsable", *options, str(script)]).strip()
    job_id = out.split(";")[0]
    if not job_id.isdigit():
        raise XgenError("sbatch", f"unexpected answer {out!r}; expected a job id")
    return job_id


def _keep(runs: Path, job_id: str, script_text: str, config: Config, private: bool) -> Path:
    """Write the submitted script and the config into xgen-runs/<job id>/ (each file whole or not at all)."""
    run_dir = runs / job_id
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "job.sh", script_text, 0o700 if private else 0o755)
    write_atomic(run_dir / "config.yaml", config.text, 0o600)  # the job writes the same bytes, also 0600
    return run_dir


def submit(config: Config, then: str | None = None) -> list[Submitted]:
    """Submit the training (or the sweep's job array) and, with then="export", the export job after it."""
    from xgen import sweep
    from xgen.targets import slurm as target

    text = target.build(config)
    export_paths = target.export_paths(config) if then == "export" else None  # refuse before sbatch
    target.make_log_directories(config)
    runs = Path(config.workdir) / "xgen-runs"
    try:
        runs.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise XgenError(
            "job.workdir", f"cannot create {runs} ({err.strerror}); submit where job.workdir is visible"
        ) from None
    private = bool(config.secrets_written())
    count = len(sweep.tasks(config))
    what = f"sweep of {count} tasks (array)" if count else "training"
    held = ("--hold",) if export_paths else ()
    job_id = _submit_text(runs, text, private, held)
    done = [Submitted(job_id, _keep(runs, job_id, text, config, private), what)]
    if export_paths:
        try:
            export_text = target.build_export(config, job_id)
            export_id = _submit_text(runs, export_text, private, ())
        except XgenError as err:
            _slurm(["scancel", job_id])
            raise XgenError(err.key, f"{err.message}; cancelled the held training job {job_id}") from None
        done.append(Submitted(export_id, _keep(runs, export_id, export_text, config, private), "export"))
        _slurm(["scontrol", "release", job_id])
    return done


def _submit_text(runs: Path, text: str, private: bool, options: tuple[str, ...]) -> str:
    """sbatch a script text from a temp file under xgen-runs/ (sbatch copies it; the file goes again)."""
    fd, tmp = tempfile.mkstemp(dir=runs, prefix=".submit-", suffix=".sh")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o700 if private else 0o755)
        return sbatch(Path(tmp), *options)
    finally:
        Path(tmp).unlink(missing_ok=True)


__all__ = ["Submitted", "sbatch", "submit"]
