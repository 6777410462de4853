"""Rules for quantised LoRA (QLoRA): the bits, methods, fine-tuning types and strategies that
`quantization_bit` combines with. Torch-free; `check_quantization` runs when the config is parsed,
`quantization_problems` at train start on each node (installed packages, a pre-quantised model).

They follow LLaMA-Factory 0.9.5 (hparams/parser.py `_verify_model_args`, model_utils/quantization.py
`configure_quantization`) and what was measured here with 2 gloo ranks on CPU
(tests/runtime/test_qlora.py; docs/runtime.md, "Quantised LoRA").
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from runtime.config.schema import ConfigError, TrainConfig

# On-the-fly methods: name -> (bits it quantises to, module it needs, how to install it).
ON_THE_FLY = {
    "bnb": ((4, 8), "bitsandbytes", "pip install bitsandbytes"),
    "hqq": ((1, 2, 3, 4, 5, 6, 8), "hqq", "pip install hqq"),
    "eetq": ((8,), "eetq", "pip install eetq"),
}
ALIASES = {"bitsandbytes": "bnb"}  # transformers' name for bnb
# Methods of a checkpoint quantised beforehand (its config.json has a quantization_config): the module
# transformers loads it with, and how to install it (LLaMA-Factory's check_version lines).
PRE_QUANTISED = {
    "gptq": ("gptqmodel", "pip install gptqmodel optimum"),
    "awq": ("awq", "pip install autoawq"),
    "aqlm": ("aqlm", "pip install aqlm"),
}
QUANT_KEYS = ("quantization_method", "quantization_type", "double_quantization")


def check_quantization(cfg: TrainConfig, p: str) -> None:
    """What LLaMA-Factory refuses with quantization_bit, and what does not work here (measured)."""
    if cfg.quantization_method in ALIASES:
        cfg.quantization_method = ALIASES[cfg.quantization_method]
    if cfg.quantization_bit is None:
        return  # the other quantisation keys are noted as ignored (rules._note_ignored)
    method, bits, key = cfg.quantization_method, cfg.quantization_bit, p + "quantization_bit"
    if method in PRE_QUANTISED:
        raise ConfigError(
            p + "quantization_method",
            f"{method} is not an on-the-fly method: give a {method.upper()} checkpoint as model_name_or_path "
            "and drop quantization_bit, or use bnb",
        )
    if method not in ON_THE_FLY:
        raise ConfigError(
            p + "quantization_method", f"must be one of {', '.join(ON_THE_FLY)} (on the fly); got {method!r}"
        )
    allowed = ON_THE_FLY[method][0]
    if bits not in allowed:
        raise ConfigError(key, f"{method} quantises to {' or '.join(map(str, allowed))} bits; got {bits}")
    if cfg.finetuning_type not in ("lora", "oft"):
        raise ConfigError(
            key,
            f"a quantised base trains adapters only: finetuning_type lora or oft, not {cfg.finetuning_type} "
            "(as in LLaMA-Factory); drop quantization_bit or use lora",
        )
    if cfg.pissa_init:
        raise ConfigError(
            p + "pissa_init", "PiSSA's SVD needs the unquantised weights; not with quantization_bit"
        )
    if cfg.resize_vocab:
        why = (
            " (add_tokens/add_special_tokens turn it on)" if cfg.add_tokens or cfg.add_special_tokens else ""
        )
        raise ConfigError(
            p + "resize_vocab", f"cannot resize the embeddings of a quantised model{why}; drop it"
        )
    if cfg.fp8:
        raise ConfigError(p + "fp8", "FP8 training and quantization_bit exclude each other; drop one")
    if cfg.fused_lora:
        raise ConfigError(p + "fused_lora", "quantised layers keep peft's own forward; drop fused_lora")
    _check_strategy(cfg, method, bits, key)


def _check_strategy(cfg: TrainConfig, method: str, bits: int, key: str) -> None:
    """4-bit bnb trains under DDP, FSDP2 and ZeRO-0..3; 8-bit bnb under DDP and ZeRO-0..2 (measured)."""
    stage = (cfg.deepspeed_config or {}).get("zero_optimization", {}).get("stage")
    if not (cfg.fsdp or stage == 3):
        return
    if method != "bnb":
        which = "fsdp" if cfg.fsdp else "ZeRO-3"
        raise ConfigError(
            key, f"{method} weights cannot be sharded by {which} (as in LLaMA-Factory); use DDP or ZeRO-2"
        )
    if bits == 8 and cfg.fsdp:
        # Measured: FSDP2 swaps each Int8Params for a plain sharded Parameter; the first forward fails
        # (AttributeError: 'Parameter' object has no attribute 'CB').
        raise ConfigError(
            key,
            "8-bit weights cannot be sharded by fsdp (bitsandbytes' int8 parameters fail at the first step; "
            "LLaMA-Factory refuses it too): use quantization_bit: 4, or DDP / ZeRO-2",
        )
    if bits == 8:
        # Measured: the step runs, but after the first forward every Linear8bitLt holds its whole int8
        # weight in its own state (state.CB), on every rank: ZeRO-3 saves nothing on them.
        raise ConfigError(
            key,
            "DeepSpeed ZeRO-3 does not shard 8-bit weights (bitsandbytes keeps each whole int8 weight on "
            "every rank; LLaMA-Factory refuses it too): use quantization_bit: 4, or ZeRO-2",
        )


def quantization_problems(cfg: TrainConfig, p: str = "") -> list[ConfigError]:
    """At train start, before any model loads: the on-the-fly method's package is installed on this node,
    and a model quantised beforehand (a quantization_config in its config.json) is one that can be trained
    here, with its package installed (LLaMA-Factory's rules for such models)."""
    errors = []
    if cfg.quantization_bit is not None:
        _, module, pip = ON_THE_FLY[cfg.quantization_method]
        if importlib.util.find_spec(module) is None:
            errors.append(
                ConfigError(
                    p + "quantization_method",
                    f"{cfg.quantization_method} needs the {module} package, not installed here: {pip}",
                )
            )
    method = pre_quantised_method(cfg.model_name_or_path)
    if method is None:
        return errors
    key = p + "model_name_or_path"
    if method not in PRE_QUANTISED:
        errors.append(
            ConfigError(key, f"a {method}-quantised checkpoint is not supported; give the unquantised model")
        )
        return errors
    module, pip = PRE_QUANTISED[method]
    if importlib.util.find_spec(module) is None:
        errors.append(ConfigError(key, f"a {method.upper()} model needs the {module} package: {pip}"))
    if cfg.finetuning_type not in ("lora", "oft"):
        errors.append(
            ConfigError(key, f"a {method.upper()} model trains adapters only: finetuning_type lora or oft")
        )
    stage = (cfg.deepspeed_config or {}).get("zero_optimization", {}).get("stage")
    if cfg.fsdp or stage == 3:
        errors.append(
            ConfigError(
                key, f"a {method.upper()} model cannot be sharded by FSDP or ZeRO-3 (as in LLaMA-Factory)"
            )
        )
    if cfg.quantization_bit is not None:
        errors.append(
            ConfigError(p + "quantization_bit", f"the model is already quantised ({method}); drop it")
        )
    return errors


def pre_quantised_method(model_dir: str) -> str | None:
    """The quant_method of a local model whose config.json has a quantization_config, else None."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    quant = config.get("quantization_config") if isinstance(config, dict) else None
    return str(quant.get("quant_method", "unknown")).lower() if isinstance(quant, dict) else None
