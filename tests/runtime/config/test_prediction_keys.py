"""Prediction's keys (runtime/config/prediction.py): LLaMA-Factory's nlg_eval example parses as a predict-only
run; every combination that cannot generate is one line naming the key, at parse time, and a node without
the scorers is one line with the pip command at start, before any model loads. What predicts is in
tests/runtime/stages/test_predict.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from runtime.config import ConfigError, parse_train_config
from runtime.config.rules import check_at_start

EXAMPLE = Path(__file__).parents[1] / "lf_examples" / "nlg_eval" / "llama3_lora_predict.yaml"
BASE = {
    "model_name_or_path": "m",
    "eval_dataset": "e",
    "do_predict": True,
    "predict_with_generate": True,
}


def test_llamafactory_predict_example_is_a_predict_only_run() -> None:
    cfg = parse_train_config(yaml.safe_load(EXAMPLE.read_text()))
    assert cfg.do_predict and cfg.predict_with_generate
    assert cfg.do_train is False and cfg.do_eval is False  # LLaMA-Factory's defaults; it writes neither
    assert any("do_train not given: false with do_predict" in n for n in cfg.notes)
    assert (cfg.max_new_tokens, cfg.do_sample, cfg.temperature, cfg.top_p) == (8, True, 0.95, 0.7)


def test_training_and_predicting_is_allowed_when_asked() -> None:
    cfg = parse_train_config({**BASE, "dataset": "d", "do_train": True, "deepspeed": "z2"})
    assert cfg.do_train and cfg.do_eval is False and cfg.strategy == "deepspeed-z2"


REFUSED = [
    # (keys over BASE, the key named, the start of its message)
    ({"predict_with_generate": False}, "do_predict", "needs predict_with_generate: true"),
    ({"stage": "dpo", "dataset": "d"}, "do_predict", "generation is for stage sft"),
    ({"deepspeed": "z3"}, "do_predict", "generation under DeepSpeed ZeRO-3 is not supported"),
    ({"fsdp": True}, "do_predict", "generation under FSDP is not supported"),
    ({"do_eval": True}, "predict_with_generate", "generating in evaluation is not supported"),
    (
        {"do_train": True, "dataset": "d", "eval_strategy": "steps", "val_size": 0.1, "eval_dataset": None},
        "predict_with_generate",
        "generating in evaluation is not supported",
    ),
    ({"do_train": True, "dataset": "d", "eval_dataset": None}, "do_predict", "needs a predict set"),
    ({"eval_dataset": None}, "eval_dataset", "do_predict needs the rows to predict"),
    ({"tokenized_path": "t"}, "tokenized_path", "holds training rows"),
    ({"streaming": True, "max_steps": 5}, "do_predict", "predicts a whole dataset in order"),
    ({"max_new_tokens": 0, "max_length": 0}, "max_new_tokens", "max_new_tokens or max_length must be > 0"),
    ({"num_beams": 0}, "num_beams", "must be >= 1"),
    ({"temperature": 0.0}, "temperature", "must be > 0 when sampling"),
    ({"top_p": 0.0}, "top_p", "must be in (0, 1]"),
    (
        {"predict_with_generate": True, "do_predict": False, "stage": "rm", "dataset": "d"},
        "predict_with_generate",
        "generation is for stage sft",
    ),
]


@pytest.mark.parametrize(("extra", "key", "message"), REFUSED, ids=[str(r[0]) for r in REFUSED])
def test_refused_in_one_line_naming_the_key(extra: dict, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_train_config({**BASE, **extra}, key_prefix="train.")
    assert info.value.key == f"train.{key}"
    assert info.value.message.startswith(message), info.value.message
    assert "\n" not in str(info.value)


def test_greedy_ignores_the_temperature() -> None:
    cfg = parse_train_config({**BASE, "do_sample": False, "temperature": 0.0})
    assert not cfg.do_sample


def test_generation_keys_without_do_predict_are_noted() -> None:
    cfg = parse_train_config({"model_name_or_path": "m", "dataset": "d", "temperature": 0.5, "num_beams": 4})
    assert "temperature, num_beams ignored: do_predict is false (generation keys)" in cfg.notes
    alone = parse_train_config({"model_name_or_path": "m", "dataset": "d", "predict_with_generate": True})
    assert any("predict_with_generate has no effect without do_predict" in n for n in alone.notes)


def test_missing_scorers_are_one_line_with_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    here = {"jieba": True, "nltk": True, "rouge_chinese": None}  # one of the three missing
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: here[name] if name in here else real(name, *a)
    )
    cfg = parse_train_config(BASE)
    with pytest.raises(ConfigError) as info:
        check_at_start(cfg, world_size=2)
    assert info.value.key == "predict_with_generate"
    assert info.value.message.endswith("missing here: rouge_chinese: pip install jieba nltk rouge-chinese")
