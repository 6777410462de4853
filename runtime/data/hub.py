"""Hub datasets: dataset_info.json entries with `hf_hub_url`, `ms_hub_url` or `om_hub_url`, loaded as
LLaMA-Factory 0.9.5 loads them (data/loader.py, `_load_single_dataset`):

    hf_hub_url   datasets.load_dataset(repo, name=subset, data_dir=folder, split=split, cache_dir=cache_dir,
                 num_proc=preprocessing_num_workers)
    ms_hub_url   modelscope's MsDataset.load(...).to_hf_dataset(), when modelscope is installed
    om_hub_url   openmind's OmDataset.load_dataset(...), when openmind is installed

huggingface_hub and datasets read HF_ENDPOINT (a mirror), HF_HUB_OFFLINE and HF_HOME themselves. The rows
end up as datasets' arrow files in `cache_dir`, else HF_HOME's datasets cache (the "cache root").

Once per job (runtime.data.once): global rank 0 calls load_dataset (downloading, or asking the hub for a
newer revision as LLaMA-Factory does on every start) and records in `<cache root>/.xgen-hub/` which
arrow files hold the split; the ranks that waited for it read those files with no request to the hub.
Offline (HF_HUB_OFFLINE=1) every rank reads that record, else datasets' own offline cache lookup, and a
dataset neither holds stops the run in one line before the model loads. The record is also what makes
`folder` work offline: datasets 5.2 looks an offline `data_dir` up under another config id than the one
it wrote online ("Couldn't find cache for … config 'default-data_dir=…'").
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from runtime.config import ConfigError
from runtime.contract.files import write_atomic
from runtime.data.once import after_builder
from runtime.data.registry import DatasetAttr

RECORDS = ".xgen-hub"  # folder inside the cache root
# Other hubs: the client module, LLaMA-Factory's minimum version, and the hub's name.
CLIENTS = {
    "ms_hub_url": ("modelscope", "1.14.0", "ModelScope"),
    "om_hub_url": ("openmind", "0.8.0", "OpenMind"),
}
DOWNLOAD = "xgen-runtime check CONFIG --download"


class NotCached(ConfigError):
    """A hub dataset only the network can give: the check notes it (a problem when offline)."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (NotCached, (self.key, self.message))


def load_hub(attr: DatasetAttr, *, cache_dir: str | None, num_proc: int | None, network: bool = True) -> Any:
    """The split as a datasets.Dataset. network=False (the check): from the cache only, else NotCached."""
    assert attr.hub is not None
    if attr.hub.url_key in CLIENTS:
        _require_client(attr)
        if not network:
            raise NotCached(
                attr.key, f"{attr.where()} needs the network ({CLIENTS[attr.hub.url_key][2]}); not read"
            )
        return _load_other_hub(attr, cache_dir)
    if not network or offline() or after_builder():
        recorded = _read_record(attr, cache_dir)
        if recorded is not None:
            return recorded
    if not network:
        with _offline_mode():
            try:
                return _load_hf(attr, cache_dir, num_proc)
            except NotCached:
                raise NotCached(attr.key, needs_network(attr, cache_dir)) from None
    return _load_hf(attr, cache_dir, num_proc)


def offline() -> bool:
    """HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE) as datasets read it at import."""
    import datasets.config

    return bool(datasets.config.HF_HUB_OFFLINE)


def cache_root(cache_dir: str | None) -> Path:
    """Where datasets writes the arrow files: cache_dir, else HF_HOME's datasets cache."""
    import datasets.config

    return Path(cache_dir or datasets.config.HF_DATASETS_CACHE).expanduser()


def endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def not_cached(attr: DatasetAttr, cache_dir: str | None) -> str:
    """The one line for a run (or a node's check) that cannot download and has no copy."""
    why = "HF_HUB_OFFLINE=1" if offline() else f"{endpoint()} cannot be reached from here"
    return (
        f"{attr.where()} is not in the datasets cache {cache_root(cache_dir)} and {why}: download it where "
        f"there is network with `{DOWNLOAD}` into the same cache (cache_dir, or HF_HOME; a folder every "
        "node mounts)"
    )


def needs_network(attr: DatasetAttr, cache_dir: str | None) -> str:
    """The check's note for a dataset the run will download."""
    return (
        f"{attr.where()} needs the network: not in the datasets cache {cache_root(cache_dir)}; rank 0 "
        f"downloads it from {endpoint()} when the run starts (nodes without network: `{DOWNLOAD}` where "
        "there is network, into a cache every node mounts)"
    )


