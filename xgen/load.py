"""Reading a config file into the typed Config (xgen.config): YAML, types, then every rule (xgen.checks).

Parsing is strict: an unknown key, a wrong type or an impossible value raises XgenError naming the key
path, so the CLI can print one line and write nothing.

Two more inputs reach the same parser: a bare LLaMA-Factory training YAML (`is_bare_training`: its keys
become `train:`) and command-line flags that set config keys (`Flag`; a flag beats the file). Either way
the config that runs is the equivalent full xgen config, dumped as YAML into `Config.text`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
import shlex
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from xgen.accelerate_file import adopt_fsdp
from xgen.checks import validate
from xgen.config import SECTIONS, Config, JobConfig
from xgen.errors import XgenError

TOP_LEVEL = (
    "job",
    "cluster",
    "slurm",
    "container",
    "launcher",
    "accelerate_config",
    "sweep",
    "python",
    "train",
)

# (the option as typed, the config key it sets, its value as typed):
# `--nodes 2` is ("--nodes", "cluster.nodes", "2").
Flag = tuple[str, str, str]
# Keys whose flag value is a path: taken from the current directory (in a file: from the config's).
_PATH_FLAGS = ("job.workdir", "accelerate_config")


@functools.cache
def training_keys() -> frozenset[str]:
    """Every key a LLaMA-Factory training YAML holds at its top level: the runtime's own, LLaMA-Factory's and
    transformers.TrainingArguments' (the runtime's parser refuses, with a reason, those it does not run)."""
    from runtime.config import train_fields
    from runtime.config.hf_keys import TRAINING_ARGUMENTS
    from runtime.config.lf_keys import LF_KEYS

    return frozenset(train_fields()) | frozenset(LF_KEYS) | frozenset(TRAINING_ARGUMENTS)


def is_bare_training(raw: Any) -> bool:
    """A bare LLaMA-Factory YAML (what `llamafactory-cli train FILE` reads): none of xgen's top-level keys,
    and at least one training key. Anything else is read as an xgen config (and its unknown keys reported)."""
    if not isinstance(raw, Mapping) or any(key in TOP_LEVEL for key in raw):
        return False
    return any(key in training_keys() for key in raw)


def _no_stray_training_keys(raw: Mapping[Any, Any]) -> None:
    """An xgen config with a training key beside its sections: one line naming the key and the fix."""
    stray = [str(key) for key in raw if key not in TOP_LEVEL and key in training_keys()]
    if stray:
        more = f" (and {len(stray) - 1} more training key(s) beside it)" if len(stray) > 1 else ""
        raise XgenError(
            stray[0],
            f"a training key at the top level of an xgen config{more}: move it under train:, or drop "
            "the xgen sections to use the file as a bare LLaMA-Factory YAML (xgen slurm FILE --nodes N)",
        )


def _flag_value(option: str, key: str, text: str) -> Any:
    """A flag's text as the YAML value the key's type takes: an integer where the key takes one, a list for
    a list key (comma-separated); anything else stays the string typed, so `--partition 007` stays "007".
    The value then meets the same type check and rules as a file value (`must be an integer, got …`)."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise XgenError(key, f"{option} holds a newline or control character; pass a one-line value")
    section, _, name = key.rpartition(".")
    hint = typing.get_type_hints(SECTIONS[section] if section else Config)[name]
    options = typing.get_args(hint) or (hint,)
    if typing.get_origin(hint) is tuple:
        return [item.strip() for item in text.split(",") if item.strip()]
    if int in options and re.fullmatch(r"[+-]?\d+", text.strip()):
        return int(text)
    return text


def apply_flags(raw: Mapping[Any, Any], flags: Sequence[Flag]) -> dict[Any, Any]:
    """The config mapping with each flag's key set over the file's value (a flag beats the file)."""
    merged: dict[Any, Any] = dict(raw)
    for option, key, text in flags:
        section, _, name = key.rpartition(".")
        value = _flag_value(option, key, text)
        if not section:
            merged[name] = value
            continue
        current = merged.get(section)
        if current is not None and not isinstance(current, Mapping):
            continue  # the section itself is malformed: parse_mapping names it
        merged[section] = {**(current or {}), name: value}
    return merged


def wrap_bare(raw: Mapping[Any, Any], source: Path) -> dict[str, Any]:
    """The full xgen config a bare LLaMA-Factory YAML stands for: its keys under train:, the job named after
    the file and run from the current directory (where `llamafactory-cli train` would have run, so the
    YAML's relative paths — dataset_dir, output_dir — mean what they meant there)."""
    name = source.stem if re.fullmatch(r"[A-Za-z0-9._-]+", source.stem) else JobConfig().name
    return {"job": {"name": name, "workdir": os.getcwd()}, "train": dict(raw)}


def _effective_text(
    raw: Mapping[Any, Any], source: Path, bare: bool, flags: Sequence[Flag], adopted: Sequence[str] = ()
) -> str:
    """The YAML the scripts freeze when the file alone is not the config that runs: a comment saying where
    it came from, then the full xgen config."""
    import yaml

    made = [f"# The config xgen ran: {source}"]
    if bare:
        made.append("#   a bare LLaMA-Factory YAML: its keys are train:, job.workdir is where xgen ran")
    if flags:
        made.append(f"#   with {' '.join(option for option, _, _ in flags)} from the command line")
    made += [f"#   {named}: {line}" for line in adopted for named in [raw.get("accelerate_config")]]
    return "\n".join(made) + "\n" + yaml.safe_dump(dict(raw), sort_keys=False)


