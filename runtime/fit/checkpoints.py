"""Atomic checkpoints and which one to resume from.

A checkpoint is written under `output_dir/.xgen-partial/checkpoint-N` by every rank that has
something to write (DeepSpeed/FSDP shards included) and renamed to `output_dir/checkpoint-N`
only after all ranks passed a barrier. So every `checkpoint-N` in output_dir is complete, and
a crash or kill during a save leaves nothing that resume would pick.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

from runtime.config import ConfigError, TrainConfig

STAGING = ".xgen-partial"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Written last by Trainer._save_checkpoint; a checkpoint without it is not one we made.
STATE_FILE = "trainer_state.json"


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """checkpoint-N folders holding a trainer state, oldest step first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _CHECKPOINT.match(path.name)
        if match and path.is_dir() and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def requeued() -> bool:
    """True in a Slurm job that was requeued (preempted or timed out, then restarted)."""
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    return restarts.isdigit() and int(restarts) > 0


def _state(folder: Path) -> dict:
    return json.loads((folder / STATE_FILE).read_text())


def planned_steps(cfg: TrainConfig, state: dict) -> int:
    """Optimizer steps this config asks for: max_steps, else what the saved run planned (epochs)."""
    return cfg.max_steps if cfg.max_steps and cfg.max_steps > 0 else int(state.get("max_steps") or 0)


def before_end(cfg: TrainConfig, checkpoint: Path) -> bool:
    state = _state(checkpoint)
    planned = planned_steps(cfg, state)
    return not planned or int(state.get("global_step", 0)) < planned


def _starts_fresh(cfg: TrainConfig) -> bool:
    return cfg.resume_from_checkpoint is False or (
        cfg.resume_from_checkpoint == "auto" and cfg.overwrite_output_dir and not requeued()
    )


def finished_run(cfg: TrainConfig) -> str | None:
    """One line when output_dir already holds this config's finished training, else None.

    A rerun of a finished job (a requeue after the end, a user re-running the same command) then
    does nothing instead of training again."""
    out = Path(cfg.output_dir)
    if _starts_fresh(cfg) or not (out / "train_results.json").is_file() or not (out / STATE_FILE).is_file():
        return None
    state = _state(out)
    step, planned = int(state.get("global_step", 0)), planned_steps(cfg, state)
    if planned and step >= planned:
        return f"training already complete in {out} (step {step} of {planned}); nothing to do"
    return None


def resolve_resume(cfg: TrainConfig, key_prefix: str = "") -> tuple[str | None, str]:
    """(checkpoint to resume from or None, one line saying why) from resume_from_checkpoint."""
    value = cfg.resume_from_checkpoint
    key = key_prefix + "resume_from_checkpoint"
    if value is False:
        return None, "starting fresh (resume_from_checkpoint: false)"
    if _starts_fresh(cfg):
        return None, "starting fresh (overwrite_output_dir: true)"
    if isinstance(value, str) and value != "auto":
        path = Path(value)
        if not (path / STATE_FILE).is_file():
            raise ConfigError(key, f"{value} is not a complete checkpoint (no {STATE_FILE})")
        return str(path), f"resuming from {path} (resume_from_checkpoint)"
    # A checkpoint at (or past) the planned end is skipped: transformers, resumed from it, trains one
    # step too many. That only happens when the final save did not finish; the one before it serves.
    found = [c for c in complete_checkpoints(cfg.output_dir) if before_end(cfg, c)]
    if found:
        why = f"newest complete checkpoint in {cfg.output_dir}"
        if requeued() and cfg.overwrite_output_dir:
            # A requeued Slurm job must continue, not throw its checkpoints away (LLaMA-Factory configs
            # routinely carry overwrite_output_dir: true, meant for the first start).
            why += f"; Slurm restart {os.environ['SLURM_RESTART_COUNT']}, so overwrite_output_dir is ignored"
        return str(found[-1]), f"resuming from {found[-1]} ({why})"
    if value is True:
        raise ConfigError(key, f"true, but {cfg.output_dir} holds no complete checkpoint")
    return None, f"starting fresh (no complete checkpoint in {cfg.output_dir})"


def staging_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / STAGING


def clear_staging(output_dir: str | Path) -> None:
    """Half-written checkpoints from a killed run: never resumed from, removed at the next start."""
    shutil.rmtree(staging_root(output_dir), ignore_errors=True)


def publish(staged: Path, final: Path) -> None:
    """Move a finished checkpoint into place (replacing an older one of the same step)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(staged, final)
    with contextlib.suppress(OSError):  # the staging folder goes once empty (another save may be in it)
        staged.parent.rmdir()
