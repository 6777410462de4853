"""`xgen-runtime check CFG`: the config as this node will run it, before any launcher starts.

The generated scripts run it on every node before torch.distributed.run, DeepSpeed or accelerate, so a
node-local problem (a dataset name, a column, a missing path) reaches the user as one line per problem
instead of a ChildFailedError traceback from every rank. It runs the runtime's own code — the parser,
the dataset registry, the loaders and the column check that training uses — and never imports torch.
`xgen check` runs it too (`--visible-only`), from the workdir, to catch a dataset typo at generation time.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from runtime.config import ConfigError, TrainConfig
from runtime.preflight.inputs import path_like

DATASET_KEYS = ("dataset", "eval_dataset")


@dataclass
class Report:
    """Problems (`key: message` lines), notes (what was not checked) and what was."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    datasets: int = 0
    unread: int = 0  # hub datasets not in the cache: the run downloads them (a note each)


def error_lines(err: ConfigError) -> list[str]:
    """One `key: message` line per problem: a ConfigError may carry several (`.errors`)."""
    items = getattr(err, "errors", None) or [err]
    return [line for item in items for line in str(item).splitlines() if line.strip()]


def check(
    cfg: TrainConfig, *, prefix: str = "", visible_only: bool = False, download: bool = False
) -> Report:
    """Model paths, a saved tokenized_path and the datasets as training will read them. visible_only
    (`xgen check`, on a machine that may not mount what the nodes do): what is not visible from here is a
    note, not a problem. A hub dataset is read from the datasets cache when it is there; otherwise it is a
    note (the run downloads it), a problem on a node that is offline; download: fetch it into the cache
    now, as rank 0 of a run would."""
    report = Report()
    _check_models(cfg, prefix, report, visible_only)
    report.problems += _vision_problems(cfg, prefix)
    if not visible_only:
        report.problems += _resume_problems(cfg)
    elif Path(cfg.output_dir).is_dir():  # xgen check, where output_dir is visible: said, not refused
        report.notes += [f"training would refuse: {line}" for line in _resume_problems(cfg)]
    if cfg.tokenized_path and _check_tokenized(cfg, prefix, report):
        return report  # the saved rows are trained on: the dataset keys are not read
    if not any(getattr(cfg, key) for key in DATASET_KEYS):
        return report
    found = _check_datasets(cfg, prefix, visible_only=visible_only, download=download)
    report.notes += found.notes
    if visible_only and found.problems and not Path(cfg.dataset_dir).is_dir():
        # Only plain file paths could have resolved: the data may just live where this cannot see it.
        report.notes.append(
            f"datasets not checked: dataset_dir {cfg.dataset_dir} is not visible from {os.getcwd()}"
        )
        return report
    report.problems += found.problems
    report.datasets, report.unread = found.datasets, found.unread
    return report


def _vision_problems(cfg: TrainConfig, prefix: str) -> list[str]:
    """For a vision-language model runtime/mm trains: a template, stage or data key it refuses (the model
    folder's config.json, where it is visible). Another family's image rows: the dataset check says so."""
    from runtime.mm.data import check_vision_keys, vision_family

    try:
        if vision_family(cfg):  # the template and the stage
            check_vision_keys(cfg)
    except ConfigError as err:
        return [prefix + line for line in error_lines(err)]
    return []


def _check_tokenized(cfg: TrainConfig, prefix: str, report: Report) -> bool:
    """A tokenized_path holding saved splits: can they serve this run (runtime.data.tokenized)? True when
    the run will load them instead of reading the datasets."""
    from runtime.data.tokenized import saved_splits, split_problem

    splits = saved_splits(str(cfg.tokenized_path))
    if splits is None:
        return False
    problem = split_problem(cfg, splits)
    if problem:
        report.problems.append(f"{prefix}tokenized_path: {problem}")
    report.notes.append(
        f"datasets not read: tokenized_path {cfg.tokenized_path} holds the tokenized splits "
        + ", ".join(splits)
    )
    return True


def _resume_problems(cfg: TrainConfig) -> list[str]:
    """What training would refuse at start for output_dir's checkpoints (runtime/fit/run_record.py):
    said here, on each node before the launcher, as one line per key. The world size is the one the
    script expects (XGEN_EXPECT_WORLD_SIZE, when cluster.devices_per_node pins it), else the saved run's."""
    import copy

    from runtime.fit import run_record

    size = os.environ.get("XGEN_EXPECT_WORLD_SIZE", "")
    return run_record.decide(copy.deepcopy(cfg), int(size) if size.isdigit() else None).problems


# --- models: a folder, or a hub id in the Hugging Face cache ---
MODEL_KEYS = ("model_name_or_path", "adapter_name_or_path", "ref_model")
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?\Z")  # `name` or `org/name`, as huggingface_hub validates them
SHARED_HF_HOME = "/shared/hf"  # the example folder in the download hint


