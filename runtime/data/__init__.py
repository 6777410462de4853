"""Datasets for the runtime: resolve names, load files, normalize formats, tokenize per stage, batch.

    splits = build_datasets(cfg, tokenizer, stage="sft")     # under runtime.data.once on several ranks
    collator = build_collator(cfg, tokenizer, stage="sft")

Every `datasets.map` is fingerprinted and cached (in `cache_dir`, else the HF datasets cache): a later
process with the same data file (path and modification time), tokenizer, template, code and
keys reads the cache files instead of mapping, whether it is a second start or a rank that waited for
the builder (runtime.data.once). Config field names are LLaMA-Factory's.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from datasets import Dataset, DatasetDict, concatenate_datasets, interleave_datasets

from runtime.config import ConfigError, TrainConfig
from runtime.contract.say import note
from runtime.data.formats import KTO_STAGE, MULTIMODAL, PAIRWISE_STAGES, check_columns, to_messages
from runtime.data.loaders import load_raw
from runtime.data.packing import (
    IGNORE_INDEX,
    PACKING_ATTENTION,
    attention_of,
    check_packing_support,
    pack_rows,
    row_capacity,
)
from runtime.data.registry import resolve_datasets
from runtime.data.templates import NAMED_TEMPLATES, ChatFormat, resolve_template
from runtime.data.tokenize import (
    tokenize_generate,
    tokenize_kto,
    tokenize_pairwise,
    tokenize_pt,
    tokenize_sft,
)
from runtime.mm.families import unsupported_family

__all__ = [
    "IGNORE_INDEX",
    "NAMED_TEMPLATES",
    "PACKING_ATTENTION",
    "attention_of",
    "ChatFormat",
    "DatasetSplits",
    "build_collator",
    "build_datasets",
    "check_packing_support",
    "packing_mode",
    "resolve_template",
    "worker_count",
]


@dataclass
class DatasetSplits:
    train: Dataset | None  # None in a run that only predicts (do_predict, do_train false)
    eval: Dataset | None  # with do_predict: the rows to generate for (tokenize_generate)


def worker_count(requested: int | None) -> int | None:
    """preprocessing_num_workers capped at the CPUs this process may use (None/1: no worker processes)."""
    if not requested or requested <= 1:
        return None
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if requested > available:
        note(f"preprocessing_num_workers={requested} capped to {available} (CPUs available)")
        requested = available
    return requested if requested > 1 else None


def packing_mode(cfg: TrainConfig, stage: str) -> str:
    """off | rows (LLaMA-Factory packing) | neat (neat_packing) | padding_free (runtime.perf.plan's lever:
    flattened rows, see packing.py).

    Reads the resolved config: `packing`'s default (on for pt, off otherwise) and which stages may pack
    are the config rules' (runtime/config/rules.py). For pt, packing means documents concatenated into
    cutoff_len blocks; preference pairs are padded per batch."""
    if stage in PAIRWISE_STAGES or stage == KTO_STAGE:
        return "off"
    if stage == "sft" and cfg.neat_packing:
        return "neat"
    if stage == "sft" and cfg.packing:
        return "rows"
    return "padding_free" if cfg.padding_free else "off"


def build_datasets(cfg: TrainConfig, tokenizer, *, stage: str) -> DatasetSplits:
    """Tokenized train (and eval) rows for `stage`; see runtime-contracts for the columns.

    With `tokenized_path`, the rows saved there by an earlier run are loaded and nothing is tokenized;
    otherwise they are built and saved there (on several ranks only the builder gets here with the
    folder empty: runtime.data.once).
    """
    if cfg.tokenized_path and has_tokenized_data(cfg.tokenized_path):
        return load_tokenized(cfg)
    if cfg.tokenized_path and cfg.streaming:
        raise ConfigError("tokenized_path", "a stream cannot be saved; tokenize once without streaming")
    splits = _build_splits(cfg, tokenizer, stage=stage)
    if cfg.tokenized_path:
        save_tokenized(cfg.tokenized_path, splits)
    return splits


def has_tokenized_data(path: str) -> bool:
    """LLaMA-Factory's test: a directory that is not empty (written by save_to_disk)."""
    return os.path.isdir(path) and len(os.listdir(path)) > 0


