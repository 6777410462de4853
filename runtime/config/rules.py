"""Cross-key rules: choices, ranges, contradictions and derived values, applied after the types."""

from __future__ import annotations

import importlib.util
import os

from runtime.config.files import load_deepspeed, load_json, unseen_json
from runtime.config.methods import check_methods
from runtime.config.prediction import GENERATION_KEYS, check_prediction, predict_defaults, prediction_problems
from runtime.config.quantization import QUANT_KEYS, check_quantization, quantization_problems
from runtime.config.schema import (
    REFERENCE_FREE_LOSSES,
    ROPE_SCALINGS,
    STAGES,
    TOOL_FORMATS,
    UNSUPPORTED_STAGES,
    ConfigError,
    ConfigErrors,
    TrainConfig,
    train_fields,
)
from runtime.config.suggest import suggest
from runtime.config.template_names import template_problem


def normalise(
    cfg: TrainConfig, given: set[str], p: str, base_dir: str | None = None, visible_only: bool = False
) -> None:
    """Choices, ranges, contradictions and derived values, in the order a user would fix them.
    Relative file paths are read from `base_dir` when given (see files.resolve); with `visible_only`
    a DeepSpeed JSON whose folder is not visible from here is noted, not read (files.unseen_json)."""
    if cfg.flash_attn == "disabled":
        cfg.flash_attn = "eager"
    if cfg.stage in UNSUPPORTED_STAGES:
        raise ConfigError(
            p + "stage", f"{UNSUPPORTED_STAGES[cfg.stage]} is not supported; use one of {STAGES}"
        )
    for name, spec in train_fields().items():
        choices = spec.metadata.get("choices")
        value = getattr(cfg, name)
        if choices and value not in choices:
            raise ConfigError(
                p + name,
                f"must be one of {', '.join(choices)}; got {value!r}" + suggest(str(value), list(choices)),
            )
    if cfg.template:  # static data: a typo fails here, not after the ranks have started
        problem = template_problem(cfg.template)
        if problem:
            raise ConfigError(p + "template", problem)
    if not cfg.model_name_or_path:
        raise ConfigError(p + "model_name_or_path", "required (a model directory)")
    predict_defaults(cfg, given, p)  # a predict-only config trains nothing and names no dataset
    if cfg.do_train and not cfg.dataset and cfg.export_dir is None:
        raise ConfigError(p + "dataset", "required for training (names in dataset_info.json or file paths)")
    _check_ranges(cfg, p)
    _cap_ddp_timeout(cfg, p)
    if cfg.bf16 and cfg.fp16:
        raise ConfigError(p + "fp16", "bf16 and fp16 are both true; choose one")
    if cfg.packing and cfg.stage in ("rm", "dpo", "kto"):
        raise ConfigError(p + "packing", f"only pt and sft pack examples; stage is {cfg.stage}")
    _normalise_data(cfg, p)
    _check_token_budget(cfg, p)
    _check_fused_lora(cfg, p)
    _check_losses(cfg, p)
    _normalise_distributed(cfg, p, base_dir, visible_only)
    check_methods(cfg, p)
    _normalise_model_keys(cfg, given, p)
    check_quantization(cfg, p)
    check_prediction(cfg, p)
    if cfg.eval_strategy != "no" and not (cfg.val_size or cfg.eval_dataset):
        raise ConfigError(p + "eval_strategy", f"{cfg.eval_strategy!r} needs val_size > 0 or eval_dataset")
    if isinstance(cfg.resume_from_checkpoint, str) and cfg.resume_from_checkpoint in ("true", "false"):
        cfg.resume_from_checkpoint = cfg.resume_from_checkpoint == "true"
    if cfg.resume_from_checkpoint is None:
        cfg.resume_from_checkpoint = "auto"  # LLaMA-Factory's null also resumes from output_dir
    if isinstance(cfg.report_to, str):
        cfg.report_to = [s.strip() for s in cfg.report_to.split(",") if s.strip()]
    if cfg.lora_alpha is None:
        cfg.lora_alpha = cfg.lora_rank * 2
    _note_ignored(cfg, given, p)


