"""`parse_train_config`, the one gate every `train:` mapping passes, and `load_config` for files."""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Mapping
from typing import Any

from runtime.config.files import absolutize_local_models, read_yaml
from runtime.config.rules import normalise
from runtime.config.schema import ConfigError, TrainConfig, train_fields
from runtime.config.suggest import suggest
from runtime.config.translate import translate_keys

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


def parse_train_config(mapping: Mapping[str, Any], *, key_prefix: str = "") -> TrainConfig:
    """Validate a `train:` mapping (or a flat LLaMA-Factory YAML) into a TrainConfig.

    Raises ConfigError naming the key as `key_prefix + key` (the generator passes "train.").
    Touches the file system only to read a `deepspeed`/`fsdp_config` JSON path.
    """
    if not isinstance(mapping, Mapping):
        raise ConfigError(key_prefix.rstrip(".") or "config", "expected a mapping of keys to values")
    notes: list[str] = []
    raw = translate_keys({str(k): v for k, v in mapping.items()}, key_prefix, notes)
    known = train_fields()
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            if key in _UNSUPPORTED_STAGE_KEYS:
                raise ConfigError(key_prefix + key, _UNSUPPORTED_STAGE_KEYS[key])
            raise ConfigError(key_prefix + key, "unknown key" + suggest(key, list(known)))
        values[key] = _coerce(key_prefix + key, key, value)
    cfg = TrainConfig(**values)
    cfg.notes = notes
    cfg.explicit = frozenset(values)
    normalise(cfg, set(values), key_prefix)
    return cfg


_UNSUPPORTED_STAGE_KEYS = {
    "do_predict": "not supported by xgen-runtime (generate with vLLM or transformers)",
    "quantization_bit": "QLoRA/quantised training is not supported",
}


def load_config(path: str | os.PathLike[str]) -> TrainConfig:
    """Read an xgen YAML (its `train:` section) or a flat LLaMA-Factory YAML."""
    data = read_yaml(path)
    if "train" in data:
        if not isinstance(data["train"], dict):
            raise ConfigError("train", "must be a mapping of training keys")
        cfg = parse_train_config(data["train"], key_prefix="train.")
    else:
        cfg = parse_train_config(data)
    absolutize_local_models(cfg)
    return cfg