def save_tokenized(path: str, splits: DatasetSplits) -> None:
    """save_to_disk into a sibling folder, then one rename: a run killed while saving leaves no
    half-written folder that a later run (has_tokenized_data) would take for a complete one."""
    parts = {"train": splits.train}
    if splits.eval is not None:
        parts["validation"] = splits.eval
    final = os.path.abspath(path)
    partial = f"{final}.partial-{os.getpid()}"
    DatasetDict(parts).save_to_disk(partial)
    if os.path.isdir(final) and not os.listdir(final):
        os.rmdir(final)  # an empty folder the user made counts as "not saved yet"
    try:
        os.rename(partial, final)
    except OSError:  # another builder (a node that does not share this folder's parent?) was first
        import shutil

        shutil.rmtree(partial, ignore_errors=True)
        if not has_tokenized_data(final):
            raise
    note(f"tokenized datasets saved to {path}; later runs with tokenized_path load them")


def load_tokenized(cfg: TrainConfig) -> DatasetSplits:
    from datasets import load_from_disk

    from runtime.data.tokenized import saved_splits, split_problem

    splits = saved_splits(cfg.tokenized_path)
    problem = split_problem(cfg, splits) if splits is not None else None
    if problem:  # before the model loads, not as transformers' eval_dataset error on every rank
        raise ConfigError("tokenized_path", problem)
    try:
        loaded = load_from_disk(cfg.tokenized_path)
    except Exception as exc:  # not a saved dataset: say which key, not a traceback
        raise ConfigError("tokenized_path", f"{cfg.tokenized_path} holds no saved dataset: {exc}") from exc
    if not isinstance(loaded, DatasetDict):
        loaded = DatasetDict({"train": loaded})
    note(f"loaded tokenized datasets from {cfg.tokenized_path}; dataset keys are not read")
    train, evaluation = loaded.get("train"), loaded.get("validation")
    if train is None:
        raise ConfigError("tokenized_path", f"{cfg.tokenized_path} has no train split")
    if cfg.streaming:
        train = train.to_iterable_dataset()
    return DatasetSplits(train=train, eval=evaluation)


def _build_splits(cfg: TrainConfig, tokenizer, *, stage: str) -> DatasetSplits:
    mode = packing_mode(cfg, stage)
    cutoff_len = cfg.cutoff_len
    chat = None
    if stage != "pt" or cfg.template:  # pt: a named template still fixes EOS and is saved (LLaMA-Factory)
        chat = resolve_template(
            cfg.template,
            tokenizer,
            enable_thinking=cfg.enable_thinking,
            preserve_thinking=cfg.preserve_thinking,
            default_system=cfg.default_system,
        )
    streaming = bool(cfg.streaming)
    context = {
        "stage": stage,
        "tokenizer": tokenizer,
        "chat": chat,
        # LLaMA-Factory packs into cutoff_len - 1 (and pads each row to cutoff_len): the same examples share
        # a row here; rows are padded per batch instead.
        "cutoff_len": cutoff_len - 1 if mode in ("rows", "neat") and cutoff_len > 1 else cutoff_len,
        "mode": mode,
        "pt_packing": bool(cfg.packing),
        "train_on_prompt": cfg.train_on_prompt,
        "mask_history": cfg.mask_history,
        "tool_format": cfg.tool_format,
        "streaming": streaming,
        # datasets.map options: a stream is mapped lazily, without worker processes or a cache.
        "map": {}
        if streaming
        else {
            "num_proc": worker_count(cfg.preprocessing_num_workers),
            "load_from_cache_file": not cfg.overwrite_cache,
        },
    }
    if cfg.do_predict:  # sft only, and never streamed: the config rules (runtime/config/prediction.py)
        return _predict_splits(cfg, context)
    if not cfg.dataset:
        raise ConfigError("dataset", "no dataset given: name entries of dataset_info.json or data files")
    train = _build_one(cfg, "dataset", context)
    evaluation = _build_one(cfg, "eval_dataset", context) if cfg.eval_dataset else None
    val_size = cfg.val_size or 0
    if val_size > 0:
        if evaluation is not None:
            raise ConfigError("val_size", "set either val_size or eval_dataset, not both")
        if streaming:  # LLaMA-Factory: the first val_size examples of the stream
            return DatasetSplits(train=train.skip(int(val_size)), eval=train.take(int(val_size)))
        test_size = int(val_size) if val_size > 1 else float(val_size)
        if len(train) < 2 or (isinstance(test_size, int) and test_size >= len(train)):
            raise ConfigError("val_size", f"{val_size} leaves no training rows out of {len(train)}")
        parts = train.train_test_split(test_size=test_size, seed=cfg.seed)
        train, evaluation = parts["train"], parts["test"]
    if streaming:
        train = train.shuffle(seed=cfg.seed, buffer_size=cfg.buffer_size)
    return DatasetSplits(train=train, eval=evaluation)