def _unknown(key_path: str, key: str, allowed: typing.Iterable[str]) -> XgenError:
    allowed = list(allowed)
    guess = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean '{guess[0]}'?" if guess else f"known keys: {', '.join(allowed)}"
    return XgenError(key_path, f"unknown key; {hint}")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _convert(path: str, value: Any, hint: Any) -> Any:
    """Check one YAML value against a field's type annotation; return the typed value."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(path, value, option)
            except XgenError as err:
                errors.append(err.message)
        raise XgenError(path, " or ".join(dict.fromkeys(errors)))
    if origin is Literal:
        if value in args and isinstance(value, str):
            return value
        choices = "|".join(str(a) for a in args)
        raise XgenError(path, f"must be one of {choices}, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise XgenError(path, f"must be true or false, got {_type_name(value)} {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise XgenError(path, f"must be an integer, got {_type_name(value)} {value!r}")
    if hint is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise XgenError(path, f"must be a string, got {_type_name(value)}")
    if origin is tuple:
        if not isinstance(value, list):
            raise XgenError(path, f"must be a list, got {_type_name(value)}")
        return tuple(_convert(f"{path}[{i}]", item, args[0]) for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise XgenError(path, f"must be a mapping, got {_type_name(value)}")
        if args[1] is Any:
            return dict(value)
        return {str(k): _convert(f"{path}.{k}", v, args[1]) for k, v in value.items()}
    raise AssertionError(f"unhandled type {hint!r}")  # a programming error, not user input


def _section(name: str, cls: type, raw: Any) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise XgenError(name, f"must be a mapping of keys, got {_type_name(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in raw.items():
        if key not in names:
            raise _unknown(f"{name}.{key}", str(key), names)
        values[key] = _convert(f"{name}.{key}", value, hints[key])
    return cls(**values)


def parse_mapping(
    raw: Any,
    source: Path,
    text: str | None = None,
    *,
    bare: bool = False,
    flags: Sequence[Flag] = (),
    adopted: Sequence[str] = (),
) -> Config:
    """Turn the loaded YAML into a Config, checking types and every cross-key rule.

    `text` is the file as read (what the scripts freeze); without it, the mapping dumped as YAML. `bare`:
    the mapping came from a bare LLaMA-Factory YAML (errors name its keys as the user wrote them); `flags`:
    the command-line flags already applied to it (the scripts' regenerate hint repeats them); `adopted`:
    what a bare YAML took from elsewhere, one line each (xgen.accelerate_file.adopt_fsdp)."""
    if not isinstance(raw, Mapping):
        raise XgenError(str(source), f"the config must be a YAML mapping of sections, got {_type_name(raw)}")
    _no_stray_training_keys(raw)
    for key in raw:
        if key not in TOP_LEVEL:
            raise _unknown(str(key), str(key), TOP_LEVEL)
    hints = typing.get_type_hints(Config)
    sections = {name: _section(name, cls, raw.get(name)) for name, cls in SECTIONS.items()}
    scalars = {
        key: _convert(key, raw[key], hints[key])
        for key in ("launcher", "accelerate_config", "sweep", "python", "train")
        if raw.get(key) is not None
    }
    if text is None:
        import yaml

        text = yaml.safe_dump(dict(raw), sort_keys=False)
    regen = "".join(f" {option} {shlex.quote(value)}" for option, _, value in flags)
    config = Config(
        **sections, **scalars, source=source, text=text, bare=bare, regen_flags=regen, adopted=tuple(adopted)
    )
    return validate(config)


def load_config(path: str | Path, flags: Sequence[Flag] = ()) -> Config:
    """Read and validate one config file (an xgen config or a bare LLaMA-Factory YAML), `flags` over it;
    relative paths inside an xgen config resolve from its directory."""
    import yaml

    from runtime.contract import strict_yaml

    source = Path(path).absolute()
    try:
        # bytes, then decode: read_text would turn CRLF into LF, and the frozen copy and the sha256 in
        # the script header must be the file's exact bytes.
        text = source.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise XgenError(str(path), "config file not found; check the path") from None
    except (OSError, UnicodeDecodeError) as err:
        raise XgenError(str(path), f"cannot read the config: {err}") from None
    try:
        raw = strict_yaml.load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        fix = "" if isinstance(err, strict_yaml.DuplicateKeyError) else "; fix the YAML syntax"
        raise XgenError(str(path), f"{where}{problem}{fix}") from None
    # A path on the command line is relative to where the command runs, not to the config's directory.
    flags = [(o, k, os.path.abspath(v) if k in _PATH_FLAGS and v else v) for o, k, v in flags]
    bare = is_bare_training(raw)
    if not bare and not flags:
        return parse_mapping(raw, source, text)  # the file is the config: the scripts freeze its bytes
    if bare:
        raw = wrap_bare(raw, source)
    raw = apply_flags(raw, flags)
    adopted: list[str] = []
    if bare:
        raw, line = adopt_fsdp(raw, source)
        adopted = [line] if line else []
    text = _effective_text(raw, source, bare, flags, adopted)
    return parse_mapping(raw, source, text, bare=bare, flags=flags, adopted=adopted)


__all__ = ["Flag", "apply_flags", "is_bare_training", "load_config", "parse_mapping", "training_keys"]
