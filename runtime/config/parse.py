"""`parse_train_config`, the one gate every `train:` mapping passes, and `load_config` for files."""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Mapping
from typing import Any

from runtime.config.files import absolutize_local_models, read_yaml, resolve
from runtime.config.refusals import classify
from runtime.config.rules import normalise
from runtime.config.schema import ConfigError, ConfigErrors, TrainConfig, train_fields
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
        if name == "perf":  # YAML 1.1 reads an unquoted `perf: off` as false (and `on` as true)
            return "off" if value is False else "auto"
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


def parse_train_config(
    mapping: Mapping[str, Any],
    *,
    key_prefix: str = "",
    base_dir: str | os.PathLike[str] | None = None,
    visible_only: bool = False,
) -> TrainConfig:
    """Validate a `train:` mapping (or a flat LLaMA-Factory YAML) into a TrainConfig.

    Raises ConfigError naming the key as `key_prefix + key` (the generator passes "train."); when
    several keys are unknown, refused or mistyped, one ConfigErrors listing them all.
    Keys of transformers.TrainingArguments that are not TrainConfig fields land in
    `cfg.training_args` and reach TrainingArguments unchanged (runtime/stages/recipe.py).
    Touches the file system only to read a `deepspeed`/`fsdp_config` JSON path. Relative paths
    (those JSON files, dataset_dir) are taken from `base_dir` when given: the generator passes
    job.workdir, where the runtime will run; the runtime itself passes nothing (it runs there).
    `visible_only` (the generator, `xgen-runtime check --visible-only`): a DeepSpeed JSON whose folder
    is not visible from here is noted in `cfg.notes` and left unread (deepspeed_config None), as
    datasets are; each node's check and preflight read it.
    """
    if not isinstance(mapping, Mapping):
        raise ConfigError(key_prefix.rstrip(".") or "config", "expected a mapping of keys to values")
    notes: list[str] = []
    raw = translate_keys({str(k): v for k, v in mapping.items()}, key_prefix, notes)
    known = train_fields()
    values: dict[str, Any] = {}
    passthrough: dict[str, Any] = {}
    errors: list[ConfigError] = []
    for key, value in raw.items():
        try:
            if key in known:
                values[key] = _coerce(key_prefix + key, key, value)
                continue
            verdict, why = classify(key, value, list(known))
            if verdict == "error":
                raise ConfigError(key_prefix + key, why)
            if verdict == "note":
                notes.append(f"{key_prefix}{key} {why}")
            else:
                passthrough[key] = value  # transformers.TrainingArguments validates it at run time
        except ConfigError as err:
            errors.append(err)  # every per-key problem is reported, not only the first
    if errors:
        raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
    cfg = TrainConfig(**values)
    cfg.notes = notes
    cfg.explicit = frozenset(values)
    cfg.training_args = passthrough
    base = None if base_dir is None else os.fspath(base_dir)
    normalise(cfg, set(values), key_prefix, base, visible_only)
    if base is not None:
        cfg.dataset_dir = resolve(cfg.dataset_dir, base)
        if cfg.media_dir:
            cfg.media_dir = resolve(cfg.media_dir, base)
    return cfg


# --- sweep and export jobs: train values given over the config's, by the generated script ---
# A JSON object of train keys (a sweep task's values and its output_dir; the export job's adapter and
# export_dir). JSON, not shell: the script passes one quoted string and nothing evaluates it.
OVERRIDES_ENV = "XGEN_TRAIN_OVERRIDES"


def train_overrides() -> dict[str, Any]:
    """The XGEN_TRAIN_OVERRIDES object ({} when unset)."""
    import json

    text = os.environ.get(OVERRIDES_ENV, "").strip()
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(OVERRIDES_ENV, f"not JSON ({exc}); unset it or give a JSON object") from None
    if not isinstance(data, dict):
        raise ConfigError(OVERRIDES_ENV, 'must be a JSON object of train keys, e.g. {"learning_rate": 1e-4}')
    return data


def load_config(path: str | os.PathLike[str], *, visible_only: bool = False) -> TrainConfig:
    """Read an xgen YAML (its `train:` section) or a flat LLaMA-Factory YAML, with XGEN_TRAIN_OVERRIDES
    (a sweep task's values, an export job's paths) over it."""
    data = read_yaml(path)
    overrides = train_overrides()
    if "train" in data:
        if not isinstance(data["train"], dict):
            raise ConfigError("train", "must be a mapping of training keys")
        cfg = parse_train_config(
            {**data["train"], **overrides}, key_prefix="train.", visible_only=visible_only
        )
    else:
        cfg = parse_train_config({**data, **overrides}, visible_only=visible_only)
    if overrides:
        shown = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
        cfg.notes.append(f"{OVERRIDES_ENV} (sweep task / export job) set {shown}")
    absolutize_local_models(cfg)
    return cfg
