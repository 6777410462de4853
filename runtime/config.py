"""Training arguments with LLaMA-Factory's key names. Torch-free: the generator imports it.

`parse_train_config` is the one gate every config passes: unknown keys, wrong types, bad
choices and contradictions become a `ConfigError(key, message)` before anything heavy is
imported. Keys that transformers 5.x removed (``warmup_ratio``, ``evaluation_strategy``,
``no_cuda`` …) are translated, and each translation is recorded in ``TrainConfig.notes`` so
the runtime can say what it did in one line.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.zero import NAMED_STAGES, zero_config


class ConfigError(ValueError):
    """One bad key: rendered as `<key>: <message>` (the CLI prefixes `xgen-runtime: error: `)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


STAGES = ("pt", "sft", "rm", "dpo")
FINETUNING_TYPES = ("full", "freeze", "lora")
FLASH_ATTN = ("auto", "sdpa", "fa2", "eager", "flex")
PERF_MODES = ("auto", "off")
PREF_LOSSES = ("sigmoid",)
STRATEGIES = ("no", "steps", "epoch")
LR_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
)
# Optimizers transformers 5.x knows; bitsandbytes/galore ones also need their packages.
OPTIMIZERS = (
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_torch_npu_fused",
    "adafactor",
    "adamw_anyprecision",
    "adamw_torch_4bit",
    "adamw_torch_8bit",
    "ademamix",
    "sgd",
    "adagrad",
    "adamw_bnb_8bit",
    "adamw_8bit",
    "paged_adamw_32bit",
    "paged_adamw_8bit",
    "lion_8bit",
    "lion_32bit",
    "rmsprop",
    "galore_adamw",
    "galore_adamw_8bit",
    "galore_adafactor",
    "lomo",
    "adalomo",
    "grokadamw",
    "schedule_free_adamw",
    "schedule_free_sgd",
    "apollo_adamw",
    "stable_adamw",
)
_UNSUPPORTED_STAGES = {"ppo": "PPO", "kto": "KTO"}


