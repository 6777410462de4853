"""The Trainer every stage builds on: atomic checkpoints, a preemption stop, metric logging.

Stages subclass `XgenTrainer` only to define their loss (rm, dpo); pt and sft use it as is.
"""

from __future__ import annotations

import os
import shutil
import signal
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from runtime import checkpoints
from runtime.distributed import barrier, world

# Test hooks (fault injection, read from the environment):
#   XGEN_FAULT_KILL_IN_SAVE=N    rank 0 SIGKILLs itself after staging checkpoint-N, before publishing it.
#   XGEN_FAULT_SIGNAL_AT_STEP=N[@R]  rank R (default 0) sends itself SIGUSR1 after step N (a deterministic
#                                    preemption; R > 0: the signal reaches another rank first).
FAULT_KILL_IN_SAVE = "XGEN_FAULT_KILL_IN_SAVE"
FAULT_SIGNAL_AT_STEP = "XGEN_FAULT_SIGNAL_AT_STEP"


class XgenTrainer(Trainer):
    """HF Trainer with checkpoints that are published only once every rank finished writing, and
    token-budget micro-batches (`micro_batch_tokens`, set by make_trainer) for the padding-free path."""

    micro_batch_tokens: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._metrics: dict[str, dict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        self._output_shared = True

    # --- data ----------------------------------------------------------------------------
    def get_train_dataloader(self) -> Any:
        """micro_batch_tokens: whole examples grouped up to that many tokens (runtime/data/packing.py's
        TokenBudgetBatches), dealt to the ranks by accelerate; otherwise Trainer's own loader."""
        if not self.micro_batch_tokens:
            return super().get_train_dataloader()
        from functools import partial

        from torch.utils.data import DataLoader
        from transformers.trainer_utils import seed_worker

        from runtime.data.packing import TokenBudgetBatches

        args, dataset = self.args, self.train_dataset
        lengths = [len(ids) for ids in dataset["input_ids"]]
        seed = args.data_seed if args.data_seed is not None else args.seed
        params: dict[str, Any] = {
            "batch_sampler": TokenBudgetBatches(
                lengths,
                self.micro_batch_tokens,
                seed=seed,
                row=getattr(self.data_collator, "max_row", None),  # PackingCollator's row cap (sdpa/eager)
            ),
            "collate_fn": self.data_collator,
            "num_workers": args.dataloader_num_workers,
            "pin_memory": args.dataloader_pin_memory,
            "worker_init_fn": partial(
                seed_worker, num_workers=args.dataloader_num_workers, rank=args.process_index
            ),
        }
        if args.dataloader_num_workers > 0:
            params["persistent_workers"] = args.dataloader_persistent_workers
            params["prefetch_factor"] = args.dataloader_prefetch_factor
        return self.accelerator.prepare(DataLoader(dataset, **params))

    # --- checkpoints -------------------------------------------------------------------
    def prepare_output_dir(self) -> None:
        """Drop half-written checkpoints; learn whether output_dir is shared between nodes."""
        run_dir = Path(self.args.output_dir)
        rank, local_rank, world_size = world()
        if rank == 0:
            checkpoints.clear_staging(run_dir)
            checkpoints.staging_root(run_dir).mkdir(parents=True, exist_ok=True)
        token = [uuid.uuid4().hex]
        if dist.is_initialized():
            dist.broadcast_object_list(token, src=0)
        probe = checkpoints.staging_root(run_dir) / f"share-{token[0]}"
        if rank == 0:
            probe.touch()
        barrier()
        self._output_shared = probe.exists()
        barrier()
        if rank == 0:
            probe.unlink()
        if not self._output_shared and local_rank == 0:
            print(
                f"xgen-runtime: warning: {run_dir} is not shared with rank 0's node; "
                "each node keeps its own checkpoints",
                flush=True,
            )

    def _publishes(self) -> bool:
        rank, local_rank, _ = world()
        return rank == 0 or (local_rank == 0 and not self._output_shared)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        run_dir = Path(self._get_output_dir(trial=trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = checkpoints.staging_root(run_dir)
        if self._publishes():
            shutil.rmtree(staging / name, ignore_errors=True)  # left by a save that was killed
        barrier()
        self._get_output_dir = lambda trial=None: str(staging)  # type: ignore[method-assign]
        try:
            super()._save_checkpoint(model, trial)
        finally:
            del self._get_output_dir
        barrier()  # every rank's shards are on disk
        if os.environ.get(FAULT_KILL_IN_SAVE) == str(self.state.global_step) and world()[0] == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        if self._publishes():
            checkpoints.publish(staging / name, run_dir / name)
            self._rotate(run_dir)
        barrier()

    def _rotate(self, run_dir: Path) -> None:
        """Keep the newest save_total_limit complete checkpoints (by step, not mtime)."""
        limit = self.args.save_total_limit
        if not limit:
            return
        for old in checkpoints.complete_checkpoints(run_dir)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)

    # --- metrics -------------------------------------------------------------------------
    def store_metrics(self, metrics: dict[str, torch.Tensor]) -> None:
        """Average over all ranks now (every rank computes the same batches of collectives)."""
        split = "train" if self.model.training else "eval"
        for key, value in metrics.items():
            value = self.accelerator.gather_for_metrics(value.detach().reshape(-1))
            self._metrics[split][key].append(value.float().mean().item())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        split = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        prefix = "eval_" if split == "eval" else ""
        for key, values in self._metrics[split].items():
            if values:
                logs[prefix + key] = sum(values) / len(values)
        self._metrics[split].clear()
        super().log(logs, start_time)


class PairwisePredictionMixin:
    """rm/dpo batches have no `labels` for Trainer's eval loop: evaluate through compute_loss."""

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):  # noqa: ANN001
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


class PreemptCallback(TrainerCallback):
    """On SIGUSR1/SIGTERM: finish the step, checkpoint on every rank, stop; the CLI exits 75.

    Ranks get the signal at slightly different times, so each step ends with a MAX all-reduce
    of the flag: all ranks stop after the same step and write the same checkpoint.
    """

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

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
        step, _, rank = os.environ.get(FAULT_SIGNAL_AT_STEP, "").partition("@")
        if step == str(state.global_step) and world()[0] == int(rank or 0):
            os.kill(os.getpid(), signal.SIGUSR1)
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
            if world()[0] == 0:
                where = "" if self.signum == signum else " (on another rank)"
                print(
                    f"xgen-runtime: {signal.Signals(signum).name} received{where}: "
                    f"checkpointing at step {state.global_step} and exiting",
                    flush=True,
                )
        return control


class PissaConvertCallback(TrainerCallback):
    """pissa_convert: save output_dir/pissa_converted, a plain LoRA adapter for the ORIGINAL base.

    A PiSSA adapter only works over the residual base it rewrote. peft converts it into an ordinary
    (rank 2r) LoRA given the adapter as initialised, which is saved at the first step (pissa_init/);
    a resumed run keeps the one saved when training began.
    """

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        init_dir = Path(args.output_dir) / "pissa_init"
        if args.should_save and (state.global_step == 0 or not init_dir.exists()):
            self._save(model, init_dir)

    def on_train_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        if not args.should_save:
            return
        out = Path(args.output_dir)
        # peft subtracts the initial adapter from the trained one; it reads init_lora_weights
        # from the config to know the adapter was PiSSA-initialised.
        model.save_pretrained(
            out / "pissa_converted", path_initial_model_for_weight_conversion=str(out / "pissa_init")
        )

    @staticmethod
    def _save(model: Any, path: Path) -> None:
        config = model.peft_config["default"]
        init, config.init_lora_weights = config.init_lora_weights, True  # saved weights are used as is
        try:
            model.save_pretrained(path)
        finally:
            config.init_lora_weights = init


def _worker_file(suffix: str) -> Path | None:
    """$XGEN_PID_DIR/<host>-<rank>.<suffix>, or None when the launcher did not ask for one."""
    pid_dir = os.environ.get("XGEN_PID_DIR")
    if not pid_dir:
        return None
    import socket

    path = Path(pid_dir) / f"{socket.gethostname()}-{world()[0]}.{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_pid_file() -> Path | None:
    """<host>-<rank>.pid: the sbatch script signals workers directly (torchrun drops USR1)."""
    path = _worker_file("pid")
    if path is not None:
        path.write_text(f"{os.getpid()}\n")
    return path


def write_exit_status(code: int) -> Path | None:
    """<host>-<rank>.status: this worker's own exit code, since torchrun reports every failure as 1.
    The sbatch script requeues only when every worker on every node wrote 75 (checkpointed, stopped)."""
    path = _worker_file("status")
    if path is not None:
        path.write_text(f"{code}\n")
    return path