def _normalise_data(cfg: TrainConfig, p: str) -> None:
    """LLaMA-Factory's data-key rules (its DataArguments.__post_init__ and get_train_args)."""
    if cfg.neat_packing:
        if cfg.stage != "sft":
            raise ConfigError(p + "neat_packing", f"applies to stage sft only; stage is {cfg.stage}")
        if cfg.packing is False:
            raise ConfigError(p + "packing", "false contradicts neat_packing: true; drop one")
        cfg.packing = True
        cfg.explicit = cfg.explicit | {"packing"}  # runtime.perf.plan never overrides it
    if cfg.packing is None:
        cfg.packing = cfg.stage == "pt"  # LLaMA-Factory's default
    for key in ("train_on_prompt", "mask_history"):
        if getattr(cfg, key) and cfg.stage != "sft":
            raise ConfigError(p + key, f"applies to stage sft only; stage is {cfg.stage}")
    if cfg.train_on_prompt and cfg.mask_history:
        raise ConfigError(p + "mask_history", "contradicts train_on_prompt: true; choose one")
    if cfg.tool_format is not None and cfg.tool_format not in TOOL_FORMATS:
        raise ConfigError(
            p + "tool_format",
            f"{cfg.tool_format!r} is not written by xgen-runtime; use one of {', '.join(TOOL_FORMATS)} "
            "or leave it unset",
        )
    if cfg.interleave_probs is not None:
        if cfg.mix_strategy == "concat":
            raise ConfigError(
                p + "interleave_probs", "needs mix_strategy interleave_under or interleave_over"
            )
        items = (
            cfg.interleave_probs.split(",") if isinstance(cfg.interleave_probs, str) else cfg.interleave_probs
        )
        try:
            probs = [float(x) for x in items]
        except (TypeError, ValueError):
            raise ConfigError(
                p + "interleave_probs", f"expected numbers, got {cfg.interleave_probs!r}"
            ) from None
        if any(x < 0 for x in probs) or abs(sum(probs) - 1) > 1e-6:
            raise ConfigError(p + "interleave_probs", f"must be >= 0 and sum to 1; got {probs}")
        for key in ("dataset", "eval_dataset"):
            value = getattr(cfg, key)
            names = [
                n for n in (value.split(",") if isinstance(value, str) else value or []) if str(n).strip()
            ]
            if names and len(names) != len(probs):
                raise ConfigError(
                    p + "interleave_probs", f"{len(probs)} probabilities for {len(names)} datasets in {key}"
                )
        cfg.interleave_probs = probs
    if cfg.streaming:
        if cfg.max_steps <= 0:
            raise ConfigError(p + "streaming", "a stream has no length: set max_steps (> 0)")
        if cfg.max_samples is not None:
            raise ConfigError(p + "max_samples", "cannot be combined with streaming; drop one")
        if 0 < cfg.val_size < 1:
            raise ConfigError(p + "val_size", "with streaming, give a whole number of examples")
        if cfg.packing and cfg.stage == "sft":
            raise ConfigError(p + "streaming", "sft packing needs the whole dataset; set packing: false")
    if cfg.image_max_pixels < cfg.image_min_pixels:  # LLaMA-Factory's ModelArguments check
        raise ConfigError(p + "image_max_pixels", "cannot be smaller than image_min_pixels")
    if cfg.buffer_size <= 0:
        raise ConfigError(p + "buffer_size", f"must be > 0; got {cfg.buffer_size}")


def _check_fused_lora(cfg: TrainConfig, p: str) -> None:
    """fused_lora replaces peft's plain LoRA forward only (runtime/levers/fused_lora.py)."""
    if not cfg.fused_lora:
        return
    if cfg.finetuning_type != "lora":
        raise ConfigError(
            p + "fused_lora", f"applies to finetuning_type lora; it is {cfg.finetuning_type}: remove it"
        )
    if cfg.use_dora:
        raise ConfigError(p + "fused_lora", "DoRA runs peft's own forward; remove fused_lora or use_dora")


def _check_token_budget(cfg: TrainConfig, p: str) -> None:
    """micro_batch_tokens groups whole examples for the padding-free path (runtime/perf/plan.py) only."""
    budget, key = cfg.micro_batch_tokens, p + "micro_batch_tokens"
    if budget is None:
        return
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ConfigError(key, f"must be a positive integer (tokens per device), got {budget!r}")
    if cfg.stage not in ("pt", "sft"):
        raise ConfigError(key, f"applies to stages pt and sft; stage is {cfg.stage}: remove it")
    if cfg.stage == "sft" and cfg.packing:
        which = "neat_packing" if cfg.neat_packing else "packing"
        raise ConfigError(key, f"{which} already makes rows of cutoff_len; drop one of the two")
    if isinstance(cfg.cutoff_len, int) and budget < cfg.cutoff_len:
        raise ConfigError(
            key, f"{budget} is below cutoff_len {cfg.cutoff_len}: a long example would not fit; raise it"
        )
    if cfg.streaming:
        raise ConfigError(key, "needs the example lengths up front; a stream has none: drop streaming")
    if cfg.perf == "off":
        raise ConfigError(key, "needs the padding-free path, which perf: off leaves off; set perf: auto")


