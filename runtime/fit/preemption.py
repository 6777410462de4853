"""The runtime's side of preemption: on SIGUSR1/SIGTERM, finish the step, checkpoint, stop, exit 75.

The protocol with the batch script (pid files, status files, exit 75) is `runtime.contract.slurm`.
"""

from __future__ import annotations

import signal
from typing import Any

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from runtime.contract.say import say
from runtime.contract.slurm import PREEMPT_SIGNALS
from runtime.scaffolding import testing


class PreemptCallback(TrainerCallback):
    """On SIGUSR1/SIGTERM: finish the step, checkpoint on every rank, stop; the CLI exits 75.

    Ranks get the signal at slightly different times, so each step ends with a MAX all-reduce
    of the flag: all ranks stop after the same step and write the same checkpoint.
    """

    SIGNALS = PREEMPT_SIGNALS

    def __init__(self) -> None:
        self.signum = 0  # the signal this rank received, 0 for none
        self.stopped = False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def restore(self) -> None:
        """Put the previous handlers back (matters when train() runs inside another program)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = max(self.signum, int(signum))

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        testing.signal_at_step(state.global_step)
        testing.kill_at_step(state.global_step)
        # The signal number itself is reduced, so rank 0 names the signal even when it reached
        # another rank first (srun signals the nodes one after another).
        flag = torch.tensor([float(self.signum)], device=args.device)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        signum = int(flag.item())
        if signum and not self.stopped:
            self.stopped = True
            control.should_save = True
            control.should_training_stop = True
            where = "" if self.signum == signum else " (on another rank)"
            say(
                f"{signal.Signals(signum).name} received{where}: "
                f"checkpointing at step {state.global_step} and exiting"
            )
        return control