def _load_hf(attr: DatasetAttr, cache_dir: str | None, num_proc: int | None) -> Any:
    from datasets import load_dataset

    hub = attr.hub
    assert hub is not None
    try:
        dataset = load_dataset(
            hub.repo,
            name=hub.subset,
            data_dir=hub.folder,
            split=attr.split,
            cache_dir=cache_dir,
            num_proc=num_proc,
        )
    except Exception as exc:
        # Offline, datasets' cache lookup fails with ValueError as often as ConnectionError: not cached.
        if offline() or isinstance(exc, ConnectionError):  # ConnectionError: unreachable, not in the cache
            raise NotCached(attr.key, not_cached(attr, cache_dir)) from exc
        # Not on the hub, no such subset or split: one line, not datasets' traceback.
        raise ConfigError(
            attr.key, f"{attr.where()}: cannot load it from {endpoint()}: {_first_line(exc)}"
        ) from exc
    _write_record(attr, cache_dir, dataset)
    return dataset


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


@contextmanager
def _offline_mode() -> Iterator[None]:
    """datasets and huggingface_hub offline for a moment (the check: what the cache holds, no request)."""
    import datasets.config
    from datasets.utils import logging
    from huggingface_hub import constants

    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE, logging.get_verbosity()
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    logging.set_verbosity_error()  # not "Using the latest cached version …" for every dataset
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved[:2]
        logging.set_verbosity(saved[2])


# --- the record: which arrow files rank 0's load_dataset left for this split ---


def _record_path(attr: DatasetAttr, cache_dir: str | None) -> Path:
    hub = attr.hub
    assert hub is not None
    ident = json.dumps([hub.url_key, hub.repo, hub.subset, hub.folder, attr.split])
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return cache_root(cache_dir) / RECORDS / f"{hub.repo.replace('/', '___')}-{digest}.json"


def _write_record(attr: DatasetAttr, cache_dir: str | None, dataset: Any) -> None:
    files = [entry["filename"] for entry in dataset.cache_files]
    if not files:  # held in memory: nothing on disk to point the other ranks at
        return
    hub = attr.hub
    assert hub is not None
    record = {
        "repo": hub.repo,
        "subset": hub.subset,
        "folder": hub.folder,
        "split": attr.split,
        "endpoint": endpoint(),
        "dir": os.path.dirname(files[0]),
        "name": dataset.info.dataset_name,
        "fingerprint": dataset._fingerprint,  # the same rows, the same fingerprint: tokenized maps are reused
    }
    path = _record_path(attr, cache_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(record, indent=1))
    except OSError:  # a read-only cache: the other ranks then ask the hub themselves
        pass


def _read_record(attr: DatasetAttr, cache_dir: str | None) -> Any:
    """The split from the recorded arrow files, read as datasets' builder reads them; None when there is
    no record or its files are gone (a cleaned cache)."""
    from datasets import Dataset, DatasetInfo
    from datasets.arrow_reader import ArrowReader

    try:
        record = json.loads(_record_path(attr, cache_dir).read_text(encoding="utf-8"))
        info = DatasetInfo.from_directory(record["dir"])
        kwargs = ArrowReader(record["dir"], info).read(
            name=record["name"], instructions=attr.split, split_infos=list(info.splits.values())
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Dataset(fingerprint=record["fingerprint"], **kwargs)


# --- ModelScope, OpenMind ---


def _require_client(attr: DatasetAttr) -> None:
    """One line with the pip command when the hub's client is missing or older than LLaMA-Factory needs."""
    from packaging.version import Version

    assert attr.hub is not None
    module, minimum, label = CLIENTS[attr.hub.url_key]
    try:
        found = importlib.metadata.version(module) if importlib.util.find_spec(module) else None
    except importlib.metadata.PackageNotFoundError:
        found = None
    if found is not None and Version(found) >= Version(minimum):
        return
    have = f"{module} {found} is installed" if found else f"{module} is not installed"
    raise ConfigError(
        attr.key,
        f"{attr.where()} loads through {label}'s client and {have}: pip install '{module}>={minimum}'",
    )


def _load_other_hub(attr: DatasetAttr, cache_dir: str | None) -> Any:
    hub = attr.hub
    assert hub is not None
    try:
        if hub.url_key == "ms_hub_url":
            from modelscope import MsDataset  # type: ignore[import-not-found]
            from modelscope.utils.config_ds import MS_DATASETS_CACHE  # type: ignore[import-not-found]

            dataset = MsDataset.load(
                dataset_name=hub.repo,
                subset_name=hub.subset,
                data_dir=hub.folder,
                data_files=None,
                split=attr.split,
                cache_dir=cache_dir or MS_DATASETS_CACHE,
                token=None,
                use_streaming=False,
            )
            return dataset.to_hf_dataset() if isinstance(dataset, MsDataset) else dataset
        from openmind import OmDataset  # type: ignore[import-not-found]
        from openmind.utils.hub import OM_DATASETS_CACHE  # type: ignore[import-not-found]

        return OmDataset.load_dataset(
            path=hub.repo,
            name=hub.subset,
            data_dir=hub.folder,
            data_files=None,
            split=attr.split,
            cache_dir=cache_dir or OM_DATASETS_CACHE,
            token=None,
            streaming=False,
        )
    except Exception as exc:
        label = CLIENTS[hub.url_key][2]
        raise ConfigError(attr.key, f"{attr.where()}: {label} could not load it: {_first_line(exc)}") from exc