def _predict_splits(cfg: TrainConfig, context: dict[str, Any]) -> DatasetSplits:
    """do_predict: LLaMA-Factory's eval set, tokenized for generation (tokenize_generate): eval_dataset;
    else val_size's held-out rows of dataset, split before tokenizing as LLaMA-Factory splits (training
    takes the rest); else, in a run that only predicts, dataset itself."""
    generate = {**context, "generate": True, "mode": "off", "cutoff_len": cfg.cutoff_len}
    if cfg.eval_dataset and cfg.val_size:
        raise ConfigError("val_size", "set either val_size or eval_dataset, not both")
    if cfg.eval_dataset:
        train = _build_one(cfg, "dataset", context) if cfg.do_train else None
        return DatasetSplits(train=train, eval=_build_one(cfg, "eval_dataset", generate))
    if not cfg.val_size:
        return DatasetSplits(train=None, eval=_build_one(cfg, "dataset", generate))
    messages = _messages(cfg, "dataset", context)
    test_size = int(cfg.val_size) if cfg.val_size > 1 else float(cfg.val_size)
    if len(messages) < 2 or (isinstance(test_size, int) and test_size >= len(messages)):
        raise ConfigError("val_size", f"{cfg.val_size} leaves no training rows out of {len(messages)}")
    parts = messages.train_test_split(test_size=test_size, seed=cfg.seed)
    train = _tokenized(cfg, "dataset", parts["train"], context) if cfg.do_train else None
    return DatasetSplits(train=train, eval=_tokenized(cfg, "dataset", parts["test"], generate))


def _build_one(cfg: TrainConfig, key: str, context: dict[str, Any]) -> Any:
    return _tokenized(cfg, key, _messages(cfg, key, context), context)


def _messages(cfg: TrainConfig, key: str, context: dict[str, Any]) -> Any:
    """The datasets `key` names, loaded, converted to messages and mixed."""
    parts = []
    family = unsupported_family(cfg.model_name_or_path)  # a vision-language model trained on text
    for attr in resolve_datasets(getattr(cfg, key), cfg.dataset_dir, key=key):
        raw = load_raw(
            attr,
            cache_dir=cfg.cache_dir,
            seed=cfg.seed,
            max_samples=cfg.max_samples,
            streaming=context["streaming"],
            num_proc=context["map"].get("num_proc"),
        )
        check_columns(attr, list(raw.column_names or []), stage=context["stage"], family=family)
        messages = to_messages(raw, attr, **context["map"])
        if not context["streaming"]:
            media = _first_media(messages)
            if media:
                raise ConfigError(key, f"{attr.where()}: {media} in the text: {MULTIMODAL}")
        parts.append(messages)
    return _mix(parts, cfg)


def _tokenized(cfg: TrainConfig, key: str, dataset: Any, context: dict[str, Any]) -> Any:
    tokenized = _tokenize(dataset, context)
    if context["streaming"]:
        return tokenized
    if len(tokenized) == 0:
        raise ConfigError(
            key,
            f"no usable rows in {getattr(cfg, key)} for stage {context['stage']} (check formatting/columns)",
        )
    if context["stage"] != "pt" and context["mode"] not in ("rows", "neat") and len(tokenized) < len(dataset):
        dropped = len(dataset) - len(tokenized)
        note(f"{key}: dropped {dropped} of {len(dataset)} rows (broken turns, or nothing left to learn)")
    return tokenized


def _first_media(messages: Dataset) -> str:
    """The first media placeholder in the converted rows ("" for none), read as one arrow column: a
    Python loop over the column took 7-14 s for 50,000 rows, on every start, cache or not."""
    import pyarrow.compute as pc

    column = messages.with_format("arrow")["_media"]
    found = pc.filter(column, pc.not_equal(column, ""))
    return found[0].as_py() if len(found) else ""