def _f(default: Any, doc: str, *, choices: tuple[str, ...] | None = None) -> Any:
    """A config field: default, one-line doc (shown by docs/runtime.md), optional choices."""
    meta = {"doc": doc, "choices": choices}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every `train:` key. Names, meanings and defaults follow LLaMA-Factory / HF TrainingArguments."""

    # --- model ---
    model_name_or_path: str = _f("", "Hugging Face model directory (or hub id, offline cache only).")
    adapter_name_or_path: str | None = _f(
        None, "LoRA adapter to continue training from, or to merge on export."
    )
    cache_dir: str | None = _f(None, "Cache folder for datasets (and hub files); default: the HF cache.")
    trust_remote_code: bool = _f(False, "Allow model/tokenizer code shipped with the checkpoint.")
    flash_attn: str = _f(
        "auto",
        "Attention: auto|sdpa|fa2|eager|flex (disabled = eager); missing ones fall back.",
        choices=FLASH_ATTN,
    )
    perf: str = _f(
        "auto",
        "auto: keys you did not set get the device's throughput defaults (runtime/perf.py); off: none.",
        choices=PERF_MODES,
    )
    # --- method ---
    stage: str = _f("sft", "pt (raw text) | sft | rm (reward model) | dpo.", choices=STAGES)
    finetuning_type: str = _f(
        "lora", "full | freeze (last layers/named modules) | lora.", choices=FINETUNING_TYPES
    )
    do_train: bool = _f(True, "Train (false with do_eval: evaluate only).")
    do_eval: bool | None = _f(None, "Evaluate at the end; default: when there is eval data.")
    lora_rank: int = _f(8, "LoRA rank r.")
    lora_alpha: int | None = _f(None, "LoRA alpha; default 2 * lora_rank.")
    lora_dropout: float = _f(0.0, "LoRA dropout.")
    lora_target: str = _f("all", "Comma list of module names, or `all` = every linear layer but the head.")
    additional_target: str | None = _f(None, "Comma list of extra modules trained in full and saved (LoRA).")
    use_rslora: bool = _f(False, "Rank-stabilised LoRA scaling.")
    use_dora: bool = _f(False, "Weight-decomposed LoRA (DoRA).")
    freeze_trainable_layers: int = _f(2, "Freeze: train the last N layers (negative: the first N).")
    freeze_trainable_modules: str = _f(
        "all", "Freeze: modules inside those layers to train (`all`, or names)."
    )
    freeze_extra_modules: str | None = _f(
        None, "Freeze: extra modules outside the layers to train (embed_tokens…)."
    )
    pref_beta: float = _f(0.1, "DPO beta (strength of the KL anchor to the reference).")
    pref_loss: str = _f("sigmoid", "DPO loss; sigmoid only.", choices=PREF_LOSSES)
    pref_ftx: float = _f(0.0, "DPO: weight of an added SFT loss on the chosen response.")
    ref_model: str | None = _f(None, "DPO: separate reference model dir (default: the initial policy).")
    # --- data (read by runtime.data) ---
    dataset: str | None = _f(None, "Comma list of dataset names (dataset_info.json) or file paths.")
    eval_dataset: str | None = _f(None, "Comma list of eval datasets (instead of val_size).")
    dataset_dir: str = _f("data", "Folder holding dataset_info.json and the data files.")
    template: str | None = _f(None, "Chat template name; default: the tokenizer's own chat template.")
    cutoff_len: int = _f(2048, "Max tokens per example (pt: block size).")
    max_samples: int | None = _f(None, "Use at most this many examples per dataset.")
    val_size: float = _f(0.0, "Held-out fraction (<1) or count (>=1) of the train data for eval.")
    preprocessing_num_workers: int | None = _f(
        None, "Processes for tokenisation; capped at the CPUs available."
    )
    packing: bool = _f(
        False, "pt/sft: pack examples into rows, no cross-example attention (perf auto, CUDA: on unless set)."
    )
    overwrite_cache: bool = _f(False, "Re-tokenise instead of reading the datasets cache.")
    # --- training ---
    output_dir: str = _f(
        "saves/run", "Where checkpoints and the final model go; must be shared across nodes."
    )
    overwrite_output_dir: bool = _f(False, "Start fresh: ignore checkpoints already in output_dir.")
    per_device_train_batch_size: int = _f(8, "Micro-batch per device.")
    per_device_eval_batch_size: int = _f(8, "Eval batch per device.")
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step.")
    learning_rate: float = _f(5e-5, "Peak learning rate.")
    num_train_epochs: float = _f(3.0, "Epochs (ignored when max_steps > 0).")
    max_steps: int = _f(-1, "Optimizer steps; > 0 overrides num_train_epochs.")
    lr_scheduler_type: str = _f("linear", "LR schedule.", choices=LR_SCHEDULERS)
    warmup_steps: float = _f(0.0, "Warmup steps; a value below 1 is a ratio of the total (warmup_ratio).")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 disables).")
    optim: str = _f(
        "adamw_torch",
        "Optimizer (transformers OptimizerNames); perf auto on CUDA/NPU: fused AdamW unless set.",
        choices=OPTIMIZERS,
    )
    adam_beta1: float = _f(0.9, "Adam beta1.")
    adam_beta2: float = _f(0.999, "Adam beta2.")
    adam_epsilon: float = _f(1e-8, "Adam epsilon.")
    bf16: bool = _f(False, "bfloat16 mixed precision.")
    fp16: bool = _f(False, "float16 mixed precision (falls back to fp32 on CPU, with a warning).")
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward to save memory.")
    enable_liger_kernel: bool = _f(
        False,
        "Liger kernels: fused linear+CE, RMSNorm, SwiGLU, RoPE (perf auto, CUDA: on if installed+unset).",
    )
    torch_compile: bool = _f(False, "torch.compile the model (off: compile time and recompiles unmeasured).")
    seed: int = _f(42, "Seed for init, data order and dropout; all ranks share it.")
    logging_steps: int = _f(10, "Log every N optimizer steps.")
    save_strategy: str = _f("steps", "When to checkpoint: no|steps|epoch.", choices=STRATEGIES)
    save_steps: int = _f(500, "Checkpoint every N steps.")
    save_total_limit: int | None = _f(None, "Keep only the newest N complete checkpoints.")
    save_only_model: bool = _f(False, "Checkpoints without optimizer state (cannot resume exactly).")
    eval_strategy: str = _f("no", "When to evaluate: no|steps|epoch.", choices=STRATEGIES)
    eval_steps: int | None = _f(None, "Evaluate every N steps (default: logging_steps).")
    resume_from_checkpoint: bool | str | None = _f(
        "auto", "auto|null: newest complete checkpoint if any; true: it must exist; false; or a path."
    )
    report_to: str | list = _f("none", "none | tensorboard | wandb | … (comma list or YAML list).")
    run_name: str | None = _f(None, "Run name for loggers.")
    plot_loss: bool = _f(True, "Write training_loss.png (and eval loss) in output_dir.")
    dataloader_num_workers: int = _f(0, "DataLoader worker processes per rank.")
    ddp_timeout: int = _f(
        7200, "Seconds a collective may wait (generous: rank 0 tokenises while others wait)."
    )
    use_cpu: bool = _f(False, "Force CPU even when an accelerator is present.")
    # --- distributed ---
    deepspeed: str | dict | None = _f(
        None, "Named ZeRO stage (z0…z3_offload), a DeepSpeed JSON path, or a dict."
    )
    fsdp: bool | str = _f(
        False, "FSDP2 full shard: true, or LLaMA-Factory strings like `full_shard auto_wrap`."
    )
    fsdp_config: dict | str | None = _f(None, "FSDP plugin options (dict or JSON path), e.g. cpu_offload.")
    # --- export ---
    export_dir: str | None = _f(None, "export: where the merged standalone model goes.")
    export_size: int = _f(5, "export: max shard size in GB.")
    export_legacy_format: bool = _f(False, "export: accepted for LLaMA-Factory configs; safetensors always.")

    # Not keys: filled by parse_train_config.
    notes: list[str] = field(default_factory=list, metadata={"internal": True})
    # Keys the config wrote (after renames): runtime.perf never overrides these.
    explicit: frozenset[str] = field(default_factory=frozenset, metadata={"internal": True})
    deepspeed_config: dict | None = field(default=None, metadata={"internal": True})

    @property
    def strategy(self) -> str:
        """ddp | fsdp | deepspeed-zN (single is decided at run time from the world size)."""
        if self.deepspeed_config is not None:
            stage = self.deepspeed_config.get("zero_optimization", {}).get("stage", 0)
            return f"deepspeed-z{stage}"
        return "fsdp" if self.fsdp else "ddp"


# Keys transformers 5.x removed or LLaMA-Factory spells differently: old -> (new, how).
_RENAMED = {
    "evaluation_strategy": "eval_strategy",
    "neat_packing": "packing",
    "no_cuda": "use_cpu",
    "use_liger_kernel": "enable_liger_kernel",
}
# Accepted for compatibility, with no effect here; the note says why.
_IGNORED = {
    "logging_dir": "transformers 5.x removed it; loggers use output_dir",
    "save_safetensors": "weights are always saved as safetensors",
    "group_by_length": "not supported by transformers 5.x for these stages",
    "ddp_find_unused_parameters": "xgen-runtime always sets false (LoRA/freeze included)",
    "disable_tqdm": "xgen-runtime draws its own progress",
    "include_num_input_tokens_seen": "train_results.json always reports effective tokens",
    "enable_thinking": "chat formatting uses the template as is",
    "log_level": "rank 0 logs, others stay quiet",
    "export_device": "export merges on CPU",
}


def _fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(TrainConfig) if not f.metadata.get("internal")}


_HINTS = typing.get_type_hints(TrainConfig)


def _allowed_types(name: str) -> tuple[type, ...]:
    hint = _HINTS[name]
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) else ()
    members = args or (hint,)
    return tuple(type(None) if m is type(None) else (typing.get_origin(m) or m) for m in members)


def _coerce(key: str, name: str, value: Any) -> Any:
    """Check one value's type; accept ints for floats and YAML's `1e-4` strings for floats."""
    allowed = _allowed_types(name)
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(key, f"must not be null (expected {_type_names(allowed)})")
    if isinstance(value, bool):
        if bool in allowed:
            return value
        raise ConfigError(key, f"expected {_type_names(allowed)}, got {value!r}")
    if isinstance(value, int) and int not in allowed and float in allowed:
        return float(value)
    if isinstance(value, str) and str not in allowed and float in allowed:
        try:
            return float(value)  # PyYAML reads `1e-4` (no dot) as a string
        except ValueError:
            pass
    if isinstance(value, float) and float not in allowed and int in allowed and value.is_integer():
        return int(value)
    if isinstance(value, tuple(t for t in allowed if t is not type(None))):
        return value
    raise ConfigError(key, f"expected {_type_names(allowed)}, got {type(value).__name__} {value!r}")


def _type_names(allowed: tuple[type, ...]) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}
    return " or ".join(names.get(t, t.__name__) for t in allowed if t is not type(None))


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _translate(raw: dict[str, Any], key_prefix: str, notes: list[str]) -> dict[str, Any]:
    """Map removed/renamed keys onto current ones before validation."""
    out = dict(raw)
    for old, new in _RENAMED.items():
        if old in out:
            value = out.pop(old)
            if new in out and out[new] != value:
                raise ConfigError(key_prefix + old, f"conflicts with {new!r}; give only {new!r}")
            out[new] = value
            notes.append(f"{key_prefix}{old} is read as {new}")
    if "warmup_ratio" in out:
        ratio = out.pop("warmup_ratio")
        if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0 <= ratio < 1:
            raise ConfigError(key_prefix + "warmup_ratio", f"expected a ratio in [0, 1), got {ratio!r}")
        if out.get("warmup_steps") not in (None, 0):
            raise ConfigError(key_prefix + "warmup_ratio", "give warmup_ratio or warmup_steps, not both")
        out["warmup_steps"] = float(ratio)
        notes.append(f"{key_prefix}warmup_ratio {ratio} is passed as warmup_steps (a value < 1 is a ratio)")
    for key in ("fsdp_transformer_layer_cls_to_wrap", "fsdp_min_num_params"):
        if key in out:
            value = out.pop(key)
            config = out.get("fsdp_config") or {}
            if not isinstance(config, dict):
                raise ConfigError(key_prefix + key, "move it into fsdp_config (fsdp_config is a path here)")
            out["fsdp_config"] = {**config, key.removeprefix("fsdp_"): value}
            notes.append(f"{key_prefix}{key} is moved into fsdp_config")
    for key, why in _IGNORED.items():
        if key in out:
            out.pop(key)
            notes.append(f"{key_prefix}{key} accepted and ignored: {why}")
    return out


def parse_train_config(mapping: Mapping[str, Any], *, key_prefix: str = "") -> TrainConfig:
    """Validate a `train:` mapping (or a flat LLaMA-Factory YAML) into a TrainConfig.

    Raises ConfigError naming the key as `key_prefix + key` (the generator passes "train.").
    Touches the file system only to read a `deepspeed`/`fsdp_config` JSON path.
    """
    if not isinstance(mapping, Mapping):
        raise ConfigError(key_prefix.rstrip(".") or "config", "expected a mapping of keys to values")
    notes: list[str] = []
    raw = _translate({str(k): v for k, v in mapping.items()}, key_prefix, notes)
    known = _fields()
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            if key in _UNSUPPORTED_STAGE_KEYS:
                raise ConfigError(key_prefix + key, _UNSUPPORTED_STAGE_KEYS[key])
            raise ConfigError(key_prefix + key, "unknown key" + _suggest(key, list(known)))
        values[key] = _coerce(key_prefix + key, key, value)
    cfg = TrainConfig(**values)
    cfg.notes = notes
    cfg.explicit = frozenset(values)
    _normalise(cfg, set(values), key_prefix)
    return cfg


_UNSUPPORTED_STAGE_KEYS = {
    "do_predict": "not supported by xgen-runtime (generate with vLLM or transformers)",
    "streaming": "streaming datasets are not supported; use local files",
    "quantization_bit": "QLoRA/quantised training is not supported",
}


def _normalise(cfg: TrainConfig, given: set[str], p: str) -> None:
    """Choices, ranges, contradictions and derived values, in the order a user would fix them."""
    if cfg.flash_attn == "disabled":
        cfg.flash_attn = "eager"
    if cfg.stage in _UNSUPPORTED_STAGES:
        raise ConfigError(
            p + "stage", f"{_UNSUPPORTED_STAGES[cfg.stage]} is not supported; use one of {STAGES}"
        )
    for name, spec in _fields().items():
        choices = spec.metadata.get("choices")
        value = getattr(cfg, name)
        if choices and value not in choices:
            raise ConfigError(
                p + name,
                f"must be one of {', '.join(choices)}; got {value!r}" + _suggest(str(value), list(choices)),
            )
    if not cfg.model_name_or_path:
        raise ConfigError(p + "model_name_or_path", "required (a model directory)")
    if cfg.do_train and not cfg.dataset and cfg.export_dir is None:
        raise ConfigError(p + "dataset", "required for training (names in dataset_info.json or file paths)")
    _check_ranges(cfg, p)
    if cfg.bf16 and cfg.fp16:
        raise ConfigError(p + "fp16", "bf16 and fp16 are both true; choose one")
    if cfg.packing and cfg.stage in ("rm", "dpo"):
        raise ConfigError(p + "packing", f"only pt and sft pack examples; stage is {cfg.stage}")
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


def _normalise_distributed(cfg: TrainConfig, p: str) -> None:
    """Resolve `deepspeed` to a dict and `fsdp` strings to fsdp + fsdp_config."""
    if cfg.deepspeed is not None and cfg.fsdp:
        raise ConfigError(p + "fsdp", "deepspeed and fsdp are both set; choose one")
    if cfg.deepspeed is not None:
        cfg.deepspeed_config = _load_deepspeed(cfg.deepspeed, p + "deepspeed")
    if isinstance(cfg.fsdp_config, str):
        cfg.fsdp_config = _load_json(cfg.fsdp_config, p + "fsdp_config")
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


def _load_deepspeed(value: str | dict, key: str) -> dict:
    if isinstance(value, dict):
        return dict(value)
    if value in NAMED_STAGES:
        return zero_config(value)
    if not value.endswith(".json") and os.sep not in value and not os.path.exists(value):
        raise ConfigError(
            key, f"{value!r} is neither a named stage ({', '.join(NAMED_STAGES)}) nor a JSON path"
        )
    return _load_json(value, key)


def _load_json(path: str, key: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(key, f"file not found: {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(key, f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(key, f"{path} must hold a JSON object")
    return data


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
_DPO_KEYS = ("pref_beta", "pref_loss", "pref_ftx", "ref_model")


def _note_ignored(cfg: TrainConfig, given: set[str], p: str) -> None:
    """Keys that do not apply to the chosen method are harmless: say so once, do not fail."""
    groups = [
        (_LORA_KEYS, cfg.finetuning_type == "lora", f"finetuning_type is {cfg.finetuning_type}"),
        (_FREEZE_KEYS, cfg.finetuning_type == "freeze", f"finetuning_type is {cfg.finetuning_type}"),
        (_DPO_KEYS, cfg.stage == "dpo", f"stage is {cfg.stage}"),
    ]
    for keys, applies, why in groups:
        unused = [k for k in keys if k in given and not applies]
        if unused:
            cfg.notes.append(f"{', '.join(p + k for k in unused)} ignored: {why}")


def load_config(path: str | os.PathLike[str]) -> TrainConfig:
    """Read an xgen YAML (its `train:` section) or a flat LLaMA-Factory YAML."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError("config", f"file not found: {path}") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError("config", f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("config", f"{path} must be a YAML mapping")
    if "train" in data:
        if not isinstance(data["train"], dict):
            raise ConfigError("train", "must be a mapping of training keys")
        cfg = parse_train_config(data["train"], key_prefix="train.")
    else:
        cfg = parse_train_config(data)
    _absolutize_local_models(cfg)
    return cfg


def _absolutize_local_models(cfg: TrainConfig) -> None:
    """Local model paths become absolute: a saved adapter records its base model's path
    (adapter_config.json), and a relative one would only load from the directory training ran in."""
    for key in ("model_name_or_path", "adapter_name_or_path"):
        value = getattr(cfg, key, None)
        if isinstance(value, str) and value and Path(value).exists():
            setattr(cfg, key, str(Path(value).resolve()))