def _check_models(cfg: TrainConfig, prefix: str, report: Report, visible_only: bool) -> None:
    """Each model path: a folder (a typo in a visible folder names the close entries), or a hub id already
    in the Hugging Face cache. The runtime does not download: every rank of every node would fetch the
    model at once after the job started, into node-local caches, and a mistyped id would only fail there.
    On a node (the scripts' check) a missing model is a problem; in `xgen check`, which runs where the
    nodes' folders and cache may not be, what it cannot see is a note."""
    for key in MODEL_KEYS:
        value = getattr(cfg, key, None)
        if not isinstance(value, str) or not value or Path(value).expanduser().exists():
            continue
        where = f"{prefix}{key}"
        if _looks_local(value):
            path = Path(value).expanduser().absolute()
            if path.parent.is_dir():
                here = "" if visible_only else " on this node"
                report.problems.append(
                    f"{where}: {value} not found{here}: {path.parent} has no {path.name}"
                    f"{_close_entry(path)}; fix the path"
                )
            elif visible_only:
                report.notes.append(
                    f"{where}: not checked: {value} is not visible from here ({path.parent} is not); "
                    "each node's check reads it"
                )
            else:
                report.problems.append(
                    f"{where}: {value} not found on this node (no folder {path.parent}); fix the path, or "
                    "put the model on a filesystem every node mounts"
                )
            continue
        cache = _hub_cache(value, key)
        if cache is None:  # huggingface_hub is not importable here: nothing to say about the hub
            continue
        cached, folder = cache
        if cached:
            continue
        fix = (
            f"`HF_HOME={SHARED_HF_HOME} hf download {value}` (older huggingface_hub: huggingface-cli "
            f"download) where there is network, and export HF_HOME={SHARED_HF_HOME} for the job "
            "(cluster.env): any folder every node mounts"
        )
        if visible_only:
            report.notes.append(
                f"{where}: {value} is not a folder here nor a hub id in the Hugging Face cache here "
                f"({folder}), and the nodes do not download; unless they have it, for a hub id: {fix}"
            )
        else:
            report.problems.append(
                f"{where}: {value} is not a folder on this node (from {os.getcwd()}) nor in its Hugging Face "
                f"cache ({folder}), and the runtime does not download: {fix}"
            )


def _looks_local(value: str) -> bool:
    """A local path rather than a hub id: absolute, ./ ../ ~, not an `org/name` shape, or an `org/name`
    whose first part is a folder here (models/qwen3)."""
    if path_like(value) or not _HUB_ID.match(value) or ".." in value:
        return True
    return "/" in value and Path(value.split("/", 1)[0]).is_dir()


def _close_entry(path: Path) -> str:
    """` (did you mean …?)` with the closest name in the folder (case is a common typo: Qwen3-8b)."""
    try:
        names = [entry.name for entry in os.scandir(path.parent)][:2000]
    except OSError:
        return ""
    lowered = {n.lower(): n for n in names}
    close = difflib.get_close_matches(path.name.lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {path.parent / lowered[close[0]]}?)" if close else ""


def _hub_cache(repo_id: str, key: str) -> tuple[bool, str] | None:
    """(in the cache, the cache folder) for a hub id; None when huggingface_hub is not importable."""
    from runtime.contract.hf_cache import cached_file

    name = "adapter_config.json" if key == "adapter_name_or_path" else "config.json"
    found = cached_file(repo_id, name)
    return None if found is None else (found[0] is not None, found[1])


def _check_datasets(cfg: TrainConfig, prefix: str, *, visible_only: bool, download: bool) -> Report:
    """Resolve, read and check columns exactly as build_datasets does (one line per bad dataset)."""
    import datasets

    from runtime.data import hub
    from runtime.data.loaders import load_raw
    from runtime.data.registry import resolve_datasets
    from runtime.mm.data import check_dataset_columns, check_image_rows
    from runtime.mm.families import vision_model_type

    datasets.disable_progress_bars()
    report = Report()
    vision = vision_model_type(cfg.model_name_or_path) is not None
    for key in DATASET_KEYS:
        try:
            attrs = resolve_datasets(getattr(cfg, key), cfg.dataset_dir, key=prefix + key)
        except ConfigError as err:
            report.problems += error_lines(err)
            continue
        for attr in attrs:
            try:
                raw = load_raw(
                    attr,
                    cache_dir=cfg.cache_dir,
                    seed=cfg.seed,
                    max_samples=cfg.max_samples,
                    network=download,
                )
                check_dataset_columns(attr, raw.column_names, cfg)  # images allowed for Qwen-VL models
                if vision:
                    report.problems += check_image_rows(attr, raw, cfg)
            except hub.NotCached as err:
                hf = attr.hub is not None and attr.hub.url_key not in hub.CLIENTS
                if download:  # asked for and not had: HF_HUB_OFFLINE, or the hub out of reach
                    report.problems += error_lines(err)
                elif hub.offline() and hf:  # xgen check too: Slurm passes HF_HUB_OFFLINE to the job
                    report.problems.append(f"{attr.key}: {hub.not_cached(attr, cfg.cache_dir)}")
                else:
                    report.notes.append(str(err))
                    report.unread += 1
            except ConfigError as err:
                if visible_only and attr.hub is not None and attr.hub.url_key in hub.CLIENTS:
                    report.notes += [
                        f"{line} (here; each node's check says whether it has it)"
                        for line in error_lines(err)
                    ]
                    report.unread += 1
                else:
                    report.problems += error_lines(err)
            else:
                report.datasets += 1
    return report
