"""Dataset resolution and loading: dataset_info.json like LLaMA-Factory, plain paths, file types, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.config import ConfigError
from runtime.data import build_datasets, worker_count
from runtime.data.formats import check_columns, to_messages
from runtime.data.loaders import load_raw
from runtime.data.registry import resolve_datasets


def _messages(attr_name: str, dataset_dir: Path, stage: str = "sft", **kwargs):
    (attr,) = resolve_datasets(attr_name, dataset_dir, key="dataset")
    raw = load_raw(attr, cache_dir=kwargs.get("cache_dir"), seed=0, max_samples=kwargs.get("max_samples"))
    check_columns(attr, raw.column_names, stage=stage)
    return to_messages(raw, attr, num_proc=None, load_from_cache_file=True)


def _write_info(dataset_dir: Path, info: dict) -> None:
    (dataset_dir / "dataset_info.json").write_text(json.dumps(info))


ALPACA_ROWS = [
    {"instruction": "say hello", "input": "to bird", "output": "hello bird", "system": "be kind"},
    {"instruction": "count", "input": "", "output": "one two", "system": ""},
]


def test_alpaca_with_history_and_system(tiny_dir: Path):
    rows = json.loads((tiny_dir / "data" / "tiny_alpaca.json").read_text())
    ds = _messages("tiny_alpaca", tiny_dir / "data")
    assert len(ds) == len(rows)
    with_history = next(i for i, r in enumerate(rows) if r.get("history") and r.get("input"))
    row, src = ds[with_history], rows[with_history]
    assert [m["role"] for m in row["_prompt"]] == ["user", "assistant", "user"]
    assert row["_prompt"][0]["content"] == src["history"][0][0]
    assert row["_prompt"][-1]["content"] == src["instruction"] + "\n" + src["input"]
    assert row["_response"] == [{"role": "assistant", "content": src["output"]}]
    assert row["_system"] == (src.get("system") or "")


def test_sharegpt_system_turn_becomes_system(tiny_dir: Path):
    ds = _messages("tiny_sharegpt", tiny_dir / "data")
    first = json.loads((tiny_dir / "data" / "tiny_sharegpt.jsonl").read_text().splitlines()[0])
    assert first["conversations"][0]["from"] == "system"
    assert ds[0]["_system"] == first["conversations"][0]["value"]
    assert ds[0]["_prompt"][0] == {"role": "user", "content": first["conversations"][1]["value"]}
    assert ds[0]["_response"][0]["content"] == first["conversations"][-1]["value"]


def test_preference_variants(tiny_dir: Path):
    for name in ("tiny_pref", "tiny_pref_sharegpt"):
        ds = _messages(name, tiny_dir / "data", stage="dpo")
        assert len(ds) == 128
        assert [m["role"] for m in ds[0]["_response"]] == ["assistant", "assistant"]
        assert ds[0]["_response"][0]["content"] != ds[0]["_response"][1]["content"]


def test_columns_and_tags_mapping(tmp_path: Path):
    (tmp_path / "qa.json").write_text(json.dumps([{"q": "why", "a": "because", "sys": "s"}]))
    convo = {"msgs": [{"who": "me", "text": "hi"}, {"who": "bot", "text": "hello"}]}
    (tmp_path / "chat.jsonl").write_text(json.dumps(convo) + "\n")
    _write_info(
        tmp_path,
        {
            "qa": {"file_name": "qa.json", "columns": {"prompt": "q", "response": "a", "system": "sys"}},
            "chat": {
                "file_name": "chat.jsonl",
                "formatting": "sharegpt",
                "columns": {"messages": "msgs"},
                "tags": {"role_tag": "who", "content_tag": "text", "user_tag": "me", "assistant_tag": "bot"},
            },
        },
    )
    qa = _messages("qa", tmp_path)[0]
    assert qa == {
        "_prompt": [{"role": "user", "content": "why"}],
        "_response": [{"role": "assistant", "content": "because"}],
        "_system": "s",
        "_tools": "",
        "_media": "",
    }
    chat = _messages("chat", tmp_path)[0]
    assert (
        chat["_prompt"] == [{"role": "user", "content": "hi"}] and chat["_response"][0]["content"] == "hello"
    )


@pytest.mark.parametrize("kind", ["json", "jsonl", "parquet", "csv", "saved", "folder"])
def test_file_types_and_plain_paths(tmp_path: Path, kind: str):
    from datasets import Dataset

    ds = Dataset.from_list(ALPACA_ROWS)
    target = tmp_path / f"data.{kind}"
    if kind == "json":
        target.write_text(json.dumps(ALPACA_ROWS))
    elif kind == "jsonl":
        target.write_text("".join(json.dumps(r) + "\n" for r in ALPACA_ROWS))
    elif kind == "parquet":
        ds.to_parquet(target)
    elif kind == "csv":
        ds.to_csv(target, index=False)
    elif kind == "saved":
        ds.save_to_disk(str(target))
    else:
        target.mkdir()
        for i, row in enumerate(ALPACA_ROWS):
            (target / f"part{i}.json").write_text(json.dumps([row]))
    # A plain path (absolute, no dataset_info.json): format detected from the columns.
    out = _messages(str(target), tmp_path / "no-such-dir", cache_dir=str(tmp_path / "cache"))
    assert len(out) == 2
    assert out[0]["_prompt"][-1]["content"] == "say hello\nto bird"
    assert out[0]["_response"][0]["content"] == "hello bird" and out[0]["_system"] == "be kind"
    # And the same file through dataset_info.json.
    _write_info(tmp_path, {"mine": {"file_name": target.name, "columns": {"system": "system"}}})
    assert (
        _messages("mine", tmp_path, cache_dir=str(tmp_path / "cache"))[1]["_response"][0]["content"]
        == "one two"
    )


def test_plain_openai_messages_file(tmp_path: Path):
    row = {
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "a"},
        ]
    }
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(row) + "\n")
    out = _messages(str(path), tmp_path)[0]
    assert out == {
        "_prompt": [{"role": "user", "content": "u"}],
        "_response": [{"role": "assistant", "content": "a"}],
        "_system": "s",
        "_tools": "",
        "_media": "",
    }


def test_max_samples_num_samples_and_val_split(data_cfg, tiny_tokenizer, tiny_dir: Path, tmp_path: Path):
    splits = build_datasets(data_cfg(dataset="tiny_alpaca", max_samples=30), tiny_tokenizer, stage="sft")
    assert len(splits.train) == 30 and splits.eval is None

    one = build_datasets(data_cfg(dataset="reverse_sft", val_size=0.25, seed=7), tiny_tokenizer, stage="sft")
    two = build_datasets(data_cfg(dataset="reverse_sft", val_size=0.25, seed=7), tiny_tokenizer, stage="sft")
    other = build_datasets(
        data_cfg(dataset="reverse_sft", val_size=0.25, seed=8), tiny_tokenizer, stage="sft"
    )
    assert len(one.eval) == 112 and len(one.train) == 336
    assert one.eval["input_ids"] == two.eval["input_ids"] and one.eval["input_ids"] != other.eval["input_ids"]
    counted = build_datasets(data_cfg(dataset="reverse_sft", val_size=10), tiny_tokenizer, stage="sft")
    assert len(counted.eval) == 10

    evaluation = build_datasets(
        data_cfg(dataset="reverse_sft", eval_dataset="reverse_sft_eval"), tiny_tokenizer, stage="sft"
    )
    assert len(evaluation.eval) == 64 and len(evaluation.train) == 448

    info = json.loads((tiny_dir / "data" / "dataset_info.json").read_text())
    data = tmp_path / "data"
    data.mkdir()
    (data / "reverse_sft.json").write_bytes((tiny_dir / "data" / "reverse_sft.json").read_bytes())
    _write_info(
        data,
        {
            "few": {**info["reverse_sft"], "num_samples": 5},
            "many": {**info["reverse_sft"], "num_samples": 500},
        },
    )
    few = build_datasets(data_cfg(dataset="few", dataset_dir=str(data)), tiny_tokenizer, stage="sft")
    many = build_datasets(data_cfg(dataset="few,many", dataset_dir=str(data)), tiny_tokenizer, stage="sft")
    assert len(few.train) == 5 and len(many.train) == 505


@pytest.mark.parametrize(
    ("overrides", "key", "fragment"),
    [
        ({"dataset": "nope"}, "dataset", "unknown dataset 'nope'"),
        ({"dataset": "reverse_sft", "eval_dataset": "nope"}, "eval_dataset", "unknown dataset 'nope'"),
        ({"dataset": "x", "dataset_dir": "/does/not/exist"}, "dataset", "does not exist"),
        ({"dataset": "tiny_pref"}, "dataset", "preference data"),
        ({"dataset": "reverse_sft", "template": "vicuna9"}, "template", "unknown template"),
        (
            {"dataset": "reverse_sft", "val_size": 0.1, "eval_dataset": "reverse_sft_eval"},
            "val_size",
            "either",
        ),
    ],
)
def test_config_errors_name_the_key(data_cfg, tiny_tokenizer, overrides, key, fragment):
    with pytest.raises(ConfigError) as info:
        build_datasets(data_cfg(**overrides), tiny_tokenizer, stage="sft")
    assert info.value.key == key and fragment in info.value.message


def test_dataset_info_errors(data_cfg, tiny_tokenizer, tmp_path: Path):
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "i", "output": "o"}]))
    _write_info(
        tmp_path,
        {
            "missing_file": {"file_name": "gone.json"},
            "missing_column": {"file_name": "a.json", "columns": {"prompt": "question"}},
            "bad_key": {"file_name": "a.json", "columns": {"promt": "instruction"}},
            "script": {"script_url": "org_script"},
            "sft_needs_output": {"file_name": "a.json", "columns": {"response": "answer"}},
        },
    )
    cases = {
        "missing_file": "file not found",
        "missing_column": "column 'question' (columns.prompt) not found",
        "bad_key": "unknown key 'promt'",
        "script": "datasets 5 runs no scripts",
        "sft_needs_output": "column 'answer' (columns.response)",
    }
    for name, fragment in cases.items():
        with pytest.raises(ConfigError) as info:
            build_datasets(data_cfg(dataset=name, dataset_dir=str(tmp_path)), tiny_tokenizer, stage="sft")
        assert info.value.key == "dataset" and fragment in info.value.message, name
    with pytest.raises(ConfigError, match="stage rm needs preference data"):
        build_datasets(data_cfg(dataset="reverse_sft"), tiny_tokenizer, stage="rm")


def test_worker_count_capped_with_note(capsys: pytest.CaptureFixture):
    import os

    cpus = len(os.sched_getaffinity(0))
    assert worker_count(None) is None and worker_count(1) is None
    capped = worker_count(cpus + 5)
    assert capped == (cpus if cpus > 1 else None)
    assert f"preprocessing_num_workers={cpus + 5} capped to {cpus}" in capsys.readouterr().out


def test_parallel_map_matches_serial(data_cfg, tiny_tokenizer):
    serial = build_datasets(data_cfg(dataset="tiny_sharegpt"), tiny_tokenizer, stage="sft")
    parallel = build_datasets(
        data_cfg(dataset="tiny_sharegpt", preprocessing_num_workers=2, overwrite_cache=True),
        tiny_tokenizer,
        stage="sft",
    )
    assert serial.train["labels"] == parallel.train["labels"]


def test_second_process_reuses_the_cache(data_cfg, tiny_dir: Path, tiny_tokenizer):
    """A later rank after main_process_first: same fingerprint, reads the first one's cache files."""
    cfg = data_cfg(dataset="tiny_alpaca", val_size=0.1)
    first = build_datasets(cfg, tiny_tokenizer, stage="sft").train
    files = sorted(f["filename"] for f in first.cache_files)
    assert any("cache-" in Path(name).name for name in files)
    stamps = {name: Path(name).stat().st_mtime_ns for name in files}
    fields = {k: getattr(cfg, k) for k in ("dataset", "val_size", "dataset_dir", "cache_dir")}
    script = f"""
import dataclasses, json
from transformers import AutoTokenizer
from runtime.config import TrainConfig
from runtime.data import build_datasets
cfg = dataclasses.replace(TrainConfig(), **json.loads({json.dumps(json.dumps(fields))}))
tok = AutoTokenizer.from_pretrained({str(tiny_dir / "model")!r})
s = build_datasets(cfg, tok, stage="sft")
print(json.dumps([s.train._fingerprint, sorted(f["filename"] for f in s.train.cache_files)]))
"""
    done = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    fingerprint, second_files = json.loads(done.stdout.splitlines()[-1])
    assert (fingerprint, second_files) == (first._fingerprint, files)
    assert {name: Path(name).stat().st_mtime_ns for name in files} == stamps  # read, not rewritten
