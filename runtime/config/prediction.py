"""Prediction (`do_predict` with `predict_with_generate`, LLaMA-Factory's extras/nlg_eval): its keys' rules.

`predict_defaults` runs before the dataset rules (a predict-only config has no `dataset`),
`check_prediction` after the strategy is resolved, and `prediction_problems` at start on each node (the
scorers' packages). The generation itself is runtime/fit/predict.py. Torch-free.
"""

from __future__ import annotations

import importlib.util

from runtime.config.schema import ConfigError, TrainConfig

# LLaMA-Factory's GeneratingArguments (0.9.5), all passed to generate but skip_special_tokens (decoding).
GENERATION_KEYS = (
    "max_new_tokens",
    "max_length",
    "do_sample",
    "temperature",
    "top_p",
    "top_k",
    "num_beams",
    "repetition_penalty",
    "length_penalty",
    "skip_special_tokens",
)
# The scorers LLaMA-Factory's ComputeSimilarity uses (module names): its BLEU-4 and ROUGE numbers are
# theirs, so the same packages score here (runtime/fit/similarity.py).
SCORERS = ("jieba", "nltk", "rouge_chinese")
SCORERS_PIP = "pip install jieba nltk rouge-chinese"


def predict_defaults(cfg: TrainConfig, given: set[str], p: str) -> None:
    """LLaMA-Factory's defaults for a predicting config: do_train and do_eval false unless written (its
    nlg_eval example writes neither; this runtime's do_train otherwise defaults to true)."""
    if not cfg.do_predict:
        return
    if "do_train" not in given and cfg.do_train:
        cfg.do_train = False
        cfg.notes.append(f"{p}do_train not given: false with do_predict, as in LLaMA-Factory: predict only")
    if cfg.do_eval is None:
        cfg.do_eval = False  # the eval rows are the predict rows: prompts without replies, no loss


def check_prediction(cfg: TrainConfig, p: str) -> None:
    """The stage, the predict set and the strategy a prediction needs, before anything loads."""
    if not (cfg.do_predict or cfg.predict_with_generate):
        return
    if cfg.stage != "sft":
        key = "do_predict" if cfg.do_predict else "predict_with_generate"
        raise ConfigError(p + key, f"generation is for stage sft (as in LLaMA-Factory); stage is {cfg.stage}")
    evaluating = cfg.do_eval or cfg.eval_strategy != "no"
    if cfg.predict_with_generate and evaluating:
        raise ConfigError(
            p + "predict_with_generate",
            "generating in evaluation is not supported (evaluation reports the loss); do_predict generates "
            "for the eval set and scores it in predict_results.json: drop do_eval / eval_strategy",
        )
    if not cfg.do_predict:
        cfg.notes.append(f"{p}predict_with_generate has no effect without do_predict: true")
        return
    if not cfg.predict_with_generate:
        raise ConfigError(
            p + "do_predict",
            "needs predict_with_generate: true (as in LLaMA-Factory: the predictions are generated text)",
        )
    _check_predict_set(cfg, p)
    _check_strategy(cfg, p)
    _check_generation(cfg, p)


def _check_predict_set(cfg: TrainConfig, p: str) -> None:
    if cfg.streaming:
        raise ConfigError(p + "do_predict", "predicts a whole dataset in order; drop streaming")
    if cfg.tokenized_path:
        raise ConfigError(
            p + "tokenized_path",
            "holds training rows; prediction tokenizes its own prompts: drop tokenized_path with do_predict",
        )
    if cfg.eval_dataset or cfg.val_size:
        return
    if cfg.do_train:
        raise ConfigError(
            p + "do_predict",
            "needs a predict set apart from the training data: eval_dataset, or val_size > 0",
        )
    if not cfg.dataset:
        raise ConfigError(p + "eval_dataset", "do_predict needs the rows to predict: eval_dataset or dataset")
    cfg.notes.append(
        f"{p}do_predict: no eval_dataset or val_size (LLaMA-Factory asks for one): predicting dataset"
    )


def _check_strategy(cfg: TrainConfig, p: str) -> None:
    """Generation runs on each rank's whole model. ZeRO-3 and FSDP keep 1/N of every weight per rank, and a
    rank's generate would need every other rank in each forward step until the longest reply ends."""
    if cfg.strategy == "deepspeed-z3":
        raise ConfigError(
            p + "do_predict",
            "generation under DeepSpeed ZeRO-3 is not supported (as in LLaMA-Factory): the weights are "
            "partitioned; predict with ZeRO-0/1/2 or without deepspeed, from the saved adapter or model",
        )
    if cfg.fsdp:
        raise ConfigError(
            p + "do_predict",
            "generation under FSDP is not supported: the weights are sharded; predict in a run without "
            "fsdp (DDP), from the saved adapter or model",
        )


def _check_generation(cfg: TrainConfig, p: str) -> None:
    """The ranges transformers' GenerationConfig would refuse only after the model has loaded."""
    if cfg.max_new_tokens <= 0 and cfg.max_length <= 0:
        raise ConfigError(p + "max_new_tokens", "max_new_tokens or max_length must be > 0")
    if cfg.num_beams < 1:
        raise ConfigError(p + "num_beams", f"must be >= 1; got {cfg.num_beams}")
    if cfg.top_k < 0:
        raise ConfigError(p + "top_k", f"must be >= 0; got {cfg.top_k}")
    if cfg.do_sample and not 0 < cfg.top_p <= 1:
        raise ConfigError(p + "top_p", f"must be in (0, 1]; got {cfg.top_p}")
    if cfg.do_sample and cfg.temperature <= 0:
        raise ConfigError(
            p + "temperature", f"must be > 0 when sampling; got {cfg.temperature} (greedy: do_sample: false)"
        )
    if cfg.repetition_penalty <= 0:
        raise ConfigError(p + "repetition_penalty", f"must be > 0; got {cfg.repetition_penalty}")


def prediction_problems(cfg: TrainConfig, p: str = "") -> list[ConfigError]:
    """At start on each node, before any model loads: the scorers' packages are installed."""
    if not cfg.do_predict:
        return []
    missing = [m for m in SCORERS if importlib.util.find_spec(m) is None]
    if not missing:
        return []
    return [
        ConfigError(
            p + "predict_with_generate",
            f"BLEU-4 and ROUGE are scored as LLaMA-Factory scores them, with jieba, nltk and rouge-chinese; "
            f"missing here: {', '.join(missing)}: {SCORERS_PIP}",
        )
    ]
