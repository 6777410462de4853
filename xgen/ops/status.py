"""Where a run is and how it is doing, from Slurm (scontrol, else sacct) and the files the run writes.

A run's files (see the `# --- run directory ---` section of a generated script):
  <workdir>/xgen-runs/<run id>/config.yaml                  the frozen config
  <workdir>/xgen-runs/<run id>/logs/<node>.attempt<N>.log   one log per node and attempt
  <workdir>/xgen-runs/<run id>/logs/<node>.attempt<N>.ranks/<run>/attempt_0/<local rank>/error.json
  <output_dir>/xgen_progress.json                            step, total, loss, tokens/s, ETA, last checkpoint
The run id is the Slurm job id (`<job>_<task>` for a sweep task), else `<UTC time>-<host>-<pid>` per node
of a hand-run job (xgen shell / accelerate / deepspeed), unless XGEN_RUN_DIR was exported.

What `xgen status` / `xgen logs` accept, tried in this order (`find`):
  an existing directory: a run directory (logs/ or config.yaml, under xgen-runs/), else an output_dir
      (progress file, checkpoints or resolved config, or named by a run's frozen train.output_dir): the
      run directories whose frozen config names it, from the xgen-runs/ of --workdir, the current
      directory and the output_dir's parents;
  an all-digit id (or 42_3): a Slurm job (scontrol, else sacct), else ./xgen-runs/<id> when Slurm does not
      know it or is not installed;
  anything else: a run id, or its prefix, under ./xgen-runs/ (or --workdir DIR).
A hand-run job's nodes each write their own run directory: those with the same frozen config, started
within JOB_WINDOW_S of each other, one per host, are taken as one job (`hand_run_jobs`).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from runtime.contract.slurm import PROGRESS_FILE  # the runtime's rank 0 writes it; stdlib-only module
from xgen.errors import XgenError

_NODE_LOG = re.compile(r"(?P<node>.+)\.attempt(?P<attempt>\d+)\.log\Z")
RUNS = "xgen-runs"
RESOLVED_CONFIG = "xgen_config_resolved.yaml"  # runtime/fit/outputs.py writes it (that module imports torch)
_SLURM_ID = re.compile(r"\d+(_\d+)?\Z")
# A hand-run node's run id: `date -u +%Y%m%dT%H%M%SZ`-`hostname`-$$ (templates/shell.sh.j2 and kin).
_HAND_RUN = re.compile(r"(?P<time>\d{8}T\d{6}Z)-(?P<host>.+)-(?P<pid>\d+)\Z")
# Hand-started nodes of one job start within the rendezvous timeout of each other (cluster.rdzv_timeout,
# 300 s by default) plus some typing: run directories further apart are separate jobs.
JOB_WINDOW_S = 600
# A line a script or the runtime prints when it gives up: `xgen: <time> <node>: error: …` (xgen_die),
# `xgen-runtime: error: …`, or a preflight finding `xgen: preflight: <host>: <what>: <wrong>; <fix>`.
_XGEN_LINE = re.compile(r"^xgen: (?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) ")
_ERROR_LINE = re.compile(
    r"^(\[default\d+\]:)?"  # a worker's console line, as torch.distributed.run --tee prefixes it
    r"(xgen: (\S+Z \S+: )?(error: |preflight: (?!.*: (warning|note): )(?!\S+: ok \())|xgen-runtime: error: )"
)
_SUMMARY = "stopping before training"


def _run(cmd: list[str]) -> str | None:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def slurm_installed() -> bool:
    return bool(shutil.which("scontrol") or shutil.which("sacct"))


def job_info(job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict; sacct's State/ExitCode/WorkDir when the job has left slurmctld."""
    if not slurm_installed():
        raise XgenError(job_id, "Slurm is not installed here (no scontrol or sacct on PATH)")
    text = _run(["scontrol", "show", "job", "-o", job_id])
    if text:
        return {m[1]: m[2] for m in re.finditer(r"(\w+)=(\S*)", text)}
    text = _run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State,ExitCode,WorkDir"])
    if text and text.strip():
        state, exit_code, workdir = (text.strip().splitlines()[0].split("|") + ["", "", ""])[:3]
        return {"JobState": state.split()[0], "ExitCode": exit_code, "WorkDir": workdir}
    raise XgenError(job_id, "no such job in scontrol or sacct")


