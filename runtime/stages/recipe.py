"""The recipe every stage follows: the run context, training arguments, data, fit and save.

A stage file reads setup → train → save and calls these; anything stage-specific (a loss)
lives in the stage file itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from runtime.config import ConfigError, TrainConfig
from runtime.contract.say import say
from runtime.data import attention_of, build_collator
from runtime.distributed import StartInfo, check_wrapped, is_rank0
from runtime.fit.optimizers import add_badam_hooks, method_optimizer
from runtime.fit.trainer import PissaConvertCallback
from runtime.model import build_model, load_tokenizer


@dataclass
class RunContext:
    """Everything decided before the stage runs: config, device, TrainingArguments, who joined."""

    cfg: TrainConfig
    device: str
    args: Any  # transformers.TrainingArguments
    info: StartInfo
    callbacks: list[Any] = field(default_factory=list)
    preempt: Any = None  # runtime.fit.preemption.PreemptCallback
    progress: Any = None  # runtime.fit.progress.ProgressCallback
    trainer: Any = None  # set by make_trainer: in-process callers (run_training) read the model from it
    run_record: dict[str, Any] = field(default_factory=dict)  # runtime.fit.run_record: into every checkpoint

    @property
    def preempted(self) -> bool:
        return bool(self.preempt and self.preempt.stopped)


def build_training_args(cfg: TrainConfig, device: str) -> Any:
    """TrainingArguments from the config. Creating it initialises the process group (and, for
    ZeRO-3, makes the next from_pretrained partition the weights), so it comes before the model."""
    eval_wanted = cfg.eval_strategy != "no"
    kwargs = dict(
        output_dir=cfg.output_dir,
        do_train=cfg.do_train,
        do_eval=bool(cfg.do_eval) or eval_wanted,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        optim=cfg.optim or "adamw_torch",  # runtime.perf.plan resolves null before this
        use_liger_kernel=bool(cfg.enable_liger_kernel),  # Trainer patches the model at train()
        torch_compile=cfg.torch_compile,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        adam_epsilon=cfg.adam_epsilon,
        bf16=cfg.bf16,
        fp16=cfg.fp16,
        seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        save_strategy=cfg.save_strategy,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        save_only_model=cfg.save_only_model,
        eval_strategy=cfg.eval_strategy,
        eval_steps=cfg.eval_steps,
        report_to=cfg.report_to,
        run_name=cfg.run_name,
        dataloader_num_workers=cfg.dataloader_num_workers,
        ddp_timeout=cfg.ddp_timeout,
        ddp_find_unused_parameters=False,  # True only adds a warning per rank (findings E1)
        use_cpu=device == "cpu",  # DeepSpeed's batch math needs it on CPU (E3)
        deepspeed=cfg.deepspeed_config,
        fsdp=bool(cfg.fsdp),
        fsdp_config=cfg.fsdp_config if cfg.fsdp else None,
        remove_unused_columns=False,  # our collators read columns Trainer does not know
        include_num_input_tokens_seen="non_padding",
        label_names=["labels"],
        disable_tqdm=True,  # runtime.fit.progress draws the bar
        log_level="warning" if is_rank0() else "error",
        log_level_replica="error",
    )
    args = make_training_args(kwargs, cfg.training_args)
    if cfg.fp8:  # train.adjust_for_device left it on only on CUDA with an FP8 backend installed
        args.mixed_precision = "fp8"  # Trainer hands this to accelerate (torchao, else transformer_engine)
    return args


def make_training_args(kwargs: dict[str, Any], passthrough: dict[str, Any]) -> Any:
    """TrainingArguments(**kwargs, **passthrough); transformers' own complaint about a value becomes
    one config line (`<key>: <its message>`), raised before any model or data is loaded."""
    from transformers import TrainingArguments

    clash = set(kwargs) & set(passthrough)
    assert not clash, f"passthrough keys the runtime also sets: {clash}"  # refusals.RUNTIME_OWNED lists them
    try:
        return TrainingArguments(**kwargs, **passthrough)
    except (ValueError, TypeError) as exc:
        message = " ".join(str(exc).split())
        # Name the key the message mentions (passed-through keys first), else the only passed-through
        # key, else the whole section: transformers' messages do not always say which key.
        named = [k for k in [*passthrough, *kwargs] if k in message]
        key = named[0] if named else next(iter(passthrough)) if len(passthrough) == 1 else "train"
        raise ConfigError(key, f"transformers.TrainingArguments refused it: {message}") from None


def load_datasets(ctx: RunContext, tokenizer: Any, *, stage: str) -> Any:
    """Tokenize once: on several ranks the builder (global rank 0, or a node's first rank when that node
    cannot see rank 0's cache folder) tokenizes, the others wait on a file, not on a barrier, and then
    read its cache (runtime.data.once)."""
    import torch.distributed as dist

    from runtime.data import build_datasets
    from runtime.data.once import cache_root, plan_builders, run_once

    # runtime.data caps preprocessing_num_workers to the CPUs available, with a note.
    if ctx.cfg.streaming:
        # Each rank reads the stream and keeps its share of the batches: accelerate's default for an
        # IterableDataset (rank 0 reads, then broadcasts) needs batches of one length, padded ones are not.
        ctx.args.accelerator_config.dispatch_batches = False

    def build() -> Any:
        return build_datasets(ctx.cfg, tokenizer, stage=stage)

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return build()
    plan = plan_builders(cache_root(ctx.cfg))
    say(plan.line)
    if plan.local_line:
        say(plan.local_line, by="caller")  # this node's builder: every rank that builds says it
    return run_once(plan, build, _say_per_node)


def _say_per_node(line: str) -> None:
    """A waiting node's progress: said by its first rank only (one line per node, not per rank)."""
    say(line, by="node")


def make_trainer(
    trainer_cls: type, ctx: RunContext, *, model: Any, tokenizer: Any, data: Any, collator: Any, **extra: Any
) -> Any:
    """The stage's Trainer with our callbacks; the stock printer/tqdm callbacks are removed."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer = trainer_cls(
        model=model,
        args=ctx.args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=list(ctx.callbacks),
        **extra,
    )
    trainer.run_record = ctx.run_record
    trainer.micro_batch_tokens = ctx.cfg.micro_batch_tokens  # runtime.perf.plan checked it applies
    factory = method_optimizer(ctx.cfg, ctx.args)
    if factory is not None:  # LoRA+, GaLore, APOLLO, BAdam, Adam-mini, Muon: Trainer calls it with the model
        trainer.optimizer_cls_and_kwargs = (factory, {})
    if ctx.cfg.pissa_convert:
        trainer.add_callback(PissaConvertCallback())
    if ctx.cfg.use_badam:
        add_badam_hooks(trainer)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_WrapCheck(trainer, ctx.cfg))
    ctx.trainer = trainer
    return trainer


class _WrapCheck(TrainerCallback):
    """Fail at the first step if FSDP/DeepSpeed was asked for but not applied (never silently DDP)."""

    def __init__(self, trainer: Any, cfg: TrainConfig) -> None:
        self.trainer, self.cfg = trainer, cfg

    def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
        check_wrapped(self.trainer, self.cfg)


def fit(trainer: Any, ctx: RunContext) -> dict[str, Any]:
    """Train (resuming from the newest complete checkpoint unless told otherwise); {} if not training."""
    from runtime.fit.checkpoints import resolve_resume

    if not ctx.cfg.do_train:
        return {}
    trainer.prepare_output_dir()
    checkpoint, why = resolve_resume(ctx.cfg)
    say(why)
    if checkpoint:
        from runtime.fit.universal_checkpoint import ensure_universal, wants_universal

        if wants_universal(ctx.cfg.deepspeed_config):  # set when the world size changed (run_record)
            ensure_universal(checkpoint)
    tokens_before = 0
    if checkpoint:
        from transformers import TrainerState

        tokens_before = TrainerState.load_from_json(
            os.path.join(checkpoint, "trainer_state.json")
        ).num_input_tokens_seen
    output = trainer.train(resume_from_checkpoint=checkpoint)
    metrics = dict(output.metrics)
    metrics["_tokens_before"] = tokens_before
    return metrics


def save_outputs(trainer: Any, ctx: RunContext, tokenizer: Any, train_metrics: dict[str, Any]) -> None:
    """Final weights (or adapter) + tokenizer, trainer state, results JSON, loss plot, final eval. A save
    that fails for space raises DiskFull (one line) instead of the serializer's error."""
    try:
        _save_outputs(trainer, ctx, tokenizer, train_metrics)
    except Exception as err:
        from runtime.fit.disk_full import DiskFull, explain

        line = (
            None if isinstance(err, DiskFull) else explain(err, Path(ctx.cfg.output_dir), None, "final save")
        )
        if line:
            raise DiskFull(line) from None
        raise


def _save_outputs(trainer: Any, ctx: RunContext, tokenizer: Any, train_metrics: dict[str, Any]) -> None:
    from runtime.fit import outputs

    cfg, out = ctx.cfg, Path(ctx.cfg.output_dir)
    if cfg.do_train:
        trainer.save_model(str(out))  # rank 0 writes; DeepSpeed/FSDP gather the full weights first
        if trainer.args.should_save:
            tokenizer.save_pretrained(out)
            trainer.save_state()
            results = outputs.train_results(
                {k: v for k, v in train_metrics.items() if not k.startswith("_")},
                trainer.state,
                world_size=ctx.info.world_size,
                hosts=ctx.info.hosts,
                strategy=ctx.info.strategy,
                device=ctx.device,
                tokens_before=train_metrics.get("_tokens_before", 0),
            )
            outputs.write_json(out / "train_results.json", results)
            if ctx.run_record:  # says whose finished run this is (runtime/fit/run_record.py)
                from runtime.fit.run_record import write_record

                write_record(out, ctx.run_record)
            if cfg.deepspeed_config is not None:
                # The exact DeepSpeed JSON this run used (a named stage is generated, with "auto" fields).
                outputs.write_json(out / "deepspeed_config.json", cfg.deepspeed_config)
            if cfg.plot_loss and outputs.plot_loss(trainer.state.log_history, out) is None:
                say("note: plot_loss: no loss was logged (fewer steps than logging_steps), no plot")
    if trainer.eval_dataset is not None and cfg.do_eval is not False:
        metrics = _final_eval(trainer)
        if trainer.args.should_save:
            outputs.write_json(
                out / "eval_results.json", {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            )
    if cfg.do_train and trainer.args.should_save:
        kind = "adapter" if cfg.finetuning_type in ("lora", "oft") else "model"
        why = outputs.missing_weights(out, kind)
        if why and kind == "model" and cfg.strategy == "deepspeed-z3":
            why = _consolidate_zero3(out, why)
        if why:
            raise RuntimeError(
                f"{out} holds no loadable {kind}: {why}. With ZeRO-3 set "
                "stage3_gather_16bit_weights_on_model_save: true in the DeepSpeed JSON"
            )
        say(f"saved {kind} to {out}")


def _consolidate_zero3(out: Path, why: str) -> str | None:
    """ZeRO-3 with stage3_gather_16bit_weights_on_model_save: false saves only the shards; join them
    into model.safetensors with DeepSpeed's own zero_to_fp32 (rank 0, after the save). fp32 weights."""
    from deepspeed.utils.zero_to_fp32 import convert_zero_checkpoint_to_fp32_state_dict

    from runtime.fit import outputs

    if not (out / "latest").is_file():
        return why
    say("note: ZeRO-3 saved shards only (stage3_gather_16bit_weights_on_model_save: false); consolidating")
    convert_zero_checkpoint_to_fp32_state_dict(str(out), str(out), safe_serialization=True)
    return outputs.missing_weights(out, "model")


def _final_eval(trainer: Any) -> dict[str, Any]:
    """Evaluate at the end, unless the last eval_steps evaluation already ran at this very step."""
    last = trainer.state.log_history[-2:] if trainer.state.log_history else []
    for entry in last:
        if "eval_loss" in entry and entry.get("step") == trainer.state.global_step and trainer.args.do_train:
            return {k: v for k, v in entry.items() if k != "step"}
    return trainer.evaluate()


def run_recipe(ctx: RunContext, *, stage: str, trainer_cls: type) -> None:
    """The recipe pt, sft and rm share: setup → train → save (dpo adds its reference model)."""
    # --- setup ---
    tokenizer = load_tokenizer(ctx.cfg)
    data = load_datasets(ctx, tokenizer, stage=stage)
    model = build_model(ctx.cfg, stage=stage, device=ctx.device, tokenizer=tokenizer)
    collator = build_collator(ctx.cfg, tokenizer, stage=stage, attention=attention_of(model))
    trainer = make_trainer(trainer_cls, ctx, model=model, tokenizer=tokenizer, data=data, collator=collator)
    # --- train ---
    metrics = fit(trainer, ctx)
    if ctx.preempted:
        return
    # --- save ---
    save_outputs(trainer, ctx, tokenizer, metrics)
