"""`xgen-runtime train CFG`: decide device and strategy, print the start line, run one stage.

Order matters: the DeepSpeed patches and TrainingArguments (which initialises the process
group and, for ZeRO-3, zero.Init) come before any model is loaded.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from runtime.config import TrainConfig
from runtime.config.rules import check_at_start
from runtime.contract.say import note, say
from runtime.contract.secrets import redact
from runtime.contract.slurm import EXIT_PREEMPTED, write_exit_status, write_pid_file
from runtime.distributed import (
    deepspeed_for_device,
    detect_device,
    ensure_deepspeed_env,
    finish,
    gather_start_info,
    init_deepspeed_distributed,
    is_rank0,
    join_restarted_world,
    launch_ranks,
)
from runtime.scaffolding.cpu import patch_deepspeed_shm_build, patch_trainer_fsdp_on_cpu


def quiet_libraries(tty: bool) -> None:
    """Library progress bars are junk in Slurm logs; library info logs are noise on every rank."""
    import datasets
    import transformers

    if is_rank0():
        transformers.utils.logging.set_verbosity_warning()
    else:
        transformers.utils.logging.set_verbosity_error()
    if not tty:
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    logging.basicConfig(format="xgen-runtime: %(levelname)s: %(message)s", level=logging.WARNING)
    # peft 0.21 calls a transformers API deprecated in 5.x on every save (findings E5): harmless.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    # DeepSpeed's ZeRO-3 calls torch.distributed's reduce_scatter_tensor/all_gather_into_tensor, which torch
    # 2.x marks deprecated: about 40 lines per step and rank, none of them the user's to act on.
    warnings.filterwarnings(
        "ignore", message=r"torch\.distributed\.\w+ is deprecated", category=FutureWarning
    )


def adjust_for_device(cfg: TrainConfig, device: str) -> None:
    """Things the device cannot do fall back with one note each."""
    if cfg.fp16 and device == "cpu":
        cfg.fp16 = False
        cfg.notes.append("fp16 is not available on cpu; training in fp32")
    if cfg.fp8 and device != "cuda":
        cfg.fp8 = False
        cfg.notes.append(f"fp8: FP8 training needs CUDA (Hopper or newer); device is {device}, fp8 off")
    elif cfg.fp8 and not any(importlib.util.find_spec(m) for m in ("torchao", "transformer_engine")):
        cfg.fp8 = False
        cfg.notes.append(
            "fp8: needs torchao or transformer_engine installed (accelerate's FP8 backends); fp8 off"
        )
    if cfg.use_v1_kernels and device != "npu":
        cfg.use_v1_kernels = False
        cfg.notes.append(
            f"use_v1_kernels: torch_npu's fused kernels are for Ascend NPUs; nothing to do on {device}"
            + (" (enable_liger_kernel is the CUDA counterpart)" if device == "cuda" else "")
        )
    if cfg.deepspeed_config is not None:
        cfg.deepspeed_config, note = deepspeed_for_device(cfg.deepspeed_config, device)
        if note:
            cfg.notes.append(note)


@dataclass
class TrainResult:
    """What run_training hands an in-process caller (bench/, tests): the exit code and the trainer."""

    code: int
    trainer: Any = None  # the stage's Trainer; None if the stage built none
    perf: Any = None  # runtime.perf.plan.PerfPlan: which throughput levers ran

    @property
    def model(self) -> Any:
        return self.trainer.model if self.trainer is not None else None


def train(cfg: TrainConfig) -> int:
    """Run the configured stage; 0 when done, EXIT_PREEMPTED after a signal-triggered checkpoint."""
    return run_training(cfg).code


def run_training(cfg: TrainConfig, *, extra_callbacks: Sequence[Any] = ()) -> TrainResult:
    """The one entry point behind `xgen-runtime train` and in-process callers such as
    bench/sft_throughput.py: same config path, plus optional TrainerCallbacks (e.g. a throughput meter)."""
    # Before transformers imports peft, and peft bitsandbytes: on an AVX512-BF16 CPU bitsandbytes warns
    # "Failed to load CPU gemm_4bit_forward from kernels-community" when the optional `kernels` package
    # is absent, and then uses its own kernel. Noise in every QLoRA log.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    from runtime.fit.disk_full import EXIT_DISK_FULL, DiskFull
    from runtime.fit.preemption import PreemptCallback

    preempt = PreemptCallback()  # handlers first: a signal during model load still checkpoints
    try:
        try:
            result = _train(cfg, preempt, list(extra_callbacks))
        except DiskFull as full:  # one line instead of the serializer's traceback
            print(redact(f"xgen-runtime: error: {full}"), file=sys.stderr, flush=True)
            result = TrainResult(code=EXIT_DISK_FULL)
        write_exit_status(result.code)
        return result
    finally:
        preempt.restore()
        finish()


def _train(cfg: TrainConfig, preempt: Any, extra_callbacks: list[Any]) -> TrainResult:
    from runtime.fit import run_record, watchdog
    from runtime.fit.optimizers import check_method_packages, check_world
    from runtime.fit.progress import ProgressCallback
    from runtime.perf.plan import apply_perf, resolve_perf
    from runtime.stages import RUNNERS
    from runtime.stages.recipe import RunContext, build_training_args

    write_pid_file()
    tty = sys.stdout.isatty()
    quiet_libraries(tty)
    # Whose output_dir this is, before anything loads: resume only this run's checkpoints.
    decision = run_record.decide(cfg, launch_ranks()[2])
    if decision.problems:
        if is_rank0():
            for line in decision.problems:
                print(redact(f"xgen-runtime: error: {line}"), file=sys.stderr, flush=True)
        return TrainResult(code=run_record.EXIT_REFUSED)
    if decision.finished:
        say(decision.finished)
        return TrainResult(code=0)
    cfg.notes.extend(decision.notes)
    device = detect_device(cfg)
    # DeepSpeed (imported by transformers even for DDP) otherwise guesses its accelerator and warns on CPU.
    os.environ.setdefault("DS_ACCELERATOR", device)
    adjust_for_device(cfg, device)
    check_method_packages(cfg)  # before any model loads: one line with the pip command
    check_world(cfg, launch_ranks()[2])
    plan = resolve_perf(cfg, device)
    apply_perf(cfg, plan)  # before TrainingArguments, data and model: they read the resolved keys
    if cfg.cpu_allocator_cache:
        from runtime.levers.cpu_allocator_cache import keep_freed_blocks

        if not keep_freed_blocks():  # perf checked glibc; mallopt itself refused
            plan.cpu_allocator_cache = cfg.cpu_allocator_cache = False
            cfg.notes.append("cpu_allocator_cache: glibc's mallopt refused the settings; off")
    if device == "npu":
        importlib.import_module("torch_npu")
    if cfg.deepspeed_config is not None:
        ensure_deepspeed_env()
        if device == "cpu":
            patch_deepspeed_shm_build()
    if cfg.fsdp and device == "cpu":
        patch_trainer_fsdp_on_cpu()
    if cfg.fsdp and device == "cuda" and (cfg.fsdp_config or {}).get("cpu_offload"):
        # accelerate builds the mixed "cuda:nccl,cpu:gloo" process group, which collectives on
        # CPU-offloaded FSDP tensors need, only when these are set before the group exists.
        os.environ.setdefault("ACCELERATE_USE_FSDP", "true")
        os.environ.setdefault("FSDP_OFFLOAD_PARAMS", "true")
    check_at_start(cfg, launch_ranks()[2])  # report_to packages, DeepSpeed batch sizes: before any load
    join_restarted_world(device, cfg.ddp_timeout)  # a restart inside the job: a fresh store prefix
    args = build_training_args(cfg, device)
    if cfg.deepspeed_config is not None:
        init_deepspeed_distributed()
    info = gather_start_info(device, cfg.strategy)
    from runtime.contract.expected_world import EXIT_WRONG_WORLD, world_problem

    problem = world_problem(info.world_size, info.hosts)
    if problem:  # every rank saw the same world, so every rank stops here
        if is_rank0():
            print(f"xgen-runtime: error: {problem}", file=sys.stderr, flush=True)
        return TrainResult(code=EXIT_WRONG_WORLD)
    if is_rank0():
        print(redact(info.line()), flush=True)
    if is_rank0():
        from runtime.fit.outputs import write_resolved_config

        say(f"resolved config: {write_resolved_config(cfg, cfg.output_dir)}")
    say(plan.line())
    for message in cfg.notes:
        note(message)
    progress = ProgressCallback(enabled=is_rank0(), tty=tty, preempt=preempt)
    ctx = RunContext(
        cfg,
        device,
        args,
        info,
        callbacks=[
            preempt,
            progress,
            watchdog.callback(cfg.output_dir, rank=launch_ranks()[0], world_size=info.world_size),
            *extra_callbacks,
        ],
        preempt=preempt,
        progress=progress,
        run_record=decision.record,
    )
    RUNNERS[cfg.stage](ctx)
    return TrainResult(EXIT_PREEMPTED if ctx.preempted else 0, trainer=ctx.trainer, perf=plan)
