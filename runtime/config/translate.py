"""LLaMA-Factory and transformers-4 key names onto the current ones: renamed keys, `warmup_ratio`,
FSDP keys moved into `fsdp_config`, and keys accepted with no effect. Every translation adds a note."""

from __future__ import annotations

from typing import Any

from runtime.config.schema import ConfigError

# Keys transformers 5.x removed or LLaMA-Factory spells differently: old -> (new, how).
_RENAMED = {
    "evaluation_strategy": "eval_strategy",
    "no_cuda": "use_cpu",
    "use_liger_kernel": "enable_liger_kernel",
    "new_special_tokens": "add_special_tokens",  # LLaMA-Factory < 0.9.4
    "activation_checkpointing": "gradient_checkpointing",  # transformers 5.x's new name
}
# Accepted for compatibility, with no effect here; the note says why.
_IGNORED = {
    "logging_dir": "transformers 5.x removed it; loggers use output_dir",
    "save_safetensors": "weights are always saved as safetensors",
    "group_by_length": "not supported by transformers 5.x for these stages",
    "ddp_find_unused_parameters": "xgen-runtime always sets false (LoRA/freeze included)",
    "disable_tqdm": "xgen-runtime draws its own progress",
    "include_num_input_tokens_seen": "train_results.json always reports effective tokens",
    "log_level": "rank 0 logs, others stay quiet",
}


def translate_keys(raw: dict[str, Any], key_prefix: str, notes: list[str]) -> dict[str, Any]:
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