@dataclass
class Failure:
    """The first failing worker: node, global rank, its error and time (from torchrun's error.json)."""

    node: str
    rank: int | None
    local_rank: int
    message: str
    timestamp: int
    lines: list[str] = field(default_factory=list)


def node_logs(run_dir: Path) -> dict[str, Path]:
    """node → its newest attempt's log."""
    newest: dict[str, tuple[int, Path]] = {}
    for path in sorted((run_dir / "logs").glob("*.attempt*.log")):
        match = _NODE_LOG.match(path.name)
        if match:
            attempt = int(match["attempt"])
            if match["node"] not in newest or attempt > newest[match["node"]][0]:
                newest[match["node"]] = (attempt, path)
    return {node: path for node, (_, path) in sorted(newest.items())}


def _placement(log: Path) -> tuple[int | None, int | None]:
    """(node rank, processes per node) from the node log's own xgen lines."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    node_rank = re.search(r"node_rank=(\d+)/", text)
    nproc = re.search(r"nproc_per_node=(\d+)", text)
    return (int(node_rank[1]) if node_rank else None, int(nproc[1]) if nproc else None)


def first_failure(run_dir: Path) -> Failure | None:
    """The earliest error.json torchrun wrote for a worker in the newest attempt of any node."""
    found: list[Failure] = []
    for node, log in node_logs(run_dir).items():
        ranks = log.with_suffix(".ranks")
        for error in ranks.glob("*/attempt_*/*/error.json"):
            try:
                data = json.loads(error.read_text())["message"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            message = data["message"] if isinstance(data, dict) else str(data)
            extra = data.get("extraInfo", {}) if isinstance(data, dict) else {}
            local = int(error.parent.name)
            node_rank, nproc = _placement(log)
            rank = node_rank * nproc + local if node_rank is not None and nproc else None
            lines = [line for line in str(extra.get("py_callstack", "")).splitlines() if line.strip()][-6:]
            found.append(Failure(node, rank, local, message, int(extra.get("timestamp", 0) or 0), lines))
    return min(found, key=lambda f: f.timestamp) if found else None


def error_lines(log: Path, count: int = 5) -> list[str]:
    """The last lines of a node log that look like errors."""
    if not log.is_file():
        return []
    lines = log.read_text(errors="replace").splitlines()
    return [line for line in lines if re.search(r"error|Error|Traceback|FAILED", line)][-count:]


def output_dir_of(run_dir: Path, workdir: Path) -> Path | None:
    """train.output_dir from the frozen config (a sweep task's own from its sweep-task.json), relative
    paths from the workdir."""
    import yaml

    try:
        return workdir / str(json.loads((run_dir / "sweep-task.json").read_text())["output_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        data = yaml.safe_load((run_dir / "config.yaml").read_text())
        out = data["train"]["output_dir"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return workdir / str(out)


def read_progress(output_dir: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads((output_dir / PROGRESS_FILE).read_text()))
    except (OSError, ValueError):
        return None


def run_dir_of(job_id: str, info: dict[str, str]) -> Path:
    return Path(info.get("WorkDir") or ".") / "xgen-runs" / job_id


def progress_line(progress: dict[str, Any]) -> str:
    parts = [f"step {progress.get('step', '?')}/{progress.get('total', '?')}"]
    if "loss" in progress:
        parts.append(f"loss {progress['loss']:.4g}")
    if "tokens_per_s" in progress:
        parts.append(f"tok/s {progress['tokens_per_s']:.0f}")
    if progress.get("eta_s") is not None:
        eta = int(progress["eta_s"])
        parts.append(f"eta {eta // 3600}:{eta % 3600 // 60:02d}:{eta % 60:02d}")
    if progress.get("last_checkpoint"):
        parts.append(f"last checkpoint {progress['last_checkpoint']}")
    parts.append(f"({progress.get('phase', '?')}, updated {progress.get('updated', '?')})")
    return " | ".join(parts)


# --- what the user named: a job, a run, a run directory or an output_dir ---
@dataclass
class Found:
    """One job's run directories as `find` found them, and how (said in `notes`)."""

    target: str  # as the user typed it, for the hints
    run_dirs: list[Path]
    notes: list[str] = field(default_factory=list)
    output_dir: Path | None = None  # when the user named it
    job_id: str | None = None  # a Slurm job that scontrol/sacct knows
    info: dict[str, str] = field(default_factory=dict)


_PASS = (
    "pass a Slurm job id, a run id from xgen-runs/ (--workdir DIR for another workdir), a run directory, "
    "or an output_dir"
)


def find(target: str, workdir: str | None = None) -> Found:
    """The job `target` names; see the module docstring for the order."""
    base = Path(workdir) if workdir else Path(".")
    path = Path(target)
    if path.is_dir():
        return _found_dir(target, path, base)
    if _SLURM_ID.match(target):
        return _found_job(target, base)
    if "/" in target or target in (".", ".."):
        raise XgenError(target, f"no such directory; {_PASS}")
    return _found_run_id(target, base)


def is_run_dir(path: Path) -> bool:
    """logs/ or config.yaml under xgen-runs/; elsewhere (an exported XGEN_RUN_DIR) both."""
    marks = [(path / "logs").is_dir(), (path / "config.yaml").is_file()]
    return any(marks) if path.parent.name == RUNS else all(marks)


def _looks_like_output_dir(path: Path) -> bool:
    return (
        (path / PROGRESS_FILE).is_file()
        or (path / RESOLVED_CONFIG).is_file()
        or any(path.glob("checkpoint-*"))
    )


def workdir_of(run_dir: Path) -> Path:
    """<workdir>/xgen-runs/<run id> → <workdir>; an exported XGEN_RUN_DIR: the frozen absolute job.workdir."""
    if run_dir.parent.name == RUNS:
        return run_dir.parent.parent
    workdir = (_frozen(run_dir).get("job") or {}).get("workdir")
    return Path(workdir) if isinstance(workdir, str) and Path(workdir).is_absolute() else Path(".")


def _frozen(run_dir: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _found_dir(target: str, path: Path, base: Path) -> Found:
    if is_run_dir(path):
        runs = job_of(path)
        found = Found(target, runs, notes=_job_notes(runs))
        if path.parent.name == RUNS:
            _maybe_slurm(found, path.name)
        return found
    named = runs_writing_to(path, [base, Path("."), *path.resolve().parents])
    if not named and not _looks_like_output_dir(path):
        if (path / RUNS).is_dir():
            raise XgenError(
                target, f"a workdir; pass one of its runs: {_newest(path / RUNS)} (--workdir {target})"
            )
        raise XgenError(
            target,
            "neither a run directory (<workdir>/xgen-runs/<run id>: logs/, config.yaml) nor an output_dir "
            f"({PROGRESS_FILE}, checkpoints, {RESOLVED_CONFIG}, or a run's train.output_dir); {_PASS}",
        )
    jobs = _jobs(named)
    runs = jobs[-1] if jobs else []
    found = Found(target, runs, output_dir=path)
    if len(jobs) > 1:
        older = ", ".join(r[0].name for r in jobs[-4:-1])
        found.notes.append(f"newest of {len(jobs)} runs that wrote to {target} (older: {older})")
    found.notes += _job_notes(runs)
    if runs:
        _maybe_slurm(found, runs[0].name)
    return found


def _found_job(job_id: str, base: Path) -> Found:
    """A Slurm job; else its run directory (a copied workdir, a job sacct forgot); else the hand-run ids
    it begins (20260101 of 20260101T120000Z-node0-123)."""
    local = base / RUNS / job_id
    why, alone = "Slurm is not installed here (no scontrol or sacct on PATH)", "Slurm is not installed here"
    if slurm_installed():
        found = Found(job_id, [local])
        try:
            _add_slurm(found, job_id)
            return found
        except XgenError:
            why, alone = "no such job in scontrol or sacct", f"scontrol and sacct do not know job {job_id}"
    if is_run_dir(local):
        return Found(job_id, [local], notes=[f"{alone}: the run directory alone"])
    if (base / RUNS).is_dir() and any(
        d.name.startswith(job_id) and _HAND_RUN.match(d.name) for d in (base / RUNS).iterdir()
    ):
        return _found_run_id(job_id, base, hand_run_only=True)
    raise XgenError(job_id, f"{why}, and no {local}; {_PASS}")


def _add_slurm(found: Found, job_id: str) -> None:
    found.job_id, found.info = job_id, job_info(job_id)
    if not found.output_dir:
        found.run_dirs = [run_dir_of(job_id, found.info)]


def _maybe_slurm(found: Found, job_id: str) -> None:
    """A run directory named like a job id: Slurm's state too, when Slurm is here and knows the job."""
    if _SLURM_ID.match(job_id) and slurm_installed():
        try:
            found.job_id, found.info = job_id, job_info(job_id)
        except XgenError:
            found.job_id = None


def _found_run_id(run_id: str, base: Path, *, hand_run_only: bool = False) -> Found:
    runs = base / RUNS
    if not runs.is_dir():
        raise XgenError(run_id, f"no {runs}; run this in the job's workdir or {_PASS}")
    exact = runs / run_id
    matches = (
        [exact]
        if is_run_dir(exact)
        else sorted(
            d
            for d in runs.iterdir()
            if d.name.startswith(run_id) and is_run_dir(d) and (_HAND_RUN.match(d.name) or not hand_run_only)
        )
    )
    if not matches:
        raise XgenError(run_id, f"no run directory {runs}/{run_id}*; newest: {_newest(runs)}; {_PASS}")
    jobs = _jobs([r for match in matches for r in job_of(match)])
    if len(jobs) > 1:
        names = ", ".join(job[0].name for job in jobs[:4]) + (", …" if len(jobs) > 4 else "")
        raise XgenError(run_id, f"names {len(jobs)} runs ({names}); pass a longer prefix")
    return Found(run_id, jobs[0], notes=_job_notes(jobs[0]))


def _newest(runs: Path, count: int = 3) -> str:
    names = sorted((d for d in runs.iterdir() if is_run_dir(d)), key=_started, reverse=True)[:count]
    return ", ".join(d.name for d in names) or "none"


def runs_writing_to(output_dir: Path, workdirs: list[Path]) -> list[Path]:
    """Run directories (in each workdir's xgen-runs/) whose frozen config names this output_dir."""
    wanted, seen, found = output_dir.resolve(), set(), []
    for workdir in workdirs:
        runs = (workdir / RUNS).resolve()
        if runs in seen or not runs.is_dir():
            continue
        seen.add(runs)
        for run_dir in sorted(runs.iterdir()):
            out = output_dir_of(run_dir, runs.parent) if is_run_dir(run_dir) else None
            if out is not None and out.resolve() == wanted:
                found.append(run_dir)
    return found


# --- a hand-run job: one run directory per node ---
def _started(run_dir: Path) -> float:
    """When the run started: the UTC time in a hand-run id, else the directory's mtime."""
    match = _HAND_RUN.match(run_dir.name)
    if match:
        stamp = datetime.strptime(match["time"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        return stamp.timestamp()
    try:
        return (run_dir / "config.yaml").stat().st_mtime
    except OSError:
        return run_dir.stat().st_mtime


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def _config_bytes(run_dir: Path) -> bytes | None:
    try:
        return (run_dir / "config.yaml").read_bytes()
    except OSError:
        return None


def hand_run_jobs(runs: Path) -> list[list[Path]]:
    """The hand-run run directories in `runs` as jobs: the same frozen config bytes, started within
    JOB_WINDOW_S of the job's first node, one run directory per host (a host again is a rerun)."""
    jobs: list[tuple[float, bytes, set[str], list[Path]]] = []
    entries = sorted(
        (_started(d), _mtime(d / "config.yaml"), d)
        for d in runs.iterdir()
        if _HAND_RUN.match(d.name) and is_run_dir(d)
    )  # the names say the second; the frozen config's mtime orders runs started within one
    for started, _, run_dir in entries:
        config, host = _config_bytes(run_dir), _HAND_RUN.match(run_dir.name)["host"]  # type: ignore[index]
        if config is None:
            continue
        for first, same, hosts, dirs in reversed(jobs):
            if same == config and started - first <= JOB_WINDOW_S and host not in hosts:
                hosts.add(host)
                dirs.append(run_dir)
                break
        else:
            jobs.append((started, config, {host}, [run_dir]))
    return [dirs for *_, dirs in jobs]


def job_of(run_dir: Path) -> list[Path]:
    """The run directories of the job `run_dir` belongs to: itself, and a hand-run node's fellow nodes."""
    if run_dir.parent.name == RUNS and _HAND_RUN.match(run_dir.name):
        for dirs in hand_run_jobs(run_dir.parent):
            if run_dir in dirs:
                return dirs
    return [run_dir]


def _jobs(run_dirs: list[Path]) -> list[list[Path]]:
    """Run directories grouped into jobs (each hand-run job once), oldest first."""
    jobs: list[list[Path]] = []
    for run_dir in run_dirs:
        if not any(run_dir in job for job in jobs):
            jobs.append(job_of(run_dir))
    return sorted(jobs, key=lambda job: _started(job[0]))


def _job_notes(runs: list[Path]) -> list[str]:
    if len(runs) < 2:
        return []
    sha = hashlib.sha256(_config_bytes(runs[0]) or b"").hexdigest()[:12]
    spread = int(_started(runs[-1]) - _started(runs[0]))
    return [
        f"one hand-run job: {len(runs)} run directories, one per node, with the same config (sha256 {sha}…) "
        f"started within {spread} s"
    ]


# --- what went wrong, when no worker wrote an error.json ---
@dataclass
class NodeError:
    """A node's last error line (a script's `xgen: … error:`, a preflight finding, the runtime's error)."""

    node: str
    line: str
    time: float
    more: int  # further error lines in that log


def node_error(node: str, log: Path) -> NodeError | None:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    stamp, found = None, []
    for line in lines:
        match = _XGEN_LINE.match(line)
        if match:
            stamp = match["time"]
        if _ERROR_LINE.match(line):
            found.append((stamp, line))
    problems = [f for f in found if _SUMMARY not in f[1]] or found
    if not problems:
        problems = [(stamp, line) for line in error_lines(log, 1)]  # a traceback, a killed worker, …
    if not problems:
        return None
    stamp, line = problems[-1]
    when = (
        datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
        if stamp
        else log.stat().st_mtime
    )
    return NodeError(node, line.strip(), when, len(problems) - 1)


def all_node_logs(run_dirs: list[Path]) -> dict[str, Path]:
    logs: dict[str, Path] = {}
    for run_dir in run_dirs:
        logs.update(node_logs(run_dir))
    return logs


def _last_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else "(empty)"


def status_lines(target: str, workdir: str | None = None) -> list[tuple[str, str]]:
    """(style, line) pairs for `xgen status`; style is '', 'bold', 'red' or 'green'."""
    if _SLURM_ID.match(target) and not Path(target).is_dir() and slurm_installed():
        tasks = array_tasks(target)
        if tasks:
            return array_lines(target, tasks)
    found = find(target, workdir)
    lines: list[tuple[str, str]] = []
    state = found.info.get("JobState", "")
    if found.job_id:
        style = (
            "green"
            if state == "COMPLETED"
            else "red"
            if state in ("FAILED", "NODE_FAIL", "TIMEOUT")
            else "bold"
        )
        restarts = found.info.get("Restarts", "0")
        lines.append(
            (
                style,
                f"job {found.job_id}: {state} (exit {found.info.get('ExitCode', '?')}, restarts {restarts})",
            )
        )
    elif found.output_dir:
        lines.append(("bold", f"output_dir {found.output_dir}"))
    else:
        lines.append(("bold", f"run {found.run_dirs[0].name}"))
    lines += [("", note) for note in found.notes]
    lines += [("", f"run directory {run_dir}") for run_dir in found.run_dirs]
    run_dir = found.run_dirs[0] if found.run_dirs else None
    workdir_path = Path(found.info["WorkDir"]) if found.info.get("WorkDir") else None
    out = found.output_dir or (
        output_dir_of(run_dir, workdir_path or workdir_of(run_dir)) if run_dir else None
    )
    progress = read_progress(out) if out else None
    mine = {d.name for d in found.run_dirs}
    if progress and progress.get("run") and mine and progress["run"] not in mine:
        # output_dir was reused by a later run: its progress is that run's, not this one's.
        lines.append(("", f"{out} now holds run {progress['run']}'s progress: {progress_line(progress)}"))
        progress = None
    elif progress:
        lines.append(("", progress_line(progress)))
    elif out:
        lines.append(("", f"no progress yet: no {PROGRESS_FILE} in {out}"))
    if not found.run_dirs:
        lines.append(
            ("", f"no run directory names {out} as its output_dir (xgen status RUNID --workdir DIR)")
        )
        return lines
    lines += _failure_lines(found, state, progress)
    return lines


def _failure_lines(found: Found, state: str, progress: dict[str, Any] | None) -> list[tuple[str, str]]:
    failures = [f for f in map(first_failure, found.run_dirs) if f is not None]
    if failures:
        failure = min(failures, key=lambda f: f.timestamp)
        rank = f"rank {failure.rank}" if failure.rank is not None else f"local rank {failure.local_rank}"
        lines = [("red", f"first failure: node {failure.node}, {rank}: {failure.message}")]
        return lines + [("", f"  {line}") for line in failure.lines]
    logs = all_node_logs(found.run_dirs)
    if not logs:
        return [("", f"no node logs in {found.run_dirs[0] / 'logs'}: it has not started")]
    if state in ("RUNNING", "PENDING", "COMPLETED", "REQUEUED"):
        return []
    errors = sorted(filter(None, (node_error(node, log) for node, log in logs.items())), key=lambda e: e.time)
    lines = []
    for number, error in enumerate(errors):
        where = "first failure: " if number == 0 else ""
        more = f" (+{error.more} more: xgen logs {found.target} --node {error.node})" if error.more else ""
        lines.append(("red", f"{where}node {error.node}: {error.line}{more}"))
    if not errors and not progress:
        lines += [("", f"node {node}, last line: {_last_line(log)}") for node, log in logs.items()]
    return lines


# --- sweeps: an array job is one line per task ---
def array_tasks(job_id: str) -> list[dict[str, str]]:
    """`scontrol show job` records of an array job's tasks (pending ones may share a record: 2-3); [] when
    `job_id` is not an array job (or a single task, 42_3)."""
    if not job_id.isdigit():
        return []
    text = _run(["scontrol", "show", "job", "-o", job_id]) or ""
    records = [{m[1]: m[2] for m in re.finditer(r"(\w+)=(\S*)", line)} for line in text.splitlines()]
    records = [r for r in records if r.get("ArrayJobId") == job_id and r.get("ArrayTaskId")]
    return sorted(records, key=lambda r: int(re.sub(r"\D.*", "", r["ArrayTaskId"].lstrip("[")) or 0))


def array_lines(job_id: str, tasks: list[dict[str, str]]) -> list[tuple[str, str]]:
    """One line per task: state, exit, and its progress (from its output_dir) when it has started."""
    lines = [("bold", f"array job {job_id}: {len(tasks)} task records (xgen status {job_id}_N for one)")]
    for info in tasks:
        task, state = info["ArrayTaskId"], info.get("JobState", "?")
        style = (
            "green" if state == "COMPLETED" else "red" if state in ("FAILED", "NODE_FAIL", "TIMEOUT") else ""
        )
        line = f"task {task}: {state} (job {info.get('JobId', '?')}, exit {info.get('ExitCode', '?')})"
        if task.isdigit():
            workdir = Path(info.get("WorkDir") or ".")
            out = output_dir_of(workdir / "xgen-runs" / f"{job_id}_{task}", workdir)
            progress = read_progress(out) if out else None
            if progress:
                line += f" | {out} | {progress_line(progress)}"
        lines.append((style, line))
    return lines


def log_files(
    target: str, node: str | None, rank: int | None, workdir: str | None = None
) -> list[tuple[str, Path]]:
    """(header, file): each node's newest-attempt log (one node with --node), or one worker's logs with
    --rank, across all the run directories of the job `target` names."""
    found = find(target, workdir)
    logs = all_node_logs(found.run_dirs)
    where = " or ".join(str(run_dir / "logs") for run_dir in found.run_dirs) or "its run directory"
    if not logs:
        raise XgenError(target, f"no node logs in {where}; has the job started?")
    if node is not None:
        if node not in logs:
            raise XgenError("--node", f"no log for {node!r}; nodes with logs: {', '.join(logs)}")
        logs = {node: logs[node]}
    if rank is None:
        return [(f"node {name}", log) for name, log in logs.items()]
    files = []
    for name, log in logs.items():
        node_rank, nproc = _placement(log)
        if node_rank is None or not nproc or not node_rank * nproc <= rank < (node_rank + 1) * nproc:
            continue
        local = rank - node_rank * nproc
        files += [
            (f"node {name}, rank {rank}", path)
            for path in sorted(log.with_suffix(".ranks").glob(f"*/attempt_*/{local}/std*.log"))
        ]
    if not files:
        raise XgenError("--rank", f"no worker logs for rank {rank} in {where}")
    return files
