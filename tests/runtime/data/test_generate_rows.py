"""do_predict's rows (LLaMA-Factory's unsupervised processor): the prompt ending with the assistant header as
input_ids, the reply as labels; the predict set is eval_dataset, val_size's held-out raw rows, or, when
not training, dataset."""

from __future__ import annotations

import pytest

from runtime.config import ConfigError
from runtime.data import build_datasets

IGNORE = -100
PREDICT = {"do_predict": True, "predict_with_generate": True}


def test_generate_rows_are_the_sft_rows_split_at_the_reply(data_cfg, tiny_tokenizer) -> None:
    """One-turn rows: prompt + reply is the supervised row, and the reply is what sft trains on."""
    sft = build_datasets(data_cfg(dataset="reverse_sft_eval", template="llama3"), tiny_tokenizer, stage="sft")
    cfg = data_cfg(eval_dataset="reverse_sft_eval", template="llama3", **PREDICT)
    splits = build_datasets(cfg, tiny_tokenizer, stage="sft")
    assert splits.train is None and len(splits.eval) == len(sft.train) == 64
    for gen, sup in zip(splits.eval, sft.train, strict=True):
        assert gen["input_ids"] + gen["labels"] == sup["input_ids"]
        assert gen["labels"] == [t for t in sup["labels"] if t != IGNORE]
        prompt = tiny_tokenizer.decode(gen["input_ids"])
        assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_predict_set_is_eval_dataset_and_never_packed(data_cfg, tiny_tokenizer) -> None:
    cfg = data_cfg(
        dataset="tiny_alpaca", eval_dataset="tiny_sharegpt", do_train=True, neat_packing=True, **PREDICT
    )
    splits = build_datasets(cfg, tiny_tokenizer, stage="sft")
    assert "position_ids" in splits.train.column_names  # training rows are packed
    assert len(splits.eval) == 200 and "position_ids" not in splits.eval.column_names


def test_val_size_holds_out_raw_rows_as_llamafactory(data_cfg, tiny_tokenizer) -> None:
    """Split before tokenizing (LLaMA-Factory's split_dataset): training never sees a predicted prompt."""
    cfg = data_cfg(dataset="reverse_sft", val_size=0.1, do_train=True, template="llama3", **PREDICT)
    splits = build_datasets(cfg, tiny_tokenizer, stage="sft")
    assert len(splits.eval) == 45 and len(splits.train) == 403
    train = {tiny_tokenizer.decode(row["input_ids"]) for row in splits.train}
    for row in splits.eval:
        assert not any(text.startswith(tiny_tokenizer.decode(row["input_ids"])) for text in train)
    alone_cfg = data_cfg(dataset="reverse_sft", val_size=0.1, template="llama3", **PREDICT)
    alone = build_datasets(alone_cfg, tiny_tokenizer, stage="sft")
    assert alone.train is None and alone.eval["labels"] == splits.eval["labels"]


def test_without_eval_data_a_predict_only_run_predicts_dataset(data_cfg, tiny_tokenizer) -> None:
    cfg = data_cfg(dataset="reverse_sft_eval", **PREDICT)
    assert any("predicting dataset" in n for n in cfg.notes)
    splits = build_datasets(cfg, tiny_tokenizer, stage="sft")
    assert splits.train is None and len(splits.eval) == 64


def test_val_size_and_eval_dataset_together_are_refused(data_cfg, tiny_tokenizer) -> None:
    cfg = data_cfg(dataset="tiny_alpaca", eval_dataset="tiny_sharegpt", val_size=0.1, **PREDICT)
    with pytest.raises(ConfigError, match="set either val_size or eval_dataset"):
        build_datasets(cfg, tiny_tokenizer, stage="sft")
