"""Datasets for the runtime: resolve names, load files, normalize formats, tokenize per stage, batch.

    splits = build_datasets(cfg, tokenizer, stage="sft")     # inside training_args.main_process_first()
    collator = build_collator(cfg, tokenizer, stage="sft")

Every `datasets.map` is fingerprinted and cached, so the ranks that run after the main process read
rank 0's results instead of redoing them. Config field names are LLaMA-Factory's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from datasets import Dataset, concatenate_datasets

from runtime.config import ConfigError, TrainConfig
from runtime.data.collators import KTOCollator, PackingCollator, PaddingCollator, PairwiseCollator
from runtime.data.formats import KTO_STAGE, PAIRWISE_STAGES, check_columns, to_messages
from runtime.data.loaders import load_raw
from runtime.data.packing import IGNORE_INDEX, PACKING_ATTENTION, check_packing_support
from runtime.data.registry import resolve_datasets
from runtime.data.templates import NAMED_TEMPLATES, ChatFormat, resolve_template
from runtime.data.tokenize import tokenize_kto, tokenize_pairwise, tokenize_pt, tokenize_sft

__all__ = [
    "IGNORE_INDEX",
    "NAMED_TEMPLATES",
    "PACKING_ATTENTION",
    "ChatFormat",
    "DatasetSplits",
    "build_collator",
    "build_datasets",
    "check_packing_support",
    "packing_enabled",
    "resolve_template",
    "worker_count",
]
STAGES = ("pt", "sft", "rm", "dpo", "kto")


@dataclass
class DatasetSplits:
    train: Dataset
    eval: Dataset | None


def _note(message: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(f"xgen-runtime: note: {message}", flush=True)


def worker_count(requested: int | None) -> int | None:
    """preprocessing_num_workers capped at the CPUs this process may use (None/1: no worker processes)."""
    if not requested or requested <= 1:
        return None
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if requested > available:
        _note(f"preprocessing_num_workers={requested} capped to {available} (CPUs available)")
        requested = available
    return requested if requested > 1 else None


def packing_enabled(cfg: TrainConfig, stage: str) -> bool:
    """LLaMA-Factory: packing unset means on for pt, off otherwise. Only pt and sft pack."""
    packing = cfg.packing
    if packing is None:
        return stage == "pt"
    if packing and (stage in PAIRWISE_STAGES or stage == KTO_STAGE):
        raise ConfigError(
            "packing", f"packing applies to stages pt and sft; {stage} pairs are padded per batch"
        )
    return bool(packing)


def build_datasets(cfg: TrainConfig, tokenizer, *, stage: str) -> DatasetSplits:
    """Tokenized train (and eval) rows for `stage`; see runtime-contracts for the columns."""
    if stage not in STAGES:
        raise ConfigError("stage", f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    packing = packing_enabled(cfg, stage)
    cutoff_len = cfg.cutoff_len
    if not isinstance(cutoff_len, int) or cutoff_len < 1:
        raise ConfigError("cutoff_len", f"must be a positive integer, got {cutoff_len!r}")
    chat = None if stage == "pt" else resolve_template(cfg.template, tokenizer)
    if not cfg.dataset:
        raise ConfigError("dataset", "no dataset given: name entries of dataset_info.json or data files")
    context = {
        "stage": stage,
        "tokenizer": tokenizer,
        "chat": chat,
        "cutoff_len": cutoff_len,
        "packing": packing,
        "num_proc": worker_count(cfg.preprocessing_num_workers),
        "load_from_cache_file": not cfg.overwrite_cache,
    }
    train = _build_one(cfg, "dataset", context)
    evaluation = _build_one(cfg, "eval_dataset", context) if cfg.eval_dataset else None
    val_size = cfg.val_size or 0
    if val_size > 0:
        if evaluation is not None:
            raise ConfigError("val_size", "set either val_size or eval_dataset, not both")
        test_size = int(val_size) if val_size > 1 else float(val_size)
        if len(train) < 2 or (isinstance(test_size, int) and test_size >= len(train)):
            raise ConfigError("val_size", f"{val_size} leaves no training rows out of {len(train)}")
        parts = train.train_test_split(test_size=test_size, seed=cfg.seed)
        train, evaluation = parts["train"], parts["test"]
    return DatasetSplits(train=train, eval=evaluation)


def _build_one(cfg: TrainConfig, key: str, context: dict[str, Any]) -> Dataset:
    parts = []
    for attr in resolve_datasets(getattr(cfg, key), cfg.dataset_dir, key=key):
        raw = load_raw(
            attr,
            cache_dir=cfg.cache_dir,
            seed=cfg.seed,
            max_samples=cfg.max_samples,
        )
        check_columns(attr, raw.column_names, stage=context["stage"])
        parts.append(
            to_messages(
                raw, attr, num_proc=context["num_proc"], load_from_cache_file=context["load_from_cache_file"]
            )
        )
    dataset = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
    tokenized = _tokenize(dataset, context)
    if len(tokenized) == 0:
        raise ConfigError(
            key,
            f"no usable rows in {getattr(cfg, key)} for stage {context['stage']} (check formatting/columns)",
        )
    if context["stage"] != "pt" and len(tokenized) < len(dataset):
        dropped = len(dataset) - len(tokenized)
        _note(f"{key}: dropped {dropped} of {len(dataset)} rows (broken turns, or nothing left to learn)")
    return tokenized


def _tokenize(dataset: Dataset, context: dict[str, Any]) -> Dataset:
    stage = context["stage"]
    kwargs: dict[str, Any] = {"tokenizer": context["tokenizer"], "cutoff_len": context["cutoff_len"]}
    if stage == "pt":
        function, kwargs["packing"] = tokenize_pt, context["packing"]
    else:
        tokenizers = {"sft": tokenize_sft, KTO_STAGE: tokenize_kto}
        function, kwargs["chat"] = tokenizers.get(stage, tokenize_pairwise), context["chat"]
    return dataset.map(
        function,
        batched=True,
        fn_kwargs=kwargs,
        remove_columns=dataset.column_names,
        num_proc=context["num_proc"],
        load_from_cache_file=context["load_from_cache_file"],
        desc=f"Tokenizing ({stage})",
    )


def build_collator(cfg: TrainConfig, tokenizer, *, stage: str) -> Callable[[list[dict]], dict]:
    """Padding for pt/sft (packing: one flattened row), chosen-then-rejected pairs for rm/dpo."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    if stage in PAIRWISE_STAGES or stage == KTO_STAGE:
        packing_enabled(cfg, stage)  # raises if packing was asked for
        return PairwiseCollator(pad_id) if stage in PAIRWISE_STAGES else KTOCollator(pad_id)
    if stage not in STAGES:
        raise ConfigError("stage", f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    return PackingCollator() if packing_enabled(cfg, stage) else PaddingCollator(pad_id)
