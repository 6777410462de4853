"""Reading the files a config names: the YAML itself and DeepSpeed / FSDP JSON files."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from runtime.config.schema import ConfigError, TrainConfig
from runtime.contract.zero import NAMED_STAGES, zero_config


def resolve(path: str, base_dir: str | os.PathLike[str] | None) -> str:
    """A relative path as seen from `base_dir` (the generator passes job.workdir); unchanged without one,
    so the runtime, which runs in the workdir, reads it relative to its working directory."""
    if base_dir is None or os.path.isabs(path):
        return path
    return os.path.join(base_dir, path)


def load_deepspeed(value: str | dict, key: str, base_dir: str | os.PathLike[str] | None = None) -> dict:
    if isinstance(value, dict):
        return dict(value)
    if value in NAMED_STAGES:
        return zero_config(value)
    if re.fullmatch(r"z\d[\w-]*", value):  # a mistyped name, not a file
        raise ConfigError(key, f"unknown ZeRO stage {value!r}; choose one of {', '.join(NAMED_STAGES)}")
    if not value.endswith(".json") and os.sep not in value and not os.path.exists(resolve(value, base_dir)):
        raise ConfigError(
            key, f"{value!r} is neither a named stage ({', '.join(NAMED_STAGES)}) nor a JSON path"
        )
    return load_json(value, key, base_dir)


# LLaMA-Factory's examples/deepspeed/ds_z3_offload_config.json and its siblings, by stage name.
_LF_DEEPSPEED_FILE = re.compile(r"ds_(z\d(?:_offload)?)_config\.json")


def lf_named_stage(path: str) -> str | None:
    """The named stage LLaMA-Factory's examples/deepspeed file of this name stands for (z3 for
    ds_z3_config.json), else None."""
    match = _LF_DEEPSPEED_FILE.fullmatch(os.path.basename(path))
    return match.group(1) if match and match.group(1) in NAMED_STAGES else None


def named_stage_hint(path: str) -> str:
    """What a named stage could replace: the one LLaMA-Factory's file of that name stands for."""
    match = _LF_DEEPSPEED_FILE.fullmatch(os.path.basename(path))
    if match and match.group(1) in NAMED_STAGES:
        return (
            f"LLaMA-Factory's {match.group(0)} is the named stage `deepspeed: {match.group(1)}` here, "
            "which needs no file"
        )
    return (
        f"or name a stage, which needs no file ({', '.join(NAMED_STAGES)} stand for LLaMA-Factory's "
        "examples/deepspeed/ds_z*_config.json)"
    )


def unseen_json(value: str | dict, base_dir: str | os.PathLike[str] | None) -> str | None:
    """For a JSON path whose folder is not visible from here (a login node that does not mount what the
    nodes do): why it was not read, as a note; None when it can be read here, or refused (a folder
    that is visible but lacks the file is a typo, as for datasets). Named stages are never unseen."""
    if isinstance(value, dict) or value in NAMED_STAGES or not value.endswith(".json"):
        return None
    path = resolve(value, base_dir)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.exists(path) or os.path.isdir(folder):
        return None
    return (
        f"not checked: {path} is not visible from here ({folder} is not); each node's preflight reads it; "
        + named_stage_hint(path)
    )


def load_json(path: str, key: str, base_dir: str | os.PathLike[str] | None = None) -> dict:
    path = resolve(path, base_dir)
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        lf_file = key.endswith("deepspeed") and _LF_DEEPSPEED_FILE.fullmatch(os.path.basename(path))
        hint = f"; {named_stage_hint(path)}" if lf_file else ""
        raise ConfigError(key, f"file not found: {path}{hint}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(key, f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(key, f"{path} must hold a JSON object")
    return data


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The config file as a mapping; ConfigError("config", …) when it is missing or not a mapping."""
    import yaml

    from runtime.contract import strict_yaml

    try:
        data = strict_yaml.load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError("config", f"file not found: {path}") from None
    except strict_yaml.DuplicateKeyError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise ConfigError("config", f"{path} line {line}: {exc.problem}") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError("config", f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("config", f"{path} must be a YAML mapping")
    return data


def absolutize_local_models(cfg: TrainConfig) -> None:
    """Local model paths become absolute: a saved adapter records its base model's path
    (adapter_config.json), and a relative one would only load from the directory training ran in."""
    for key in ("model_name_or_path", "adapter_name_or_path"):
        value = getattr(cfg, key, None)
        if isinstance(value, str) and value and Path(value).exists():
            setattr(cfg, key, str(Path(value).resolve()))
