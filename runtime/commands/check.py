"""`xgen-runtime check CFG`: the config as this node will run it, before any launcher starts.

The generated scripts run it on every node before torch.distributed.run, DeepSpeed or accelerate, so a
node-local problem (a dataset name, a column, a missing path) reaches the user as one line per problem
instead of a ChildFailedError traceback from every rank. It runs the runtime's own code — the parser,
the dataset registry, the loaders and the column check that training uses — and never imports torch.
`xgen check` runs it too (`--visible-only`), from the workdir, to catch a dataset typo at generation time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from runtime.config import ConfigError, TrainConfig

DATASET_KEYS = ("dataset", "eval_dataset")


@dataclass
class Report:
    """Problems (`key: message` lines), notes (what was not checked) and what was."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    datasets: int = 0


def error_lines(err: ConfigError) -> list[str]:
    """One `key: message` line per problem: a ConfigError may carry several (`.errors`)."""
    items = getattr(err, "errors", None) or [err]
    return [line for item in items for line in str(item).splitlines() if line.strip()]


def check(cfg: TrainConfig, *, prefix: str = "", visible_only: bool = False) -> Report:
    """Datasets (and, unless visible_only, local model paths) as training will read them."""
    report = Report()
    if not visible_only:
        _check_paths(cfg, prefix, report)
        report.problems += _resume_problems(cfg)
    elif Path(cfg.output_dir).is_dir():  # xgen check, where output_dir is visible: said, not refused
        report.notes += [f"training would refuse: {line}" for line in _resume_problems(cfg)]
    if not any(getattr(cfg, key) for key in DATASET_KEYS):
        return report
    found = _check_datasets(cfg, prefix)
    if visible_only and found.problems and not Path(cfg.dataset_dir).is_dir():
        # Only plain file paths could have resolved: the data may just live where this cannot see it.
        report.notes.append(
            f"datasets not checked: dataset_dir {cfg.dataset_dir} is not visible from {os.getcwd()}"
        )
        return report
    report.problems += found.problems
    report.datasets = found.datasets
    return report


def _resume_problems(cfg: TrainConfig) -> list[str]:
    """What training would refuse at start for output_dir's checkpoints (runtime/fit/run_record.py):
    said here, on each node before the launcher, as one line per key. The world size is the one the
    script expects (XGEN_EXPECT_WORLD_SIZE, when cluster.devices_per_node pins it), else the saved run's."""
    import copy

    from runtime.fit import run_record

    size = os.environ.get("XGEN_EXPECT_WORLD_SIZE", "")
    return run_record.decide(copy.deepcopy(cfg), int(size) if size.isdigit() else None).problems


def _check_paths(cfg: TrainConfig, prefix: str, report: Report) -> None:
    """Model paths: a local directory, or a hub id already in this node's Hugging Face cache (the
    runtime never downloads)."""
    for key in ("model_name_or_path", "adapter_name_or_path", "ref_model"):
        value = getattr(cfg, key, None)
        if (
            isinstance(value, str)
            and value
            and not Path(value).expanduser().exists()
            and not _cached(value, key)
        ):
            report.problems.append(
                f"{prefix}{key}: {value} is not a directory on this node (from {os.getcwd()}) "
                "nor a model in its Hugging Face cache; fix the path"
            )


def _cached(repo_id: str, key: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    name = "adapter_config.json" if key == "adapter_name_or_path" else "config.json"
    try:
        return isinstance(try_to_load_from_cache(repo_id, name), str)
    except ValueError:  # not even a valid hub id (HFValidationError)
        return False


def _check_datasets(cfg: TrainConfig, prefix: str) -> Report:
    """Resolve, read and check columns exactly as build_datasets does (one line per bad dataset)."""
    import datasets

    from runtime.data.formats import check_columns
    from runtime.data.loaders import load_raw
    from runtime.data.registry import resolve_datasets

    datasets.disable_progress_bars()
    report = Report()
    for key in DATASET_KEYS:
        try:
            attrs = resolve_datasets(getattr(cfg, key), cfg.dataset_dir, key=prefix + key)
        except ConfigError as err:
            report.problems += error_lines(err)
            continue
        for attr in attrs:
            try:
                raw = load_raw(attr, cache_dir=cfg.cache_dir, seed=cfg.seed, max_samples=cfg.max_samples)
                check_columns(attr, raw.column_names, stage=cfg.stage)
            except ConfigError as err:
                report.problems += error_lines(err)
            else:
                report.datasets += 1
    return report
