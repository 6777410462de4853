"""Resolve `dataset: a,b` into DatasetAttr records, the way LLaMA-Factory reads dataset_info.json.

A name is looked up in `dataset_dir/dataset_info.json` first; a name that is not there but is an
existing file or directory (absolute, relative to the working directory, or to dataset_dir) is
loaded as a plain path with its format detected from its columns. Hub entries (`hf_hub_url`,
`ms_hub_url`, `om_hub_url`) pick their hub as LLaMA-Factory's data/parser.py does (a hub url wins over
file_name; USE_MODELSCOPE_HUB / USE_OPENMIND_HUB prefer those hubs) and are loaded by runtime.data.hub;
with `dataset_dir: ONLINE` every name is such a repo. `script_url` and `cloud_file_name` are refused.
Torch-free and datasets-free.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.config import ConfigError

COLUMN_KEYS = (
    "prompt",
    "query",
    "response",
    "history",
    "messages",
    "system",
    "tools",
    "images",
    "videos",
    "audios",
    "chosen",
    "rejected",
    "kto_tag",
)
TAG_DEFAULTS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    # LLaMA-Factory leaves this None; "system" is what every sharegpt file uses and is harmless.
    "system_tag": "system",
}
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output"}
SHAREGPT_COLUMNS = {"messages": "conversations"}
RANKING_COLUMNS = {"chosen": "chosen", "rejected": "rejected"}
HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url")
REFUSED_SOURCES = {
    "script_url": "a dataset loading script: datasets 5 runs no scripts; convert it to json/parquet files "
    "and set file_name",
    "cloud_file_name": "a file in s3/gcs: copy it where the nodes can read it and set file_name",
}
ONLINE = "ONLINE"
ONLINE_HUBS = (("USE_MODELSCOPE_HUB", "ms_hub_url"), ("USE_OPENMIND_HUB", "om_hub_url"))
ENTRY_KEYS = (
    *HUB_KEYS,
    *REFUSED_SOURCES,
    "file_name",
    "formatting",
    "ranking",
    "subset",
    "split",
    "folder",
    "num_samples",
)
ENTRY_KEYS += ("columns", "tags")


@dataclass(frozen=True)
class HubSource:
    """A dataset_info.json entry read from a hub: `url_key` names the entry's key (hf_hub_url, ms_hub_url,
    om_hub_url), `repo` its value; subset and folder are LLaMA-Factory's (datasets' `name`, `data_dir`)."""

    url_key: str
    repo: str
    subset: str | None = None
    folder: str | None = None

    def describe(self) -> str:
        extra = "".join(f", {k} {v}" for k, v in (("subset", self.subset), ("folder", self.folder)) if v)
        return f"{self.url_key} {self.repo}{extra}"


@dataclass
class DatasetAttr:
    """One dataset to load: where it is and how its columns map onto prompt/response/messages."""

    name: str
    path: Path
    key: str  # the config key it came from ("dataset" or "eval_dataset"), named in errors
    formatting: str = "alpaca"  # alpaca | sharegpt | auto (plain paths: decided from the columns)
    ranking: bool | None = False  # None: decided from the columns (plain paths)
    split: str = "train"
    num_samples: int | None = None
    columns: dict[str, str] = field(default_factory=dict)
    explicit: set[str] = field(default_factory=set)  # column keys the user named (must exist)
    tags: dict[str, str] = field(default_factory=lambda: dict(TAG_DEFAULTS))
    hub: HubSource | None = None  # set: downloaded from that hub (runtime.data.hub); `path` is unused

    def where(self) -> str:
        return f"dataset '{self.name}' ({self.hub.describe() if self.hub else self.path})"


def split_names(value: str | list[str] | None) -> list[str]:
    """`a, b` or ['a', 'b'] -> ['a', 'b']."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(item).strip() for item in items if str(item).strip()]


def resolve_datasets(
    value: str | list[str] | None, dataset_dir: str | Path, *, key: str
) -> list[DatasetAttr]:
    """Every name in `value` as a DatasetAttr; ConfigError(key, ...) for anything unknown or unloadable."""
    names = split_names(value)
    if not names:
        return []
    base = Path(dataset_dir)
    if base.name == ONLINE and not base.exists():  # LLaMA-Factory's `dataset_dir: ONLINE`: names are repos
        url_key = next((u for v, u in ONLINE_HUBS if _env_enabled(v)), "hf_hub_url")
        return [_from_entry(name, {url_key: name}, base, Path(ONLINE), key=key) for name in names]
    info_path = base / "dataset_info.json"
    info = _read_info(info_path) if info_path.is_file() else None
    attrs = []
    for name in names:
        if info is not None and name in info:
            attrs.append(_from_entry(name, info[name], base, info_path, key=key))
            continue
        path = _existing_path(name, base)
        if path is not None:
            attrs.append(DatasetAttr(name=name, path=path, key=key, formatting="auto", ranking=None))
            continue
        if info is None:
            why = f"dataset_dir '{base}' does not exist" if not base.is_dir() else f"no {info_path}"
            raise ConfigError(
                key, f"'{name}' is neither a file nor a registered dataset ({why}; set dataset_dir)"
            )
        known = ", ".join(sorted(info)) or "none"
        raise ConfigError(
            key, f"unknown dataset '{name}': not in {info_path} (known: {known}) and not a file"
        )
    return attrs


