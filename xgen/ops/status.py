"""Where a run is and how it is doing, from Slurm (scontrol, else sacct) and the files the run writes.

A run's files (see the `# --- run directory ---` section of a generated script):
  <workdir>/xgen-runs/<job id>/config.yaml                  the frozen config
  <workdir>/xgen-runs/<job id>/logs/<node>.attempt<N>.log   one log per node and attempt
  <workdir>/xgen-runs/<job id>/logs/<node>.attempt<N>.ranks/<run>/attempt_0/<local rank>/error.json
  <output_dir>/xgen_progress.json                            step, total, loss, tokens/s, ETA, last checkpoint
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.contract.slurm import PROGRESS_FILE  # the runtime's rank 0 writes it; stdlib-only module
from xgen.errors import XgenError

_NODE_LOG = re.compile(r"(?P<node>.+)\.attempt(?P<attempt>\d+)\.log\Z")


def _run(cmd: list[str]) -> str | None:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def job_info(job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict; sacct's State/ExitCode/WorkDir when the job has left slurmctld."""
    text = _run(["scontrol", "show", "job", "-o", job_id])
    if text:
        return {m[1]: m[2] for m in re.finditer(r"(\w+)=(\S*)", text)}
    text = _run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State,ExitCode,WorkDir"])
    if text and text.strip():
        state, exit_code, workdir = (text.strip().splitlines()[0].split("|") + ["", "", ""])[:3]
        return {"JobState": state.split()[0], "ExitCode": exit_code, "WorkDir": workdir}
    raise XgenError(job_id, "no such job in scontrol or sacct; check the job id (or pass the output_dir)")


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


def status_lines(target: str) -> list[tuple[str, str]]:
    """(style, line) pairs for `xgen status JOBID|OUTPUT_DIR`; style is '', 'bold', 'red' or 'green'."""
    if Path(target).is_dir():
        progress = read_progress(Path(target))
        if progress is None:
            raise XgenError(target, f"no {PROGRESS_FILE} here; is it a training output_dir that has started?")
        return [("bold", f"output_dir {target}"), ("", progress_line(progress))]
    if not target.isdigit() and not re.fullmatch(r"\d+_\d+", target):
        raise XgenError(target, "neither a job id nor an existing output_dir")
    tasks = array_tasks(target)
    if tasks:
        return array_lines(target, tasks)
    info = job_info(target)
    state = info.get("JobState", "?")
    style = (
        "green" if state == "COMPLETED" else "red" if state in ("FAILED", "NODE_FAIL", "TIMEOUT") else "bold"
    )
    run_dir = run_dir_of(target, info)
    lines = [
        (
            style,
            f"job {target}: {state} (exit {info.get('ExitCode', '?')}, restarts {info.get('Restarts', '0')})",
        )
    ]
    lines.append(("", f"run directory {run_dir}"))
    out = output_dir_of(run_dir, Path(info.get("WorkDir") or "."))
    progress = read_progress(out) if out else None
    if progress:
        lines.append(("", progress_line(progress)))
    elif out:
        lines.append(("", f"no progress yet in {out}"))
    failure = first_failure(run_dir)
    if failure:
        rank = f"rank {failure.rank}" if failure.rank is not None else f"local rank {failure.local_rank}"
        lines.append(("red", f"first failure: node {failure.node}, {rank}: {failure.message}"))
        lines += [("", f"  {line}") for line in failure.lines]
    elif state not in ("RUNNING", "PENDING", "COMPLETED", "REQUEUED"):
        for node, log in node_logs(run_dir).items():
            for line in error_lines(log):
                lines.append(("red", f"{node}: {line}"))
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


def log_files(job_id: str, node: str | None, rank: int | None) -> list[Path]:
    """The newest attempt's node logs (one node with --node), or one worker's logs with --rank."""
    run_dir = run_dir_of(job_id, job_info(job_id))
    logs = node_logs(run_dir)
    if not logs:
        raise XgenError(job_id, f"no node logs in {run_dir / 'logs'}; has the job started?")
    if node is not None:
        if node not in logs:
            raise XgenError("--node", f"no log for {node!r}; nodes with logs: {', '.join(logs)}")
        logs = {node: logs[node]}
    if rank is None:
        return list(logs.values())
    files = []
    for log in logs.values():
        node_rank, nproc = _placement(log)
        if node_rank is None or not nproc or not node_rank * nproc <= rank < (node_rank + 1) * nproc:
            continue
        local = rank - node_rank * nproc
        files += sorted(log.with_suffix(".ranks").glob(f"*/attempt_*/{local}/std*.log"))
    if not files:
        raise XgenError("--rank", f"no worker logs for rank {rank} in {run_dir / 'logs'}")
    return files