# Longest a collective may wait before the run counts it as hung (seconds). LLaMA-Factory's examples set
# ddp_timeout: 180000000 (5.7 years) so that ranks waiting in a barrier while rank 0 tokenizes never time
# out; here tokenization waits on files, not a collective (runtime/data/once.py), so a longer wait is a hang
# that would otherwise hold the allocation until its time limit with nothing in the log.
MAX_DDP_TIMEOUT = 7200


def _cap_ddp_timeout(cfg: TrainConfig, p: str) -> None:
    if cfg.ddp_timeout > MAX_DDP_TIMEOUT:
        cfg.notes.append(
            f"{p}ddp_timeout: {cfg.ddp_timeout} s ({cfg.ddp_timeout / 86400:.0f} days) capped at "
            f"{MAX_DDP_TIMEOUT} s: a collective waiting longer is a hang, and tokenization here never "
            "waits in one (LLaMA-Factory's reason for the large value)"
        )
        cfg.ddp_timeout = MAX_DDP_TIMEOUT


def _check_ranges(cfg: TrainConfig, p: str) -> None:
    positive = (
        "cutoff_len",
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "gradient_accumulation_steps",
        "logging_steps",
        "save_steps",
        "lora_rank",
        "ddp_timeout",
    )
    for name in positive:
        if getattr(cfg, name) <= 0:
            raise ConfigError(p + name, f"must be > 0; got {getattr(cfg, name)}")
    for name in ("eval_steps", "save_total_limit", "max_samples", "preprocessing_num_workers"):
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise ConfigError(p + name, f"must be > 0 (or null); got {value}")
    if cfg.max_steps <= 0 and cfg.num_train_epochs <= 0:
        raise ConfigError(p + "num_train_epochs", "must be > 0 when max_steps is not set")
    if cfg.learning_rate < 0:
        raise ConfigError(p + "learning_rate", f"must be >= 0; got {cfg.learning_rate}")
    if cfg.val_size < 0 or (cfg.val_size >= 1 and not float(cfg.val_size).is_integer()):
        raise ConfigError(p + "val_size", f"a fraction in [0, 1) or a whole count; got {cfg.val_size}")
    if not 0 <= cfg.lora_dropout < 1:
        raise ConfigError(p + "lora_dropout", f"must be in [0, 1); got {cfg.lora_dropout}")
    if cfg.warmup_steps < 0:
        raise ConfigError(p + "warmup_steps", f"must be >= 0; got {cfg.warmup_steps}")
    if cfg.freeze_trainable_layers == 0 and cfg.finetuning_type == "freeze" and not cfg.freeze_extra_modules:
        raise ConfigError(
            p + "freeze_trainable_layers", "0 trains nothing; give N layers or freeze_extra_modules"
        )
    if cfg.pref_beta <= 0:
        raise ConfigError(p + "pref_beta", f"must be > 0; got {cfg.pref_beta}")


SFT_LOSS_FLAGS = ("use_dft_loss", "use_asft_loss", "use_eaft_loss")


def _check_losses(cfg: TrainConfig, p: str) -> None:
    """Preference/KTO weights and the SFT loss variants: ranges and the one-at-a-time rule."""
    for name in ("kto_chosen_weight", "kto_rejected_weight", "asft_alpha", "eaft_alpha"):
        if getattr(cfg, name) < 0:
            raise ConfigError(p + name, f"must be >= 0; got {getattr(cfg, name)}")
    if not 0 <= cfg.dpo_label_smoothing < 0.5:
        raise ConfigError(p + "dpo_label_smoothing", f"must be in [0, 0.5); got {cfg.dpo_label_smoothing}")
    if cfg.stage == "dpo" and cfg.pref_loss != "sigmoid" and cfg.dpo_label_smoothing > 1e-6:
        raise ConfigError(
            p + "dpo_label_smoothing", f"only applies to pref_loss sigmoid (got {cfg.pref_loss}); set it to 0"
        )
    chosen = [name for name in SFT_LOSS_FLAGS if getattr(cfg, name)]
    if len(chosen) > 1:
        raise ConfigError(p + chosen[1], f"{' and '.join(chosen)} are both true; choose one SFT loss")


