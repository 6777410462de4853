"""Cross-key rules: choices, ranges, contradictions and derived values, applied after the types."""

from __future__ import annotations

from runtime.config.files import load_deepspeed, load_json
from runtime.config.schema import (
    REFERENCE_FREE_LOSSES,
    STAGES,
    UNSUPPORTED_STAGES,
    ConfigError,
    TrainConfig,
    train_fields,
)
from runtime.config.suggest import suggest


def normalise(cfg: TrainConfig, given: set[str], p: str) -> None:
    """Choices, ranges, contradictions and derived values, in the order a user would fix them."""
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
    if not cfg.model_name_or_path:
        raise ConfigError(p + "model_name_or_path", "required (a model directory)")
    if cfg.do_train and not cfg.dataset and cfg.export_dir is None:
        raise ConfigError(p + "dataset", "required for training (names in dataset_info.json or file paths)")
    _check_ranges(cfg, p)
    if cfg.bf16 and cfg.fp16:
        raise ConfigError(p + "fp16", "bf16 and fp16 are both true; choose one")
    if cfg.packing and cfg.stage in ("rm", "dpo", "kto"):
        raise ConfigError(p + "packing", f"only pt and sft pack examples; stage is {cfg.stage}")
    _check_losses(cfg, p)
    _normalise_distributed(cfg, p)
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


def _normalise_distributed(cfg: TrainConfig, p: str) -> None:
    """Resolve `deepspeed` to a dict and `fsdp` strings to fsdp + fsdp_config."""
    if cfg.deepspeed is not None and cfg.fsdp:
        raise ConfigError(p + "fsdp", "deepspeed and fsdp are both set; choose one")
    if cfg.deepspeed is not None:
        cfg.deepspeed_config = load_deepspeed(cfg.deepspeed, p + "deepspeed")
    if isinstance(cfg.fsdp_config, str):
        cfg.fsdp_config = load_json(cfg.fsdp_config, p + "fsdp_config")
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


_LORA_KEYS = (
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "lora_target",
    "additional_target",
    "use_rslora",
    "use_dora",
)
_FREEZE_KEYS = ("freeze_trainable_layers", "freeze_trainable_modules", "freeze_extra_modules")
_PREF_KEYS = ("pref_beta", "pref_ftx")
_DPO_KEYS = ("pref_loss", "simpo_gamma", "dpo_label_smoothing")
_KTO_KEYS = ("kto_chosen_weight", "kto_rejected_weight")
_SFT_LOSS_KEYS = (*SFT_LOSS_FLAGS, "asft_alpha", "eaft_alpha")


def _note_ignored(cfg: TrainConfig, given: set[str], p: str) -> None:
    """Keys that do not apply to the chosen method are harmless: say so once, do not fail."""
    groups = [
        (_LORA_KEYS, cfg.finetuning_type == "lora", f"finetuning_type is {cfg.finetuning_type}"),
        (_FREEZE_KEYS, cfg.finetuning_type == "freeze", f"finetuning_type is {cfg.finetuning_type}"),
        (_PREF_KEYS, cfg.stage in ("dpo", "kto"), f"stage is {cfg.stage}"),
        (_DPO_KEYS, cfg.stage == "dpo", f"stage is {cfg.stage}"),
        (_KTO_KEYS, cfg.stage == "kto", f"stage is {cfg.stage}"),
        (_SFT_LOSS_KEYS, cfg.stage == "sft", f"stage is {cfg.stage}"),
        (("ref_model",), uses_reference(cfg), _no_reference_why(cfg)),
    ]
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
