"""What a `tokenized_path` holds, read from its split list alone: whether it can serve this run.

A folder saved by an earlier run (here or by LLaMA-Factory: `DatasetDict.save_to_disk`) is loaded as is,
and the dataset keys, `val_size` and `eval_dataset` are not applied to it. Saved without an eval split and
reused with `val_size` or `eval_strategy`, it used to pass every check and stop after the model had loaded,
with transformers' "you didn't pass an eval_dataset" on every rank. `datasets` writes the split names to
`dataset_dict.json` (a lone Dataset writes `state.json`), so the check reads that file and no rows: fast
enough for `xgen check` and each node's check before the launcher starts, and for the runtime before the
model loads.
"""

from __future__ import annotations

import json
from pathlib import Path

from runtime.config import TrainConfig

TRAIN, EVAL = "train", "validation"  # the split names save_tokenized writes and load_tokenized reads


def saved_splits(path: str) -> list[str] | None:
    """The split names saved at `path` ([TRAIN] for a lone Dataset); None when it holds no saved
    dataset (the run tokenizes and saves there)."""
    folder = Path(path)
    try:
        data = json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [TRAIN] if (folder / "state.json").is_file() else None
    except (OSError, ValueError):
        return None  # load_from_disk says what is wrong with it, in one line (runtime.data.load_tokenized)
    splits = data.get("splits") if isinstance(data, dict) else None
    return [str(s) for s in splits] if isinstance(splits, list) else None


def split_problem(cfg: TrainConfig, splits: list[str]) -> str | None:
    """Why the saved splits cannot serve this run's training and evaluation keys, or None."""
    shown = ", ".join(splits) or "none"
    if cfg.do_train and TRAIN not in splits:
        return (
            f"{cfg.tokenized_path} holds the splits {shown} (dataset_dict.json) and no {TRAIN} split; "
            "point tokenized_path at a new folder to tokenize the datasets again"
        )
    wants = []
    if cfg.val_size:
        wants.append(f"val_size {cfg.val_size:g}")
    if cfg.eval_dataset:
        wants.append("eval_dataset")
    if cfg.eval_strategy != "no":
        wants.append(f"eval_strategy {cfg.eval_strategy}")
    if cfg.do_eval:
        wants.append("do_eval")
    if not wants or EVAL in splits:
        return None
    per_dataset = [s for s in splits if s.startswith(f"{EVAL}_")]
    why = (
        f" ({', '.join(per_dataset)}: LLaMA-Factory's one-per-eval-dataset splits; this runtime reads one "
        f"'{EVAL}')"
        if per_dataset
        else ""
    )
    return (
        f"{cfg.tokenized_path} was saved with the splits {shown} and no '{EVAL}' split{why}, but "
        f"{' and '.join(wants)} {'needs' if len(wants) == 1 else 'need'} one (saved rows are reused as they "
        "are); point tokenized_path at a new folder to tokenize again with val_size or eval_dataset, or "
        "set val_size: 0, eval_strategy: no and do_eval: false"
    )