def _read_info(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError("dataset_dir", f"cannot read {path}: {exc}") from exc
    if not isinstance(info, dict):
        raise ConfigError("dataset_dir", f"{path} must hold a JSON object of dataset entries")
    return info


def _existing_path(name: str, base: Path) -> Path | None:
    for candidate in (Path(name).expanduser(), base / name):
        if candidate.exists():
            return candidate
    return None


def _from_entry(name: str, entry: Any, base: Path, info_path: Path, *, key: str) -> DatasetAttr:
    where = f"{info_path} entry '{name}'"
    if not isinstance(entry, dict):
        raise ConfigError(key, f"{where} must be a JSON object")
    hub = _hub_source(entry, where, key)
    if hub is None and "file_name" not in entry:
        refused = next((k for k in REFUSED_SOURCES if k in entry), None)
        if refused:
            raise ConfigError(key, f"{where}: {refused} is {REFUSED_SOURCES[refused]}")
        raise ConfigError(key, f"{where} has no file_name (nor hf_hub_url, ms_hub_url, om_hub_url)")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        raise ConfigError(key, f"{where}: formatting must be alpaca or sharegpt, not {formatting!r}")
    ranking = bool(entry.get("ranking", False))
    columns = dict(ALPACA_COLUMNS if formatting == "alpaca" else SHAREGPT_COLUMNS)
    if ranking:
        columns.update(RANKING_COLUMNS)
    user_columns = _string_map(entry.get("columns", {}), COLUMN_KEYS, f"{where} columns", key)
    user_tags = _string_map(entry.get("tags", {}), tuple(TAG_DEFAULTS), f"{where} tags", key)
    columns.update(user_columns)
    num_samples = entry.get("num_samples")
    if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
        raise ConfigError(key, f"{where}: num_samples must be a positive integer")
    return DatasetAttr(
        name=name,
        path=Path(hub.repo) if hub else base / str(entry["file_name"]),
        key=key,
        formatting=formatting,
        ranking=ranking,
        split=str(entry.get("split", "train")),
        num_samples=num_samples,
        columns={k: v for k, v in columns.items() if v},
        explicit={k for k, v in user_columns.items() if v},
        tags={**TAG_DEFAULTS, **user_tags},
        hub=hub,
    )


def _env_enabled(name: str) -> bool:
    """LLaMA-Factory's is_env_enabled."""
    return os.environ.get(name, "0").lower() in ("true", "y", "1")


def _hub_source(entry: dict[str, Any], where: str, key: str) -> HubSource | None:
    """LLaMA-Factory's choice of hub: ModelScope when the entry has ms_hub_url and USE_MODELSCOPE_HUB is
    on or there is no hf_hub_url; likewise OpenMind (USE_OPENMIND_HUB); else the Hugging Face hub."""
    if not any(k in entry for k in HUB_KEYS):
        return None
    has_hf = "hf_hub_url" in entry
    if "ms_hub_url" in entry and (_env_enabled("USE_MODELSCOPE_HUB") or not has_hf):
        url_key = "ms_hub_url"
    elif "om_hub_url" in entry and (_env_enabled("USE_OPENMIND_HUB") or not has_hf):
        url_key = "om_hub_url"
    else:
        url_key = "hf_hub_url"
    extra = {k: entry.get(k) for k in (url_key, "subset", "folder")}
    bad = next((k for k, v in extra.items() if v is not None and (not isinstance(v, str) or not v)), None)
    if bad:
        raise ConfigError(key, f"{where}: {bad} must be a non-empty string")
    return HubSource(url_key, str(entry[url_key]), entry.get("subset"), entry.get("folder"))


def _string_map(value: Any, allowed: tuple[str, ...], where: str, key: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ConfigError(key, f"{where} must be a JSON object")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ConfigError(key, f"{where}: unknown key {unknown[0]!r} (choose from {', '.join(allowed)})")
    return {k: str(v) for k, v in value.items() if v is not None}
