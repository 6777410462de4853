"""LLaMA-Factory's data keys on real tokenized rows: mask_history, train_on_prompt, tools/tool_format,
mix_strategy, tokenized_path, packing/neat_packing, streaming, packing: null, and the multimodal refusal."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from runtime.config import ConfigError, parse_train_config
from runtime.data import build_collator, build_datasets

IGNORE = -100
TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "the city"}},
            "required": ["city"],
        },
    }
]
CALL = {"name": "get_weather", "arguments": {"city": "paris"}}
TOOL_ROW = {
    "system": "S",
    "tools": json.dumps(TOOLS),
    "conversations": [
        {"from": "human", "value": "weather in paris?"},
        {"from": "function_call", "value": json.dumps(CALL)},
        {"from": "observation", "value": '{"temp": 21}'},
        {"from": "gpt", "value": "it is 21 degrees"},
    ],
}
# LLaMA-Factory 0.9.5's qwen template + qwen tool format on TOOL_ROW (its Template.encode_multiturn output,
# decoded; written out here from that run).
QWEN_TOOL_TEXT = (
    "<|im_start|>system\nS\n\n# Tools\n\nYou may call one or more functions to assist with the user "
    "query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "the city"}}'
    ', "required": ["city"]}}}\n</tools>\n\nFor each function call, return a json object with function name '
    "and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    "<|im_start|>user\nweather in paris?<|im_end|>\n<|im_start|>assistant\n"
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "paris"}}\n</tool_call><|im_end|>\n'
    '<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response><|im_end|>\n'
    "<|im_start|>assistant\nit is 21 degrees<|im_end|>\n"
)


def _labelled(tokenizer, row) -> str:
    return tokenizer.decode(
        [t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != IGNORE]
    )


def _write(folder: Path, files: dict[str, list[dict]], info: dict) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        (folder / name).write_text(json.dumps(rows))
    (folder / "dataset_info.json").write_text(json.dumps(info))
    return str(folder)


def test_mask_history_and_train_on_prompt(data_cfg, tiny_tokenizer, tiny_dir: Path):
    source = [json.loads(x) for x in (tiny_dir / "data" / "tiny_sharegpt.jsonl").read_text().splitlines()]
    plain, last, everything = (
        build_datasets(data_cfg(dataset="tiny_sharegpt", **keys), tiny_tokenizer, stage="sft").train
        for keys in ({}, {"mask_history": True}, {"train_on_prompt": True})
    )
    multi = 0
    for src, a, b, c in zip(source, plain, last, everything, strict=True):
        assert a["input_ids"] == b["input_ids"] == c["input_ids"]  # same text, other labels
        replies = [t["value"] for t in src["conversations"] if t["from"] == "gpt"]
        multi += len(replies) > 1
        assert _labelled(tiny_tokenizer, a) == "".join(r + "<|im_end|>\n" for r in replies)
        assert _labelled(tiny_tokenizer, b) == replies[-1] + "<|im_end|>\n"
        assert c["labels"] == c["input_ids"]
    assert multi > 50
    with pytest.raises(ConfigError, match="^mask_history: contradicts train_on_prompt"):
        parse_train_config(
            {"model_name_or_path": "m", "dataset": "d", "mask_history": True, "train_on_prompt": True}
        )


def test_tools_are_written_as_llama_factory_writes_them(data_cfg, tiny_tokenizer, tmp_path: Path):
    entry = {
        "file_name": "tools.json",
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "system": "system", "tools": "tools"},
    }
    folder = _write(tmp_path / "data", {"tools.json": [TOOL_ROW] * 4}, {"tools": entry})
    row = build_datasets(
        data_cfg(dataset="tools", dataset_dir=folder, template="qwen"), tiny_tokenizer, stage="sft"
    ).train[0]
    assert tiny_tokenizer.decode(row["input_ids"]) == QWEN_TOOL_TEXT
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "paris"}}\n</tool_call><|im_end|>\n'
    assert _labelled(tiny_tokenizer, row) == call + "it is 21 degrees<|im_end|>\n"  # the call is learnt too
    row = build_datasets(
        data_cfg(dataset="tools", dataset_dir=folder, template="chatml", tool_format="llama3"),
        tiny_tokenizer,
        stage="sft",
    ).train[0]
    text = tiny_tokenizer.decode(row["input_ids"])
    assert '"parameters": {"city": "paris"}' in text and "<|im_start|>tool\n" in text
    with pytest.raises(ConfigError, match="^tool_format: 'mistral' is not written by xgen-runtime"):
        parse_train_config({"model_name_or_path": "m", "dataset": "d", "tool_format": "mistral"})
    # A template whose own tool format is not written here: one line, also from tokenizer worker processes.
    cfg = data_cfg(dataset="tools", dataset_dir=folder, template="mistral", preprocessing_num_workers=2)
    with pytest.raises(ConfigError, match="^tool_format: template mistral's own tool format is not written"):
        build_datasets(cfg, tiny_tokenizer, stage="sft")


def test_multimodal_data_is_refused(data_cfg, tiny_tokenizer, tmp_path: Path):
    rows = [{"instruction": "what is in <image>?", "output": "a cat"}]
    info = {
        "with_images": {"file_name": "a.json", "columns": {"images": "images"}},
        "token_only": {"file_name": "a.json"},
    }
    folder = _write(tmp_path / "data", {"a.json": rows}, info)
    for name, why in (("with_images", "has images columns"), ("token_only", "<image> in the text")):
        with pytest.raises(ConfigError, match=f"^dataset: .*{why}: multimodal data is not supported"):
            build_datasets(data_cfg(dataset=name, dataset_dir=folder), tiny_tokenizer, stage="sft")


@pytest.mark.parametrize(
    ("strategy", "rows"), [("concat", 5 + 12), ("interleave_under", 5 + 5), ("interleave_over", 12 + 12)]
)
def test_mix_strategy_row_counts(data_cfg, tiny_tokenizer, tmp_path: Path, strategy: str, rows: int):
    files = {f"{n}.json": [{"instruction": f"{n} {i}", "output": "ok"} for i in range(n)] for n in (5, 12)}
    folder = _write(tmp_path / "data", files, {f"d{n}": {"file_name": f"{n}.json"} for n in (5, 12)})
    train = build_datasets(
        data_cfg(dataset="d5,d12", dataset_dir=folder, mix_strategy=strategy), tiny_tokenizer, stage="sft"
    ).train
    assert len(train) == rows


def test_interleave_probs_rules():
    base = {"model_name_or_path": "m", "dataset": "a,b"}
    with pytest.raises(ConfigError, match="^interleave_probs: needs mix_strategy interleave"):
        parse_train_config({**base, "interleave_probs": "0.5,0.5"})
    with pytest.raises(ConfigError, match="^interleave_probs: 3 probabilities for 2 datasets"):
        parse_train_config({**base, "mix_strategy": "interleave_over", "interleave_probs": "0.2,0.3,0.5"})
    cfg = parse_train_config({**base, "mix_strategy": "interleave_under", "interleave_probs": "0.25, 0.75"})
    assert cfg.interleave_probs == [0.25, 0.75]


def test_tokenized_path_is_reused_without_the_tokenizer(data_cfg, tiny_tokenizer, tmp_path: Path):
    saved = tmp_path / "tokenized"
    cfg = data_cfg(dataset="tiny_alpaca", tokenized_path=str(saved), val_size=0.1)
    first = build_datasets(cfg, tiny_tokenizer, stage="sft")
    assert (saved / "dataset_dict.json").is_file()

    class NoTokenizer:
        def __getattr__(self, name):
            raise AssertionError(f"the tokenizer was used ({name})")

        def __call__(self, *args, **kwargs):
            raise AssertionError("the tokenizer was called")

    second = build_datasets(cfg, NoTokenizer(), stage="sft")
    assert second.train.to_list() == first.train.to_list() and len(second.train) > 100
    assert second.eval is not None and second.eval.to_list() == first.eval.to_list()


def test_packing_null_follows_llama_factory():
    base = {"model_name_or_path": "m", "dataset": "d", "packing": None}
    assert parse_train_config({**base, "stage": "pt"}).packing is True
    assert parse_train_config({**base, "stage": "sft"}).packing is False
    with pytest.raises(ConfigError, match="^neat_packing: applies to stage sft only"):
        parse_train_config({**base, "stage": "pt", "neat_packing": True})


@pytest.fixture(scope="module")
def examples(tiny_dir: Path, _tiny_tokenizer_loaded, tmp_path_factory):
    """The tiny sharegpt examples as LLaMA-Factory packing sees them (cut to cutoff_len - 1 = 127)."""
    from runtime.config import TrainConfig

    cfg = TrainConfig(
        dataset="tiny_sharegpt",
        dataset_dir=str(tiny_dir / "data"),
        cutoff_len=127,
        max_samples=40,
        cache_dir=str(tmp_path_factory.mktemp("cache")),
    )
    return build_datasets(cfg, copy.deepcopy(_tiny_tokenizer_loaded), stage="sft").train.to_list()


@pytest.mark.parametrize("neat", [False, True])
def test_packed_rows_hold_whole_examples(data_cfg, tiny_tokenizer, examples, neat: bool):
    cfg = data_cfg(dataset="tiny_sharegpt", cutoff_len=128, max_samples=40, packing=True, neat_packing=neat)
    rows = build_datasets(cfg, tiny_tokenizer, stage="sft").train.to_list()
    assert len(rows) < len(examples) / 2  # several examples per row
    assert all(len(r["input_ids"]) <= 128 for r in rows)
    pieces = []
    for row in rows:
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
        assert starts[0] == 0 and ("attention_mask" in row) is not neat  # neat: no mask, positions decide
        for a, b in zip(starts[:-1], starts[1:], strict=True):
            assert row["position_ids"][a:b] == list(range(b - a))  # positions restart per example
            pieces.append(tuple(row["input_ids"][a:b]))
    assert sorted(pieces) == sorted(tuple(e["input_ids"]) for e in examples)  # every example, whole


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_neat_packing_loss_equals_padded_loss(tiny_dir: Path, data_cfg, tiny_tokenizer, examples, attn: str):
    """fp32, same examples: the loss over neat rows (a batch of several rows, padded) equals the loss over
    the same examples padded one per row; plain packing (cross-attention) differs."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir / "model", attn_implementation=attn).eval()
    model.config.use_cache = False
    losses = {}
    for name, keys in {"padded": {}, "neat": {"neat_packing": True}, "rows": {"packing": True}}.items():
        cfg = data_cfg(dataset="tiny_sharegpt", cutoff_len=128, max_samples=40, **keys)
        data = (
            examples if name == "padded" else build_datasets(cfg, tiny_tokenizer, stage="sft").train.to_list()
        )
        batch = build_collator(cfg, tiny_tokenizer, stage="sft")(data)
        assert ("attention_mask" in batch) is (name != "neat")
        with torch.no_grad():
            losses[name] = model(**batch).loss.item()
    assert abs(losses["neat"] - losses["padded"]) <= 1e-5 * losses["padded"], losses
    assert abs(losses["rows"] - losses["padded"]) > 1e-3, losses  # the check can fail: mixing shows