def _normalise_distributed(cfg: TrainConfig, p: str, base_dir: str | None, visible_only: bool) -> None:
    """Resolve `deepspeed` to a dict and `fsdp` strings to fsdp + fsdp_config. An fsdp_config JSON is
    always read: the generator writes its settings into the accelerate config."""
    if cfg.deepspeed is not None and cfg.fsdp:
        raise ConfigError(p + "fsdp", "deepspeed and fsdp are both set; choose one")
    unseen = unseen_json(cfg.deepspeed, base_dir) if visible_only and cfg.deepspeed is not None else None
    if unseen:  # deepspeed_config stays None: the nodes read the JSON (their check and preflight)
        cfg.notes.append(f"{p}deepspeed: {unseen}")
    elif cfg.deepspeed is not None:
        cfg.deepspeed_config = load_deepspeed(cfg.deepspeed, p + "deepspeed", base_dir)
    if isinstance(cfg.fsdp_config, str):
        cfg.fsdp_config = load_json(cfg.fsdp_config, p + "fsdp_config", base_dir)
    fsdp_config = dict(cfg.fsdp_config or {})
    if isinstance(cfg.fsdp, str):
        words = cfg.fsdp.split()
        allowed = {"full_shard", "shard_grad_op", "auto_wrap", "offload"}
        bad = [w for w in words if w not in allowed]
        if bad or not words:
            raise ConfigError(
                p + "fsdp",
                f"unsupported {' '.join(bad) or 'empty value'!r}; "
                f"use true or words from {', '.join(sorted(allowed))}",
            )
        if "offload" in words:
            fsdp_config["cpu_offload"] = True
        if "shard_grad_op" in words:
            fsdp_config["reshard_after_forward"] = False  # FSDP2's ZeRO-2-like mode
        cfg.fsdp = True
    if cfg.fsdp:
        version = fsdp_config.get("version", fsdp_config.get("fsdp_version", 2))
        if version != 2:
            raise ConfigError(
                p + "fsdp_config", f"only FSDP2 (version 2) is supported; got version {version}"
            )
        cfg.fsdp_config = fsdp_config
    elif fsdp_config:
        cfg.notes.append(f"{p}fsdp_config ignored: fsdp is false")
    if cfg.deepspeed_config is not None:
        _check_deepspeed_json(cfg, p)


def _check_deepspeed_json(cfg: TrainConfig, p: str) -> None:
    """What DeepSpeed would only trip over after the model has loaded (or never, and save no weights)."""
    ds = cfg.deepspeed_config or {}
    tp = ds.get("tensor_parallel") or {}
    if isinstance(tp, dict) and (tp.get("autotp_size") or 1) > 1 and cfg.finetuning_type == "lora":
        raise ConfigError(
            p + "deepspeed",
            f"tensor_parallel.autotp_size {tp['autotp_size']} (DeepSpeed AutoTP) does not work with LoRA "
            "(it fails inside DeepSpeed); drop tensor_parallel or use finetuning_type: full",
        )
    zero = ds.get("zero_optimization") or {}
    if zero.get("stage") == 3 and "stage3_gather_16bit_weights_on_model_save" not in zero:
        # Without it a ZeRO-3 save writes no weights at all, only the sharded checkpoint.
        cfg.deepspeed_config = {
            **ds,
            "zero_optimization": {**zero, "stage3_gather_16bit_weights_on_model_save": True},
        }
        cfg.notes.append(
            f"{p}deepspeed: ZeRO-3 JSON without stage3_gather_16bit_weights_on_model_save; set to true "
            "so the saved model has its weights"
        )


