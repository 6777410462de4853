"""The tiny model and datasets every runtime test trains: reload offline, generate, deterministic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.commands.make_tiny import REVERSE_WORDS, build_tiny, main_make_tiny

EXPECTED_DATASETS = {
    "tiny_alpaca",
    "tiny_sharegpt",
    "tiny_pref",
    "tiny_pref_sharegpt",
    "tiny_pt",
    "reverse_sft",
    "reverse_sft_eval",
    "reverse_pref",
}


def test_model_and_tokenizer_reload_offline_and_generate(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir / "model")
    model = AutoModelForCausalLM.from_pretrained(tiny_dir / "model")
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 2
    assert 100_000 < sum(p.numel() for p in model.parameters()) < 200_000
    assert model.config.vocab_size == len(tokenizer)
    for token in ("<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"):
        assert tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id or token == "<unk>"
    assert tokenizer.pad_token == "<pad>" and tokenizer.eos_token == "<|im_end|>"

    messages = [{"role": "user", "content": "reverse: red blue green"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    assert (
        tokenizer.decode(ids)
        == "<|im_start|>user\nreverse: red blue green<|im_end|>\n<|im_start|>assistant\n"
    )
    out = model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False)
    assert out.shape[1] > len(ids)


def test_dataset_info_names_every_dataset_and_files_exist(tiny_dir: Path):
    info = json.loads((tiny_dir / "data" / "dataset_info.json").read_text())
    assert EXPECTED_DATASETS <= set(info)
    for entry in info.values():
        assert (tiny_dir / "data" / entry["file_name"]).is_file()
    assert info["tiny_pref"]["ranking"] and info["tiny_pref_sharegpt"]["formatting"] == "sharegpt"


def test_reverse_task_is_correct_and_train_eval_disjoint(tiny_dir: Path):
    data = tiny_dir / "data"
    train = json.loads((data / "reverse_sft.json").read_text())
    evaluation = json.loads((data / "reverse_sft_eval.json").read_text())
    for row in train + evaluation:
        words = row["instruction"].removeprefix("reverse: ").split()
        assert set(words) <= set(REVERSE_WORDS) and row["output"].split() == words[::-1]
    assert not {r["instruction"] for r in train} & {r["instruction"] for r in evaluation}
    for row in json.loads((data / "reverse_pref.json").read_text()):
        words = row["instruction"].removeprefix("reverse: ").split()
        assert row["chosen"].split() == words[::-1] and row["rejected"] != row["chosen"]


def test_build_is_deterministic_and_cli_hook(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    assert main_make_tiny([str(tmp_path / "again")]) == 0
    assert "tiny model in" in capsys.readouterr().out
    for name in (
        "data/reverse_sft.json",
        "data/tiny_sharegpt.jsonl",
        "model/tokenizer.json",
        "model/model.safetensors",
    ):
        assert (tmp_path / "again" / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    other = build_tiny(tmp_path / "seed1", seed=1)
    assert (other.data / "reverse_sft.json").read_bytes() != (
        tiny_dir / "data" / "reverse_sft.json"
    ).read_bytes()