def test_streaming_trains_with_max_steps(tiny_dir: Path, tmp_path: Path):
    from trainer_harness import base_config

    from runtime.train import run_training

    with pytest.raises(ConfigError, match="^streaming: a stream has no length: set max_steps"):
        parse_train_config({"model_name_or_path": "m", "dataset": "d", "streaming": True})
    raw = base_config(tiny_dir, tmp_path / "out", streaming=True, max_steps=2, save_strategy="no")
    result = run_training(parse_train_config(raw))
    assert result.code == 0 and result.trainer.state.global_step == 2
    assert type(result.trainer.train_dataset).__name__ == "IterableDataset"


@pytest.mark.slow
def test_tokenized_path_on_two_ranks_is_written_once_and_read_by_every_rank(tiny_dir: Path, tmp_path: Path):
    """First launch: rank 0 tokenizes and saves, rank 1 waits and loads. Second launch: the data file is
    gone, so every rank must read the saved rows (nothing is tokenized)."""
    import shutil

    from trainer_harness import base_config, run_torchrun, write_config

    data = tmp_path / "data"
    shutil.copytree(tiny_dir / "data", data)
    keys = {"dataset_dir": str(data), "tokenized_path": str(tmp_path / "tok"), "max_steps": 2}
    for run in ("first", "second"):
        cfg = base_config(tiny_dir, tmp_path / run, save_strategy="no", **keys)
        result = run_torchrun(write_config(tmp_path / f"{run}.yaml", cfg), tmp_path)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert (tmp_path / "tok" / "dataset_dict.json").is_file()
        (data / "tiny_alpaca.json").unlink(missing_ok=True)
    assert "loaded tokenized datasets from" in result.stdout


@pytest.mark.slow
def test_streaming_on_two_ranks(tiny_dir: Path, tmp_path: Path):
    from trainer_harness import base_config, run_torchrun, write_config

    cfg = base_config(tiny_dir, tmp_path / "out", streaming=True, max_steps=2, save_strategy="no")
    result = run_torchrun(write_config(tmp_path / "stream.yaml", cfg), tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "train_results.json").read_text())["global_step"] == 2
