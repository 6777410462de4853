"""Read one resolved dataset: json/jsonl/parquet/csv/arrow/txt files, a directory of such files, a
directory written by `Dataset.save_to_disk` (read with load_from_disk), or a hub dataset (runtime.data.hub).

load_dataset's arrow cache is what lets a second rank (or a second run) skip the work.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from runtime.config import ConfigError
from runtime.data.hub import load_hub
from runtime.data.registry import RANKING_COLUMNS, DatasetAttr

FILE_TYPES = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
FILE_TYPES[".txt"] = "text"


def load_raw(
    attr: DatasetAttr,
    *,
    cache_dir: str | None,
    seed: int,
    max_samples: int | None,
    streaming: bool = False,
    num_proc: int | None = None,
    network: bool = True,
) -> Any:
    """The dataset's rows as stored (num_samples and max_samples applied), formatting decided.

    A hub dataset (attr.hub) comes through runtime.data.hub: downloaded into the datasets cache, or read
    from it (network=False: only from it, else hub.NotCached). num_proc: load_dataset's, for hub datasets.

    streaming: as LLaMA-Factory does for local files, the file is read into datasets' memory-mapped arrow
    cache and returned as an IterableDataset, so conversion and tokenization happen as training consumes
    rows (num_samples is ignored, as there). A hub dataset is streamed the same way from the cache rank 0
    downloaded it into (LLaMA-Factory streams it over HTTP on every rank)."""
    if attr.hub is not None:
        dataset = load_hub(attr, cache_dir=cache_dir, num_proc=num_proc, network=network)
    elif not attr.path.exists():
        raise ConfigError(attr.key, f"{attr.where()}: file not found")
    else:
        try:
            dataset = _read(attr, cache_dir)
        except ConfigError:
            raise
        except Exception as exc:  # pyarrow/json errors: say which file, not a 40-line traceback
            raise ConfigError(attr.key, f"{attr.where()}: cannot read: {exc}") from exc
    if streaming:
        if attr.formatting == "auto" or attr.ranking is None:
            detect_format(attr, dataset.column_names, dataset[0] if len(dataset) else {})
        return dataset.to_iterable_dataset()
    if attr.num_samples is not None:
        dataset = dataset.select(_sample_indices(len(dataset), attr.num_samples, seed))
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    if attr.formatting == "auto" or attr.ranking is None:
        detect_format(attr, dataset.column_names, dataset[0] if len(dataset) else {})
    return dataset


def _read(attr: DatasetAttr, cache_dir: str | None) -> Dataset:
    path = attr.path
    if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        loaded = load_from_disk(str(path))
        if isinstance(loaded, DatasetDict):
            if attr.split not in loaded:
                raise ConfigError(
                    attr.key, f"{attr.where()}: no split '{attr.split}' (has {', '.join(loaded)})"
                )
            loaded = loaded[attr.split]
        return loaded
    files = (
        sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if path.is_dir()
        else [path]
    )
    kinds = {FILE_TYPES.get(p.suffix.lower()) for p in files}
    if not files or None in kinds or len(kinds) != 1:
        known = ", ".join(sorted(FILE_TYPES))
        raise ConfigError(attr.key, f"{attr.where()}: need files of one type ({known}) or a saved HF dataset")
    return load_dataset(
        kinds.pop(),
        data_files=[str(p) for p in files],
        split="train",
        cache_dir=cache_dir,
    )


def _sample_indices(size: int, target: int, seed: int) -> np.ndarray:
    """LLaMA-Factory's num_samples: a seeded permutation, topped up with repeats when target > size."""
    rng = np.random.default_rng(seed)
    indices = rng.permutation(size)[:target]
    if target > len(indices):
        indices = np.concatenate([indices, rng.choice(size, target - len(indices))])
    return indices


def detect_format(attr: DatasetAttr, column_names: list[str], first_row: dict) -> None:
    """For a plain file path: sharegpt if it has conversations/messages, alpaca otherwise."""
    columns = set(column_names)
    if attr.ranking is None:
        attr.ranking = {"chosen", "rejected"} <= columns
    if attr.formatting == "auto":
        messages = next((c for c in ("conversations", "messages") if c in columns), None)
        if messages:
            attr.formatting = "sharegpt"
            attr.columns = {"messages": messages}
            turns = first_row.get(messages) or [{}]
            if isinstance(turns[0], dict) and "role" in turns[0]:  # OpenAI style
                attr.tags.update(
                    role_tag="role", content_tag="content", user_tag="user", assistant_tag="assistant"
                )
                attr.tags.update(observation_tag="tool", function_tag="function_call")
        else:
            attr.formatting = "alpaca"
            prompt = "instruction" if "instruction" in columns or "text" not in columns else "text"
            attr.columns = {"prompt": prompt, "query": "input", "response": "output"}
        for name in ("system", "history", "tools"):
            if name in columns:
                attr.columns.setdefault(name, name)
    if attr.ranking:
        attr.columns.update({k: v for k, v in RANKING_COLUMNS.items() if k not in attr.columns})
