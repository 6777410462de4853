"""do_predict: a reply generated for every predict row, written as LLaMA-Factory writes it.

LLaMA-Factory 0.9.5 (train/sft/workflow.py, trainer.py save_predictions, metric.py) predicts through
Seq2SeqTrainer.predict: left-padded prompts, `model.generate` with its GeneratingArguments, the stop ids
(the tokenizer's EOS and its extra special tokens) and the pad id; then `generated_predictions.jsonl`, one
JSON object per row {"prompt", "predict", "label"}, and `predict_results.json` with `predict_bleu-4`,
`predict_rouge-1/-2/-l` (runtime/fit/similarity.py) and Trainer's `predict_runtime`,
`predict_samples_per_second`, `predict_steps_per_second`.

Here each rank takes rows rank, rank + W, rank + 2W, … (an uneven share is one row shorter: no padding rows
to drop, unlike a DistributedSampler's), generates them in batches of per_device_eval_batch_size on its own
whole model, and shares (row, reply ids) with the others; rank 0 writes the rows in dataset order. Each batch
samples from `seed` + its first row's index, so with per_device_eval_batch_size 1 a row's reply is the same on
any number of ranks (LLaMA-Factory's depends on the world size). A reply ends at its first stop token: the
padding generate adds after it (LLaMA-Factory writes that padding too when skip_special_tokens is false)
is not part of it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from runtime.config import TrainConfig
from runtime.contract.files import write_atomic
from runtime.contract.say import say
from runtime.fit.similarity import METRICS, Similarity

PREDICTIONS = "generated_predictions.jsonl"
RESULTS = "predict_results.json"
_SAMPLING = ("temperature", "top_p", "top_k")


def stop_ids(tokenizer: Any) -> list[int]:
    """LLaMA-Factory's eos_token_id for generate: the tokenizer's EOS, then its extra special tokens (the
    template's other stop words among them), each once."""
    extra = getattr(tokenizer, "additional_special_tokens_ids", None)
    if not isinstance(extra, list):  # transformers 5: _extra_special_tokens, read as LLaMA-Factory reads it
        names = [str(t) for t in getattr(tokenizer, "_extra_special_tokens", [])]
        extra = tokenizer.convert_tokens_to_ids(names) if names else []
    ids = [tokenizer.eos_token_id, *(i for i in extra if i is not None and i != -1)]
    return list(dict.fromkeys(ids))


def generation_kwargs(cfg: TrainConfig, tokenizer: Any) -> dict[str, Any]:
    """LLaMA-Factory's gen_kwargs: GeneratingArguments.to_dict() (max_new_tokens when > 0, else max_length),
    the stop ids and the pad id. Without sampling, temperature/top_p/top_k are left out: greedy and beam
    search do not read them (transformers would warn that they are unused)."""
    kwargs: dict[str, Any] = {
        "do_sample": cfg.do_sample,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "top_k": cfg.top_k,
        "num_beams": cfg.num_beams,
        "repetition_penalty": cfg.repetition_penalty,
        "length_penalty": cfg.length_penalty,
    }
    if cfg.max_new_tokens > 0:
        kwargs["max_new_tokens"] = cfg.max_new_tokens
    else:
        kwargs["max_length"] = cfg.max_length
    if not cfg.do_sample:
        for key in _SAMPLING:
            kwargs.pop(key)
    kwargs["eos_token_id"] = stop_ids(tokenizer)
    kwargs["pad_token_id"] = tokenizer.pad_token_id
    return kwargs


def share(rows: int, rank: int, world_size: int) -> list[int]:
    """The rows this rank generates: every world_size-th, from its rank on."""
    return list(range(rank, rows, world_size))


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), padded on the left as LLaMA-Factory pads for generation."""
    width = max(len(p) for p in prompts)
    ids = [[pad_id] * (width - len(p)) + list(p) for p in prompts]
    mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
    return torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)


def reply_ids(new_tokens: list[int], stops: set[int]) -> list[int]:
    """The generated tokens up to and including the first stop token (then generate pads)."""
    for i, token in enumerate(new_tokens):
        if token in stops:
            return new_tokens[: i + 1]
    return new_tokens


def generate_share(
    cfg: TrainConfig, model: Any, tokenizer: Any, dataset: Any, rows: list[int]
) -> list[list[int]]:
    """Reply ids for `rows` of `dataset` (their input_ids), in batches of per_device_eval_batch_size."""
    from transformers import set_seed

    kwargs = generation_kwargs(cfg, tokenizer)
    stops = set(kwargs["eos_token_id"])
    device = next(model.parameters()).device
    batch_size = cfg.per_device_eval_batch_size
    replies: list[list[int]] = []
    model.eval()
    for start in range(0, len(rows), batch_size):
        prompts = dataset[rows[start : start + batch_size]]["input_ids"]
        input_ids, attention_mask = left_pad(prompts, tokenizer.pad_token_id)
        set_seed(cfg.seed + rows[start])  # sampling: the row's draw, whichever rank generates it
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                use_cache=True,  # the model config's use_cache is off for training
                **kwargs,
            )
        replies += [reply_ids(seq, stops) for seq in out[:, input_ids.shape[1] :].tolist()]
        if start // batch_size % 10 == 9:
            say(f"predict: {start + len(prompts)} of {len(rows)} rows on rank 0")
    return replies


def predict(cfg: TrainConfig, model: Any, tokenizer: Any, dataset: Any) -> dict[str, float] | None:
    """Generate for every row of `dataset` on all ranks; rank 0 writes output_dir/generated_predictions.jsonl
    and predict_results.json and returns the results (None on the other ranks)."""
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    total = len(dataset)
    say(
        f"predict: {total} rows on {world_size} rank(s), batch {cfg.per_device_eval_batch_size} per rank, "
        + ("sampling" if cfg.do_sample else f"{'beam search' if cfg.num_beams > 1 else 'greedy'}")
    )
    began = time.perf_counter()
    rows = share(total, rank, world_size)
    mine = list(zip(rows, generate_share(cfg, model, tokenizer, dataset, rows), strict=True))
    gathered: list[Any] = [mine]
    if distributed:  # all_gather, not gather: HCCL has no gather; the replies are token ids, small
        gathered = [None] * world_size
        dist.all_gather_object(gathered, mine)
    if rank != 0:
        return None
    replies = dict(pair for part in gathered for pair in part)
    assert sorted(replies) == list(range(total)), "every row once"
    results = write_predictions(cfg, tokenizer, dataset, [replies[i] for i in range(total)])
    runtime = time.perf_counter() - began  # as Trainer.predict's: generation, gathering and scoring
    steps = math.ceil(total / (cfg.per_device_eval_batch_size * world_size))
    results.update(
        predict_runtime=round(runtime, 4),
        predict_samples_per_second=round(total / runtime, 3),
        predict_steps_per_second=round(steps / runtime, 3),
    )
    from runtime.fit.outputs import write_json

    out = Path(cfg.output_dir)
    write_json(out / RESULTS, results)
    shown = ", ".join(f"{name} {results[f'predict_{name}']:.2f}" for name in METRICS)
    say(f"predict: wrote {out / PREDICTIONS} ({total} rows) and {RESULTS}: {shown}")
    return results


def write_predictions(
    cfg: TrainConfig, tokenizer: Any, dataset: Any, replies: list[list[int]]
) -> dict[str, float]:
    """generated_predictions.jsonl in LLaMA-Factory's form (the prompt decoded with its special tokens,
    prediction and label as skip_special_tokens says), and the scores of the rows (always decoded without
    special tokens, as LLaMA-Factory scores them)."""
    scorer = Similarity()
    skip = cfg.skip_special_tokens
    lines = []
    for row, reply in zip(dataset, replies, strict=True):
        label = row["labels"]
        scorer.row(
            tokenizer.decode(reply, skip_special_tokens=True),
            tokenizer.decode(label, skip_special_tokens=True),
        )
        record = {
            "prompt": tokenizer.decode(row["input_ids"], skip_special_tokens=False),
            "predict": tokenizer.decode(reply, skip_special_tokens=skip),
            "label": tokenizer.decode(label, skip_special_tokens=skip),
        }
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / PREDICTIONS, "".join(lines))
    return {f"predict_{name}": value for name, value in scorer.mean().items()}
