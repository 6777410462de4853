"""The Trainer every stage builds on: atomic checkpoints, metric logging.

Stages subclass `XgenTrainer` only to define their loss (rm, dpo); pt and sft use it as is. The
preemption stop is `runtime.fit.preemption`, its protocol with the batch script `runtime.contract.slurm`.
"""

from __future__ import annotations

import shutil
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from runtime.contract.say import say
from runtime.distributed import barrier, launch_ranks
from runtime.fit import checkpoints, watchdog
from runtime.scaffolding import testing


class XgenTrainer(Trainer):
    """HF Trainer with checkpoints that are published only once every rank finished writing, and
    token-budget micro-batches (`micro_batch_tokens`, set by make_trainer) for the padding-free path."""

    micro_batch_tokens: int | None = None
    run_record: dict[str, Any] | None = None  # runtime.fit.run_record: written into every checkpoint
    # More files for every checkpoint, written into its staging folder before it is published (runtime/mm:
    # the image processor and chat template, as LLaMA-Factory's SaveProcessorCallback writes them).
    save_extras: Callable[[Path], None] | None = None

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

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        watchdog.phase("evaluating")  # a long evaluation is not a hang
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            watchdog.phase("training")

    def training_step(self, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        testing.log_examples(self.state.global_step + 1, inputs)  # XGEN_TEST_LOG_EXAMPLES only
        return super().training_step(model, inputs, *args, **kwargs)

    # --- checkpoints -------------------------------------------------------------------
    def prepare_output_dir(self) -> None:
        """Drop half-written checkpoints; learn whether output_dir is shared between nodes."""
        run_dir = Path(self.args.output_dir)
        rank = launch_ranks()[0]
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
        if not self._output_shared:
            say(
                f"warning: {run_dir} is not shared with rank 0's node; each node keeps its own checkpoints",
                by="node",
            )

    def _publishes(self) -> bool:
        rank, local_rank, _ = launch_ranks()
        return rank == 0 or (local_rank == 0 and not self._output_shared)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        run_dir = Path(self._get_output_dir(trial=trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = checkpoints.staging_root(run_dir)
        if self._publishes():
            shutil.rmtree(staging / name, ignore_errors=True)  # left by a save that was killed
        barrier()
        self._get_output_dir = lambda trial=None: str(staging)  # type: ignore[method-assign]
        watchdog.phase("saving")  # a long save is not a hang
        try:
            super()._save_checkpoint(model, trial)
        except Exception as err:
            _raise_if_disk_full(err, run_dir, staging / name, name)
            raise
        finally:
            del self._get_output_dir
        barrier()  # every rank's shards are on disk
        testing.kill_in_save(self.state.global_step)
        if self._publishes():
            try:
                if self.run_record:
                    from runtime.fit.run_record import write_record

                    write_record(staging / name, self.run_record)
                if self.save_extras is not None:
                    self.save_extras(staging / name)
            except OSError as err:
                _raise_if_disk_full(err, run_dir, staging / name, name)
                raise
            checkpoints.publish(staging / name, run_dir / name)
            self._rotate(run_dir)
        barrier()
        watchdog.phase("training")

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


def _raise_if_disk_full(err: BaseException, run_dir: Path, written: Path | None, what: str) -> None:
    """A save that failed for space becomes DiskFull, one line (runtime/fit/disk_full.py)."""
    from runtime.fit.disk_full import DiskFull, explain

    line = explain(err, run_dir, written, what)
    if line:
        raise DiskFull(line) from None


class PairwisePredictionMixin:
    """rm/dpo batches have no `labels` for Trainer's eval loop: evaluate through compute_loss."""

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):  # noqa: ANN001
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


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
