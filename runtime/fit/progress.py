"""Progress on rank 0: a rich bar on a terminal, one plain line per log step elsewhere.

Slurm logs and CI are not terminals; a redrawn bar there becomes pages of control codes, so
without a TTY each logging step prints one readable line instead.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from transformers import TrainerCallback

from runtime.contract.say import say
from runtime.contract.secrets import redact
from runtime.contract.slurm import RESTART_FAILED_AT, write_progress


def _fmt_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return str(value)


class ProgressCallback(TrainerCallback):
    """Loss, grad-norm, learning rate, tokens/s and ETA; eval metrics as their own line."""

    def __init__(self, *, enabled: bool, tty: bool | None = None, preempt: Any = None) -> None:
        self.enabled = enabled
        self.preempt = preempt  # runtime.fit.preemption.PreemptCallback: stopped → phase "preempted"
        self.tty = sys.stdout.isatty() if tty is None else tty
        self._bar: Any = None
        self._task: Any = None
        self._start = 0.0
        self._first_step = 0
        self._tokens0 = 0
        self.last: dict[str, float] = {}
        self.file: dict[str, Any] = {}  # what xgen_progress.json holds

    def _record(self, args: Any, state: Any, /, **values: Any) -> None:
        """Update the progress file (rank 0): step, total, loss, tokens/s, ETA, last checkpoint."""
        if not self.enabled or getattr(args, "output_dir", None) is None:
            return
        self.file.update(values)
        run_dir = os.environ.get("XGEN_RUN_DIR")
        if run_dir:  # `xgen status OLD_RUN` must not show a later run's progress as its own
            self.file["run"] = os.path.basename(run_dir.rstrip("/"))
        self.file.update(
            step=int(state.global_step),
            total=int(state.max_steps),
            updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        write_progress(args.output_dir, self.file)

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        self._start = time.monotonic()
        self._first_step = state.global_step
        self._tokens0 = state.num_input_tokens_seen
        self._record(args, state, phase="training")
        if self.enabled and self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[stats]}"),
            )
            self._bar.start()
            self._task = self._bar.add_task(
                "train", total=state.max_steps, completed=state.global_step, stats=""
            )

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self._bar is not None:
            self._bar.update(self._task, completed=state.global_step)
        failed_at = os.environ.pop(RESTART_FAILED_AT, None)  # set by `runtime launch` for a restart
        if failed_at and self.enabled:
            cost = time.time() - float(failed_at)
            say(f"restart cost: {cost:.1f} s from the failure to step {state.global_step} (after the resume)")

    def _rates(self, state: Any) -> tuple[float, float]:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        done = state.global_step - self._first_step
        tokens_per_s = (state.num_input_tokens_seen - self._tokens0) / elapsed
        eta = (state.max_steps - state.global_step) * elapsed / done if done else 0.0
        return tokens_per_s, eta

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if not self.enabled or not logs:
            return
        if any(k.startswith("eval_") for k in logs):
            shown = {
                k: v
                for k, v in logs.items()
                if k.startswith("eval_") and not k.endswith(("runtime", "per_second"))
            }
            self._emit(
                f"eval step {state.global_step}: " + " ".join(f"{k}={_fmt(v)}" for k, v in shown.items())
            )
            return
        if "loss" not in logs:
            return
        tokens_per_s, eta = self._rates(state)
        self.last = {"loss": logs["loss"], "tokens_per_s": tokens_per_s}
        self._record(args, state, loss=float(logs["loss"]), tokens_per_s=tokens_per_s, eta_s=int(eta))
        parts = [f"loss {_fmt(logs['loss'])}"]
        if "grad_norm" in logs:
            parts.append(f"grad_norm {_fmt(logs['grad_norm'])}")
        if "learning_rate" in logs:
            parts.append(f"lr {_fmt(logs['learning_rate'])}")
        parts += [f"tok/s {tokens_per_s:.0f}", f"eta {_fmt_eta(eta)}"]
        extra = [f"{k} {_fmt(v)}" for k, v in logs.items() if k.startswith(("rewards/", "accuracy"))]
        stats = " | ".join(parts + extra)
        if self._bar is not None:
            self._bar.update(self._task, stats=stats)
        else:
            self._emit(f"step {state.global_step}/{state.max_steps} | {stats}")

    def _emit(self, line: str) -> None:
        line = redact(line)
        if self._bar is not None:
            self._bar.console.print(line)
        else:
            say(line, by="caller")  # only rank 0's callback is enabled

    def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
        checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        self._record(args, state, last_checkpoint=checkpoint)

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.preempt is not None and self.preempt.stopped:
            # Checkpointed and stopping with EXIT_PREEMPTED: the run is not done, a requeue continues it.
            self._record(args, state, phase="preempted")
        else:
            self._record(args, state, phase="done", eta_s=0)
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