def _normalise_model_keys(cfg: TrainConfig, given: set[str], p: str) -> None:
    """LLaMA-Factory's model keys: gradient-checkpointing switch, precision, RoPE, MoE."""
    if cfg.disable_gradient_checkpointing is not None:
        wanted = not cfg.disable_gradient_checkpointing
        if "gradient_checkpointing" in given and cfg.gradient_checkpointing != wanted:
            raise ConfigError(
                p + "disable_gradient_checkpointing",
                f"contradicts gradient_checkpointing: {str(cfg.gradient_checkpointing).lower()}; "
                "give one of them",
            )
        cfg.gradient_checkpointing = wanted
    if cfg.fsdp and cfg.use_reentrant_gc:
        cfg.use_reentrant_gc = False  # FSDP2 needs non-reentrant checkpointing (LLaMA-Factory does the same)
        if "use_reentrant_gc" in given and cfg.gradient_checkpointing:
            cfg.notes.append(f"{p}use_reentrant_gc: FSDP2 needs non-reentrant checkpointing; using false")
    if cfg.pure_bf16 and cfg.fp16:
        raise ConfigError(p + "pure_bf16", "pure_bf16 and fp16 are both true; choose one")
    if cfg.pure_bf16 and cfg.strategy == "deepspeed-z3":
        raise ConfigError(
            p + "pure_bf16", "incompatible with DeepSpeed ZeRO-3 (as in LLaMA-Factory); use bf16"
        )
    if cfg.fp8 and cfg.fp16:
        raise ConfigError(p + "fp8", "fp8 and fp16 are both true; choose one (fp8 keeps bf16 for the rest)")
    if cfg.rope_scaling is not None and cfg.rope_scaling not in ROPE_SCALINGS:
        raise ConfigError(p + "rope_scaling", f"must be one of {', '.join(ROPE_SCALINGS)} (or null)")
    if cfg.moe_aux_loss_coef is not None and cfg.moe_aux_loss_coef < 0:
        raise ConfigError(p + "moe_aux_loss_coef", f"must be >= 0; got {cfg.moe_aux_loss_coef}")
    if (cfg.add_tokens or cfg.add_special_tokens) and not cfg.resize_vocab:
        cfg.resize_vocab = True  # new tokens need embedding rows, as in LLaMA-Factory
        cfg.notes.append(f"{p}resize_vocab set to true: add_tokens/add_special_tokens add new tokens")


# report_to name -> the modules transformers' integration needs (any one of them).
_TRACKERS = {
    "wandb": ("wandb",),
    "tensorboard": ("tensorboard", "tensorboardX"),
    "mlflow": ("mlflow",),
    "comet_ml": ("comet_ml",),
    "clearml": ("clearml",),
    "dvclive": ("dvclive",),
    "neptune": ("neptune",),
    "swanlab": ("swanlab",),
    "trackio": ("trackio",),
    "codecarbon": ("codecarbon",),
    "azure_ml": ("azureml",),
}


def check_at_start(cfg: TrainConfig, world_size: int) -> None:
    """Run by each rank before the model loads: the checks that need the node's packages (loggers,
    quantisation, the prediction scorers) or the world size, or a model's own files (a pre-quantised
    checkpoint). Every problem found is reported (ConfigErrors when several)."""
    errors = tracker_problems(cfg) + world_size_problems(cfg, world_size) + quantization_problems(cfg)
    errors += prediction_problems(cfg)
    if errors:
        raise errors[0] if len(errors) == 1 else ConfigErrors(errors)


def tracker_problems(cfg: TrainConfig, p: str = "") -> list[ConfigError]:
    """report_to names a logger whose package is not installed here (transformers fails after the load)."""
    errors = []
    for tracker in cfg.report_to if isinstance(cfg.report_to, list) else [cfg.report_to]:
        modules = _TRACKERS.get(tracker)
        if modules and not any(importlib.util.find_spec(m) for m in modules):
            errors.append(
                ConfigError(
                    p + "report_to",
                    f"{tracker} is not installed on {os.uname().nodename} (pip install {modules[0]}), "
                    "or drop it from report_to",
                )
            )
    return errors


def world_size_problems(cfg: TrainConfig, world_size: int, p: str = "") -> list[ConfigError]:
    """A DeepSpeed JSON's fixed batch sizes or AutoTP size that contradict this world size. Torch-free:
    `xgen check` can call it with nodes x devices_per_node when the device count is pinned."""
    errors = []
    ds = cfg.deepspeed_config or {}
    tp = ds.get("tensor_parallel") or {}
    tp_size = (tp.get("autotp_size") or 1) if isinstance(tp, dict) else 1
    if tp_size > 1 and world_size % tp_size:
        errors.append(
            ConfigError(
                p + "deepspeed",
                f"tensor_parallel.autotp_size {tp_size} needs a world size divisible by it; "
                f"the world size is {world_size}",
            )
        )
    micro, accum = cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps
    fixed = {
        "train_micro_batch_size_per_gpu": (micro, "per_device_train_batch_size"),
        "gradient_accumulation_steps": (accum, "gradient_accumulation_steps"),
        "train_batch_size": (micro * accum * world_size, f"{micro} x {accum} x world size {world_size}"),
    }
    for name, (expected, what) in fixed.items():
        value = ds.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value != expected:
            errors.append(
                ConfigError(
                    p + "deepspeed",
                    f"{name} {value} in the DeepSpeed JSON contradicts {what} = {expected}; "
                    f'set it to "auto" (the trainer fills it in) or to {expected}',
                )
            )
    return errors


