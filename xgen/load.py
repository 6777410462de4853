"""Reading a config file into the typed Config (xgen.config): YAML, types, then every rule (xgen.checks).

Parsing is strict: an unknown key, a wrong type or an impossible value raises XgenError naming the key
path, so the CLI can print one line and write nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from xgen.checks import validate
from xgen.config import SECTIONS, Config
from xgen.errors import XgenError

TOP_LEVEL = ("job", "cluster", "slurm", "container", "launcher", "sweep", "python", "train")


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


def parse_mapping(raw: Any, source: Path, text: str | None = None) -> Config:
    """Turn the loaded YAML into a Config, checking types and every cross-key rule.

    `text` is the file as read (what the scripts freeze); without it, the mapping dumped as YAML."""
    if not isinstance(raw, Mapping):
        raise XgenError(str(source), f"the config must be a YAML mapping of sections, got {_type_name(raw)}")
    for key in raw:
        if key not in TOP_LEVEL:
            raise _unknown(str(key), str(key), TOP_LEVEL)
    hints = typing.get_type_hints(Config)
    sections = {name: _section(name, cls, raw.get(name)) for name, cls in SECTIONS.items()}
    scalars = {
        key: _convert(key, raw[key], hints[key])
        for key in ("launcher", "sweep", "python", "train")
        if raw.get(key) is not None
    }
    if text is None:
        import yaml

        text = yaml.safe_dump(dict(raw), sort_keys=False)
    return validate(Config(**sections, **scalars, source=source, text=text))


def load_config(path: str | Path) -> Config:
    """Read and validate one config file; relative paths inside it resolve from its directory."""
    import yaml

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
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise XgenError(str(path), f"{where}{problem}; fix the YAML syntax") from None
    return parse_mapping(raw, source, text)


__all__ = ["load_config", "parse_mapping"]