def _mix(parts: list[Any], cfg: TrainConfig) -> Any:
    """LLaMA-Factory's mix_strategy: concat, or datasets.interleave_datasets stopping when the first
    (interleave_under) or the last (interleave_over) dataset runs out."""
    if len(parts) == 1:
        return parts[0]
    if cfg.mix_strategy == "concat":
        return concatenate_datasets(parts)
    stopping = {"interleave_under": "first_exhausted", "interleave_over": "all_exhausted"}[cfg.mix_strategy]
    probs = cfg.interleave_probs if isinstance(cfg.interleave_probs, list) else None
    return interleave_datasets(parts, probabilities=probs, seed=cfg.seed, stopping_strategy=stopping)


def _tokenize(dataset: Any, context: dict[str, Any]) -> Any:
    stage, mode = context["stage"], context["mode"]
    kwargs: dict[str, Any] = {"tokenizer": context["tokenizer"], "cutoff_len": context["cutoff_len"]}
    function: Callable[..., dict[str, list]]
    if context.get("generate"):  # do_predict: prompt and reply apart, never packed (mode "off")
        function = tokenize_generate
        kwargs.update(chat=context["chat"], tool_format=context["tool_format"])
    elif stage == "pt":
        function = tokenize_pt
        kwargs.update(packing=context["pt_packing"], keep_apart=mode == "padding_free")
    elif stage == "sft":
        function = tokenize_sft
        kwargs.update(
            chat=context["chat"],
            train_on_prompt=context["train_on_prompt"],
            mask_history=context["mask_history"],
            tool_format=context["tool_format"],
        )
    else:
        function = tokenize_kto if stage == KTO_STAGE else tokenize_pairwise
        kwargs.update(chat=context["chat"], tool_format=context["tool_format"])
    if context["streaming"]:
        function = functools.partial(_refuse_media, function)
    columns = list(dataset.column_names or [])
    options = dict(context["map"])
    if not context["streaming"]:
        options["desc"] = f"Tokenizing ({stage})"
    tokenized = dataset.map(function, batched=True, fn_kwargs=kwargs, remove_columns=columns, **options)
    if mode in ("rows", "neat"):
        if not context["streaming"]:
            options["desc"] = "Packing rows of cutoff_len"
        tokenized = tokenized.map(
            pack_rows,
            batched=True,
            batch_size=1000,  # LLaMA-Factory's preprocessing_batch_size: rows are packed within such a batch
            fn_kwargs={"capacity": context["cutoff_len"], "neat": mode == "neat"},
            remove_columns=list(tokenized.column_names or []),
            **options,
        )
    return tokenized


def _refuse_media(function: Callable, batch: dict, **kwargs: Any) -> dict:
    """Streams are not read ahead: a media placeholder stops the run at the batch that holds it."""
    media = next((m for m in batch.get("_media", []) if m), "")
    if media:
        raise ConfigError("dataset", f"{media} in the text: {MULTIMODAL}")
    return function(batch, **kwargs)


def build_collator(
    cfg: TrainConfig, tokenizer, *, stage: str, attention: str | None = None
) -> Callable[[list[dict]], dict]:
    """Padding for pt/sft (neat rows without attention_mask; padding_free: flattened rows of at most
    cutoff_len, or one row when `attention`, the model's attn_implementation, is variable-length),
    chosen-then-rejected pairs for rm/dpo."""
    # Imported here: collators need torch, and `xgen-runtime check` reads datasets without it.
    from runtime.data.collators import (
        KTOCollator,
        NeatPackingCollator,
        PackingCollator,
        PaddingCollator,
        PairwiseCollator,
    )

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    if stage in PAIRWISE_STAGES or stage == KTO_STAGE:
        return PairwiseCollator(pad_id) if stage in PAIRWISE_STAGES else KTOCollator(pad_id)
    mode = packing_mode(cfg, stage)
    if mode == "neat":
        return NeatPackingCollator(pad_id)
    if mode == "padding_free":
        return PackingCollator(pad_id, max_row=row_capacity(attention, cfg.cutoff_len))
    return PaddingCollator(pad_id)