_LORA_KEYS = (
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "lora_target",
    "use_rslora",
    "use_dora",
    "loraplus_lr_embedding",
    "pissa_iter",
)
_OFT_KEYS = ("oft_rank", "oft_block_size", "oft_target", "module_dropout")
_OPTIMIZER_PARAM_KEYS = {
    "use_galore": (
        "galore_target",
        "galore_rank",
        "galore_update_interval",
        "galore_scale",
        "galore_proj_type",
        "galore_layerwise",
    ),
    "use_apollo": (
        "apollo_target",
        "apollo_rank",
        "apollo_update_interval",
        "apollo_scale",
        "apollo_proj",
        "apollo_proj_type",
        "apollo_scale_type",
        "apollo_layerwise",
        "apollo_scale_front",
    ),
    "use_badam": (
        "badam_mode",
        "badam_start_block",
        "badam_switch_mode",
        "badam_switch_interval",
        "badam_update_ratio",
        "badam_mask_mode",
        "badam_verbose",
    ),
}
_FREEZE_KEYS = ("freeze_trainable_layers", "freeze_trainable_modules", "freeze_extra_modules")
_PREF_KEYS = ("pref_beta", "pref_ftx")
_DPO_KEYS = ("pref_loss", "simpo_gamma", "dpo_label_smoothing")
_KTO_KEYS = ("kto_chosen_weight", "kto_rejected_weight")
_SFT_LOSS_KEYS = (*SFT_LOSS_FLAGS, "asft_alpha", "eaft_alpha")


def _note_ignored(cfg: TrainConfig, given: set[str], p: str) -> None:
    """Keys that do not apply to the chosen method are harmless: say so once, do not fail."""
    groups = [
        (_LORA_KEYS, cfg.finetuning_type == "lora", f"finetuning_type is {cfg.finetuning_type}"),
        (
            _FREEZE_KEYS,
            cfg.finetuning_type == "freeze" or cfg.use_llama_pro,
            f"finetuning_type is {cfg.finetuning_type}",
        ),
        (_PREF_KEYS, cfg.stage in ("dpo", "kto"), f"stage is {cfg.stage}"),
        (_DPO_KEYS, cfg.stage == "dpo", f"stage is {cfg.stage}"),
        (_KTO_KEYS, cfg.stage == "kto", f"stage is {cfg.stage}"),
        (_SFT_LOSS_KEYS, cfg.stage == "sft", f"stage is {cfg.stage}"),
        (("ref_model",), uses_reference(cfg), _no_reference_why(cfg)),
        (_OFT_KEYS, cfg.finetuning_type == "oft", f"finetuning_type is {cfg.finetuning_type}"),
        (QUANT_KEYS, cfg.quantization_bit is not None, "quantization_bit is not set"),
        (
            ("quantization_type", "double_quantization"),
            cfg.quantization_bit is None or (cfg.quantization_bit == 4 and cfg.quantization_method == "bnb"),
            f"they shape bnb 4-bit weights; this is {cfg.quantization_method} {cfg.quantization_bit}-bit",
        ),
        (
            ("additional_target",),
            cfg.finetuning_type in ("lora", "oft"),
            f"finetuning_type is {cfg.finetuning_type}",
        ),
        (GENERATION_KEYS, cfg.do_predict, "do_predict is false (generation keys)"),
    ]
    groups += [(keys, getattr(cfg, use), f"{use} is false") for use, keys in _OPTIMIZER_PARAM_KEYS.items()]
    for keys, applies, why in groups:
        unused = [k for k in keys if k in given and not applies]
        if unused:
            cfg.notes.append(f"{', '.join(p + k for k in unused)} ignored: {why}")


def uses_reference(cfg: TrainConfig) -> bool:
    """A frozen reference model takes part in the loss: dpo (but orpo/simpo), kto, sft with ASFT."""
    if cfg.stage == "dpo":
        return cfg.pref_loss not in REFERENCE_FREE_LOSSES
    return cfg.stage == "kto" or (cfg.stage == "sft" and cfg.use_asft_loss)


def _no_reference_why(cfg: TrainConfig) -> str:
    if cfg.stage == "dpo":
        return f"pref_loss {cfg.pref_loss} uses no reference model"
    return f"stage {cfg.stage} uses no reference model" + (
        " (sft: only use_asft_loss)" if cfg.stage == "sft" else ""
    )
