"""`sweep:` — train key → list of values, expanded into the tasks of ONE Slurm job array.

Task order is stable: keys in the order the config writes them, values in list order, the last key
varying fastest (itertools.product). Task N trains with its values over the config's `train:` keys,
into its own output_dir `<output_dir>/sweep-<N>-<key>=<value>-…`. The generated script carries one JSON
row per task (quoted like every config value); the runtime reads the row it is given through
XGEN_TRAIN_OVERRIDES (runtime/config/parse.py), so the shell never evaluates config text.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from xgen.config import Config
from xgen.errors import XgenError

# Slurm's default MaxArraySize is 1001 (indexes 0-1000); a larger sweep is almost always a mistake.
MAX_TASKS = 1000
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class SweepTask:
    index: int
    values: dict[str, Any]  # the sweep's keys and this task's values, in the config's key order
    output_dir: str

    @property
    def name(self) -> str:
        return posixpath.basename(self.output_dir)

    @property
    def row(self) -> str:
        """What the runtime reads over `train:` (XGEN_TRAIN_OVERRIDES): the values plus output_dir."""
        return json.dumps({**self.values, "output_dir": self.output_dir}, ensure_ascii=False)


def _label(value: Any) -> str:
    """A value as a path component: safe characters only, short (the task index keeps names unique)."""
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return _UNSAFE.sub("_", text)[:40] or "_"


def tasks(config: Config) -> list[SweepTask]:
    """Every task of the sweep, in array-index order ([] without a sweep)."""
    if not config.sweep:
        return []
    keys = list(config.sweep)
    base = config.training.output_dir if config.training else ""
    found = []
    for index, combo in enumerate(itertools.product(*(config.sweep[k] for k in keys))):
        values = dict(zip(keys, combo, strict=True))
        name = "-".join(
            [f"sweep-{index}", *(f"{_UNSAFE.sub('_', k)}={_label(v)}" for k, v in values.items())]
        )
        found.append(SweepTask(index, values, posixpath.join(base, name)))
    return found


def array_spec(config: Config) -> str | None:
    """The --array value (`0-N` or `0-N%LIMIT`), None without a sweep."""
    count = len(tasks(config))
    if not count:
        return None
    limit = config.slurm.array_limit
    return f"0-{count - 1}" + (f"%{limit}" if limit else "")


def check(config: Config) -> None:
    """The sweep's own rules, then every task's train mapping through the runtime's parser; each bad
    sweep key is one line (XgenError.also), named `sweep.<key>`."""
    if config.slurm.array_limit is not None and config.slurm.array_limit < 1:
        raise XgenError("slurm.array_limit", f"must be at least 1, got {config.slurm.array_limit}")
    if not config.sweep:
        if config.slurm.array_limit is not None:
            raise XgenError(
                "slurm.array_limit", "limits the tasks of a sweep: add a sweep: section or remove it"
            )
        return
    if config.training is None:
        raise XgenError("sweep", "sweeps train: values, but train: is empty; add the train: section")
    problems: dict[str, str] = {}
    for key, values in config.sweep.items():
        problem = _list_problem(key, values)
        if problem:
            problems[f"sweep.{key}"] = problem
    good = {k: v for k, v in config.sweep.items() if f"sweep.{k}" not in problems}
    count = math.prod(len(v) for v in good.values())
    if count > MAX_TASKS:
        problems["sweep"] = (
            f"{count} combinations; Slurm's default MaxArraySize allows {MAX_TASKS + 1} array tasks: "
            "list fewer values"
        )
    elif good:  # the keys whose lists are fine are still checked against the train schema
        problems.update(_train_problems(dataclasses.replace(config, sweep=good)))
    if problems:
        (key, message), *rest = problems.items()
        raise XgenError(key, message, also=rest)


def _list_problem(key: str, values: Any) -> str | None:
    if key == "output_dir":
        return "every task gets its own output_dir (output_dir/sweep-<task>-…); set train.output_dir instead"
    if not isinstance(values, list) or not values:
        return "must be a non-empty list of the values to try, e.g. [1.0e-4, 3.0e-4]"
    for value in values:
        if not isinstance(value, str | int | float | bool):
            return f"values must be strings, numbers or true/false, got {type(value).__name__} {value!r}"
    seen = [json.dumps(v) for v in values]
    twice = next((v for v in values if seen.count(json.dumps(v)) > 1), None)
    if twice is not None:
        return f"{twice!r} is listed twice; each value once"
    return None


def _train_problems(config: Config) -> dict[str, str]:
    """Parse every task's train mapping as the runtime will; bad sweep values named `sweep.<key>`."""
    from runtime.config import ConfigError, parse_train_config

    problems: dict[str, str] = {}
    for task in tasks(config):
        merged = {**config.train, **json.loads(task.row)}
        try:
            parse_train_config(merged, key_prefix="train.", base_dir=config.workdir)
        except ConfigError as err:
            for e in err.errors:
                name = e.key.removeprefix("train.")
                if name in config.sweep:
                    key = f"sweep.{name}"
                    message = f"{e.message} (task {task.index}, value {task.values[name]!r})"
                else:
                    key, message = e.key, f"{e.message} (with sweep task {task.index}: {task.row})"
                problems.setdefault(key, message)
    return problems


__all__ = ["SweepTask", "array_spec", "check", "tasks"]
