"""Rules for the adapter and optimizer methods (LoRA variants, OFT, LLaMA-Pro, GaLore, APOLLO, BAdam,
Adam-mini, Muon): which fine-tuning types and strategies each one works with.

They follow LLaMA-Factory's hparams checks (finetuning_args.py, parser.py) and add the combinations
it lets through but that cannot give the method's result: an optimizer that looks at whole weight
matrices (GaLore/APOLLO's projections, Muon's orthogonalisation) sees only a flat shard under
DeepSpeed ZeRO or FSDP. Torch-free; the checks that need the world size or installed packages run
at train start (runtime/fit/optimizers.py).
"""

from __future__ import annotations

from runtime.config.schema import ConfigError, TrainConfig

# key -> (pip extra, import name) for the methods that need a package of their own.
METHOD_PACKAGES = {
    "use_galore": ("galore", "galore_torch"),
    "use_apollo": ("apollo", "apollo_torch"),
    "use_badam": ("badam", "badam"),
    "use_adam_mini": ("adam-mini", "adam_mini"),
}
_OPTIMIZER_KEYS = ("use_galore", "use_apollo", "use_badam", "use_adam_mini", "use_muon")
_LORA_ONLY = ("loraplus_lr_ratio", "use_rslora", "use_dora", "pissa_init")


def _chosen_optimizers(cfg: TrainConfig) -> list[str]:
    chosen = [k for k in _OPTIMIZER_KEYS if getattr(cfg, k)]
    if cfg.loraplus_lr_ratio is not None:
        chosen.append("loraplus_lr_ratio")
    return chosen


def custom_optimizer(cfg: TrainConfig) -> str | None:
    """The key of the one custom optimizer asked for (loraplus_lr_ratio counts), or None."""
    chosen = _chosen_optimizers(cfg)
    return chosen[0] if chosen else None


def check_methods(cfg: TrainConfig, p: str) -> None:
    """Refuse a method with a fine-tuning type, stage or strategy it cannot train with."""
    _check_adapter_keys(cfg, p)
    chosen = _chosen_optimizers(cfg)
    if len(chosen) > 1:
        raise ConfigError(p + chosen[1], f"{' and '.join(chosen)} each choose the optimizer; keep one")
    if not chosen:
        return
    key = chosen[0]
    low_rank_or_block = key in ("use_galore", "use_apollo", "use_badam")
    if low_rank_or_block and cfg.finetuning_type in ("lora", "oft"):
        raise ConfigError(
            p + key,
            f"trains full weights; not with finetuning_type {cfg.finetuning_type} (use full or freeze)",
        )
    for name in ("galore_layerwise", "apollo_layerwise"):
        if (
            getattr(cfg, name)
            and getattr(cfg, "use_" + name.split("_")[0])
            and cfg.gradient_accumulation_steps != 1
        ):
            raise ConfigError(
                p + name,
                "steps each weight inside backward: set gradient_accumulation_steps: 1 (or layerwise false)",
            )
    ds = cfg.deepspeed_config
    if ds is not None and "optimizer" in ds:
        raise ConfigError(
            p + "deepspeed",
            f"its JSON has an `optimizer` block, which would replace {key}; remove that block",
        )
    if key in ("use_galore", "use_apollo", "use_muon") and (ds is not None or cfg.fsdp):
        what = "DeepSpeed" if ds is not None else "FSDP"
        raise ConfigError(
            p + key,
            f"works on whole weight matrices, which {what} hands the optimizer in shards; "
            "use DDP (no deepspeed/fsdp)",
        )
    if key == "use_adam_mini" and ds is not None:
        # Measured: under ZeRO-2 DeepSpeed hands Adam-mini flat partitions, its name-based blocks
        # are gone and its first step fails (IndexError in adam_mini.step).
        raise ConfigError(
            p + key, "DeepSpeed hands it flat partitions without parameter names; use DDP or fsdp: true"
        )
    if key == "use_badam" and (ds is not None or cfg.fsdp):
        # LLaMA-Factory allows layer mode under ZeRO-3. Measured here (2 CPU ranks, fp32): once BAdam
        # switches blocks the ZeRO-3 run loses an update and ends 1.3e-3..2.0e-3 from the one-process
        # run (with or without badam's BAdamCallback); without a switch it matches to 2.6e-7.
        raise ConfigError(
            p + key,
            "runs in one process only here (under ZeRO-3 a block switch loses updates, measured); "
            "remove deepspeed/fsdp",
        )
    if cfg.loraplus_lr_ratio is not None and cfg.loraplus_lr_ratio <= 0:
        raise ConfigError(p + key, f"must be > 0; got {cfg.loraplus_lr_ratio}")


def _check_adapter_keys(cfg: TrainConfig, p: str) -> None:
    if cfg.finetuning_type != "lora":
        for key in _LORA_ONLY:
            value = getattr(cfg, key)
            if value not in (None, False):
                raise ConfigError(p + key, f"only valid for finetuning_type lora; got {cfg.finetuning_type}")
    if cfg.use_llama_pro and cfg.finetuning_type not in ("freeze", "lora"):
        raise ConfigError(
            p + "use_llama_pro", f"only valid for finetuning_type freeze or lora; got {cfg.finetuning_type}"
        )
    if cfg.use_llama_pro and cfg.freeze_trainable_layers <= 0:
        raise ConfigError(
            p + "freeze_trainable_layers", "with use_llama_pro it is the number of expanded blocks (> 0)"
        )
    if cfg.pissa_init:
        uses_reference = cfg.stage == "kto" or (cfg.stage == "dpo" and cfg.pref_loss not in ("orpo", "simpo"))
        if uses_reference:
            raise ConfigError(
                p + "pissa_init",
                "PiSSA rewrites the base weights, so the adapter-disabled model is no reference "
                f"for {cfg.stage}",
            )
        if (cfg.deepspeed_config or {}).get("zero_optimization", {}).get("stage") == 3:
            raise ConfigError(
                p + "pissa_init", "needs the full weights for its SVD; not with ZeRO-3 (use z2 or fsdp)"
            )
        if cfg.adapter_name_or_path:
            raise ConfigError(
                p + "pissa_init",
                "initialises a new adapter; adapter_name_or_path continues one: give one of them",
            )
        if cfg.pissa_iter < -1 or cfg.pissa_iter == 0:
            raise ConfigError(
                p + "pissa_iter", f"fast-SVD steps > 0, or -1 for exact SVD; got {cfg.pissa_iter}"
            )
    if cfg.pissa_convert and not cfg.pissa_init:
        raise ConfigError(p + "pissa_convert", "converts a PiSSA adapter; set pissa_init: true too")
    if cfg.pissa_convert and cfg.fsdp:
        # rank 0 saves the initial and converted adapters from its own copy; FSDP holds only shards.
        raise ConfigError(
            p + "pissa_convert", "needs whole adapter weights on rank 0; not with fsdp (use DDP or z2)"
        )
    if cfg.finetuning_type == "oft":
        if (cfg.oft_rank > 0) == (cfg.oft_block_size > 0) or min(cfg.oft_rank, cfg.oft_block_size) < 0:
            raise ConfigError(
                p + "oft_block_size",
                "set exactly one of oft_rank and oft_block_size > 0 (the other 0); "
                f"got {cfg.oft_rank} and {cfg.oft_block_size}",
            )
        if not 0 <= cfg.module_dropout < 1:
            raise ConfigError(p + "module_dropout", f"must be in [0, 1); got {cfg.module_dropout}")
