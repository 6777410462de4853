"""do_predict on 2 gloo ranks: LLaMA-Factory's extras/nlg_eval example (paths swapped, over an adapter
trained here), and a run that trains and then predicts; every row once, in dataset order, as one process
writes it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from trainer_harness import base_config, run_inprocess, run_torchrun, write_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        any(importlib.util.find_spec(m) is None for m in ("jieba", "nltk", "rouge_chinese")),
        reason="the scorers are not installed: pip install jieba nltk rouge-chinese",
    ),
]

EXAMPLE = Path(__file__).parents[1] / "lf_examples" / "nlg_eval" / "llama3_lora_predict.yaml"
METRIC_KEYS = {"predict_bleu-4", "predict_rouge-1", "predict_rouge-2", "predict_rouge-l"}
RUNTIME_KEYS = {"predict_runtime", "predict_samples_per_second", "predict_steps_per_second"}


@pytest.fixture(scope="module")
def adapter(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter from 2 quick steps with the llama3 template, one process."""
    root = tmp_path_factory.mktemp("adapter")
    cfg = base_config(tiny_dir, root / "out", finetuning_type="lora", template="llama3", max_steps=2)
    assert run_inprocess(write_config(root / "train.yaml", cfg)) == 0
    return root / "out"


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "generated_predictions.jsonl").read_text().splitlines()]


def _replies(data: Path, name: str, count: int) -> list[str]:
    """The first `count` replies of a tiny dataset as stored (alpaca `output`, sharegpt's last turn)."""
    if name == "tiny_alpaca":
        return [row["output"] for row in json.loads((data / "tiny_alpaca.json").read_text())[:count]]
    rows = [json.loads(line) for line in (data / "tiny_sharegpt.jsonl").read_text().splitlines()[:count]]
    return [row["conversations"][-1]["value"] for row in rows]


def test_lf_nlg_eval_example_predicts_on_two_ranks(tiny_dir: Path, adapter: Path, tmp_path: Path) -> None:
    out = tmp_path / "predict"
    text = EXAMPLE.read_text().replace("TINY", str(tiny_dir)).replace("ADAPTER", str(adapter))
    path = tmp_path / EXAMPLE.name
    path.write_text(text.replace("OUT", str(out)))
    proc = run_torchrun(path, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "world_size=2" in proc.stdout and "predict only" in proc.stdout
    lines = _lines(out)
    data = tiny_dir / "data"
    assert [line["label"] for line in lines] == _replies(data, "tiny_alpaca", 5) + _replies(
        data, "tiny_sharegpt", 5
    )
    assert all(line["prompt"].endswith("<|start_header_id|>assistant<|end_header_id|>\n\n") for line in lines)
    results = json.loads((out / "predict_results.json").read_text())
    assert set(results) == METRIC_KEYS | RUNTIME_KEYS
    assert all(0 <= results[k] <= 100 for k in METRIC_KEYS)


def test_train_then_predict_on_two_ranks_equals_one_process(tiny_dir: Path, tmp_path: Path) -> None:
    """Sampled replies (LLaMA-Factory's default decoding; each row draws from seed + its index) to 7
    held-out rows, an uneven share of 4 and 3, from the model trained in the same run, and from its saved
    adapter in one process: the same text, row for row, and not the same for every row."""
    keys = dict(
        finetuning_type="lora",
        template="llama3",
        max_steps=2,
        eval_dataset="reverse_sft_eval",
        do_predict=True,
        predict_with_generate=True,
        max_new_tokens=6,
        per_device_eval_batch_size=1,
        max_samples=7,
    )
    trained = tmp_path / "trained"
    cfg = base_config(tiny_dir, trained, **keys, dataset="reverse_sft", do_train=True)
    proc = run_torchrun(write_config(tmp_path / "train.yaml", cfg), tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "saved adapter" in proc.stdout and "predict: 7 rows on 2 rank(s)" in proc.stdout
    alone = tmp_path / "alone"
    # the levers perf auto chose for the training run (CPU), so both generate with the same kernels
    again = base_config(
        tiny_dir, alone, **keys, adapter_name_or_path=str(trained), flash_attn="sdpa_varlen", fused_lora=True
    )
    again.pop("dataset")
    assert run_inprocess(write_config(tmp_path / "predict.yaml", again)) == 0
    two, one = _lines(trained), _lines(alone)
    assert len(two) == 7
    assert two == one
    assert len({line["predict"] for line in two}) > 1, two  # the rows are told apart
    rows = json.loads((tiny_dir / "data" / "reverse_sft_eval.json").read_text())[:7]
    assert [line["label"] for line in two] == [row["output"] for row in rows]
    assert json.loads((trained / "predict_results.json").read_text()).keys() == METRIC_KEYS | RUNTIME_KEYS
