"""Every LLaMA-Factory template name: same token ids, labels and tokenizer fixes as LLaMA-Factory 0.9.5.

tests/runtime/lf_templates/cases.jsonl holds what LLaMA-Factory's own processors produce for a few
conversations on the tiny tokenizer, for all of its templates (scripts/lf_template_cases.py wrote it).
The runtime is checked against that file always, and against a fresh run of LLaMA-Factory when it is
installed (XGEN_LF_PYTHON, default /work/lfvenv/bin/python).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from runtime.data.templates import NAMED_TEMPLATES, resolve_template
from runtime.data.tokenize import tokenize_pairwise, tokenize_sft

ROOT = Path(__file__).resolve().parents[3]
CASES = Path(__file__).parents[1] / "lf_templates" / "cases.jsonl"
IGNORE = -100
SETTINGS = {
    "defaults": {},
    "no_thinking": {"enable_thinking": False},
    "default_system": {"default_system": "You are a tiny model."},
}
# The families checked by name; each must be covered by the cases file.
FAMILIES = (
    "llama2 llama3 llama4 qwen qwen3 qwen3_nothink mistral gemma gemma2 gemma3 glm4 deepseek deepseek3 "
    "phi phi4 yi intern2 chatml alpaca default empty"
).split()


def _load(path: Path) -> tuple[dict, list[dict]]:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return lines[0]["meta"], lines[1:]


def _vocab_sha(tokenizer) -> str:
    return hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()


def _runs(tokenizer, ids, labels):
    runs: list[list] = []
    for token, label in zip(ids, labels, strict=True):
        kind = "prompt" if label == IGNORE else "label" if label == token else "other"
        if runs and runs[-1][0] == kind:
            runs[-1][1].append(token)
        else:
            runs.append([kind, [token]])
    return [[kind, tokenizer.decode(tokens)] for kind, tokens in runs]


def _row(case: dict) -> dict:
    """The case's conversation as the normalized row runtime.data.formats produces."""
    return {"_prompt": [case["prompt"]], "_response": [case["response"]], "_system": [case["system"]]}


def check_cases(tiny_tokenizer, meta: dict, rows: list[dict]) -> int:
    """Compare the runtime with LLaMA-Factory's rows; returns how many rows were compared."""
    same_vocab = meta.get("vocab_sha") == _vocab_sha(tiny_tokenizer)
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["template"], row["setting"]), []).append(row)
    compared = 0
    for (name, setting), cases in groups.items():
        tokenizer = copy.deepcopy(tiny_tokenizer)
        chat = resolve_template(name, tokenizer, **SETTINGS[setting])
        where = f"{name}/{setting}"
        assert tokenizer.eos_token == cases[0]["eos_token"], where
        assert sorted(tokenizer.get_added_vocab()) == cases[0]["added_tokens"], where
        for case in cases:
            assert "error" not in case, (where, case["error"])
            at = f"{where}/{case['case']}"
            batch = _row(case)
            if case["stage"] == "sft":
                out = tokenize_sft(batch, tokenizer=tokenizer, chat=chat, cutoff_len=100000)
                ids, labels = out["input_ids"][0], out["labels"][0]
                assert _runs(tokenizer, ids, labels) == case["runs"], at
                if same_vocab:
                    assert (ids, labels) == (case["input_ids"], case["labels"]), at
            else:
                out = tokenize_pairwise(batch, tokenizer=tokenizer, chat=chat, cutoff_len=100000)
                for side in ("chosen", "rejected"):
                    ids, labels = out[f"{side}_input_ids"][0], out[f"{side}_labels"][0]
                    assert _runs(tokenizer, ids, labels) == case[f"{side}_runs"], (at, side)
                    if same_vocab:
                        assert (ids, labels) == (case[f"{side}_input_ids"], case[f"{side}_labels"]), (
                            at,
                            side,
                        )
            compared += 1
    return compared


def test_cases_cover_every_name_and_the_main_families():
    _, rows = _load(CASES)
    names = {row["template"] for row in rows}
    assert names == set(NAMED_TEMPLATES)
    assert len(names) >= 120
    assert set(FAMILIES) <= names
    assert {row["case"] for row in rows} == {"one_turn", "system_multi_turn", "thoughts", "pair"}


def test_parser_knows_exactly_the_names_the_runtime_renders():
    """The parser checks `template:` against runtime.config.template_names (it may not import this
    table); every name there is one resolve_template renders (each is rendered above and below)."""
    from runtime.config.template_names import TEMPLATE_NAMES

    assert sorted(TEMPLATE_NAMES) == sorted(NAMED_TEMPLATES)


def test_matches_llamafactory_recorded(tiny_tokenizer):
    meta, rows = _load(CASES)
    assert meta.get("vocab_sha") == _vocab_sha(tiny_tokenizer), "tiny tokenizer changed: regenerate the cases"
    assert check_cases(tiny_tokenizer, meta, rows) == len(rows)


def _lf_python() -> str | None:
    python = os.environ.get("XGEN_LF_PYTHON", "/work/lfvenv/bin/python")
    if not Path(python).exists():
        return None
    probe = subprocess.run([python, "-c", "import llamafactory"], capture_output=True, timeout=300)
    return python if probe.returncode == 0 else None


def test_matches_llamafactory_live(tiny_tokenizer, tiny_dir: Path, tmp_path: Path):
    """LLaMA-Factory's own code, run now on the same tokenizer and conversations."""
    python = _lf_python()
    if python is None:
        pytest.skip("LLaMA-Factory is not installed (set XGEN_LF_PYTHON to its python)")
    out = tmp_path / "cases.jsonl"
    subprocess.run(
        [python, str(ROOT / "scripts" / "lf_template_cases.py"), str(tiny_dir / "model"), str(out)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    meta, rows = _load(out)
    assert check_cases(tiny_tokenizer, meta, rows) == len(rows) > 1000
    recorded_meta, recorded = _load(CASES)
    if recorded_meta["llamafactory"] == meta["llamafactory"]:
        assert rows == recorded  # the committed file is what this LLaMA-Factory produces


@pytest.mark.parametrize("name", sorted(NAMED_TEMPLATES))
def test_saved_chat_template_prompts_as_training(tiny_tokenizer, name: str):
    """The Jinja saved with the model renders prompts and replies exactly like training tokenizes them."""
    from runtime.data.template_spec import Tok

    spec = NAMED_TEMPLATES[name]
    by_name = {p.text for slot in (spec.prefix, spec.system, spec.user) for p in slot if isinstance(p, Tok)}
    system = [{"role": "system", "content": "Be kind."}]
    history = [
        {"role": "user", "content": "say hello"},
        {"role": "assistant", "content": "<think>\nok\n</think>\n\nhello"},
        {"role": "user", "content": "once more"},
    ]
    reply = {"role": "assistant", "content": "hello again"}
    for settings in ({}, {"enable_thinking": False}, {"default_system": "D"}, {"preserve_thinking": True}):
        tokenizer = copy.deepcopy(tiny_tokenizer)
        tokenizer.add_tokens(sorted(by_name), special_tokens=True)  # chatglm3/yuan look tokens up by name
        chat = resolve_template(name, tokenizer, **settings)
        jinja = chat.jinja(tokenizer)
        for conversation in (history, system + history, history[:1]):
            prompt_ids, reply_ids = chat.encode_oneturn(tokenizer, [*conversation, reply])
            prompt = tokenizer.apply_chat_template(
                conversation, chat_template=jinja, tokenize=False, add_generation_prompt=True
            )
            full = tokenizer.apply_chat_template([*conversation, reply], chat_template=jinja, tokenize=False)
            assert prompt == tokenizer.decode(prompt_ids), (settings, conversation)
            assert full == tokenizer.decode(prompt_ids + reply_ids), (settings, conversation)


def test_template_is_saved_with_the_tokenizer(tiny_tokenizer, tmp_path: Path):
    """`template: alpaca` on a chatml tokenizer saves alpaca; chatml on it keeps a template that agrees."""
    from transformers import AutoTokenizer

    tokenizer = copy.deepcopy(tiny_tokenizer)
    chat = resolve_template("alpaca", tokenizer)
    tokenizer.save_pretrained(tmp_path / "alpaca")
    saved = AutoTokenizer.from_pretrained(tmp_path / "alpaca")
    messages = [{"role": "user", "content": "hi"}]
    text = saved.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == chat.render(tokenizer, messages, add_generation_prompt=True)
    assert text.startswith("Below is an instruction") and text.endswith("### Response:\n")

    tokenizer = copy.deepcopy(tiny_tokenizer)
    resolve_template("qwen", tokenizer)  # chatml markers but a default system prompt the tiny one lacks
    assert tokenizer.chat_template != tiny_tokenizer.chat_template
    tokenizer = copy.deepcopy(tiny_tokenizer)
    resolve_template("yi", tokenizer)  # chatml with nothing else: the tokenizer's own template agrees
    assert tokenizer.chat_template == tiny_tokenizer.chat_template


def test_unknown_template_names_the_close_ones(tiny_tokenizer):
    from runtime.config import ConfigError

    with pytest.raises(ConfigError, match="did you mean qwen3_nothink"):
        resolve_template("qwen3_nothing", copy.deepcopy(tiny_tokenizer))


@pytest.mark.parametrize("finetuning_type", ["full", "lora"])
def test_training_saves_the_template_it_used(tiny_dir: Path, tmp_path: Path, finetuning_type: str):
    """llama3 on the tiny (chatml) tokenizer: its stop words become tokens, the embeddings grow, and the
    saved tokenizer prompts in llama3's format, as training did; the output reloads."""
    import torch
    from trainer_harness import base_config, run_inprocess, write_config
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "out"
    cfg = base_config(
        tiny_dir,
        out,
        template="llama3",
        max_steps=2,
        finetuning_type=finetuning_type,
        default_system="Be brief.",
    )
    assert run_inprocess(write_config(tmp_path / "cfg.yaml", cfg)) == 0
    saved = AutoTokenizer.from_pretrained(out)
    assert saved.eos_token == "<|eot_id|>" and "<|eom_id|>" in saved.get_added_vocab()
    prompt = saved.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == (
        "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    ids = saved(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    if finetuning_type == "lora":  # export grows the base's embeddings before merging the adapter
        import dataclasses

        from runtime.commands.export import export
        from runtime.config import TrainConfig

        merged = tmp_path / "merged"
        fields = dict(model_name_or_path=str(tiny_dir / "model"), adapter_name_or_path=str(out))
        export(dataclasses.replace(TrainConfig(), export_dir=str(merged), **fields))
        assert AutoTokenizer.from_pretrained(merged).chat_template == saved.chat_template
        out = merged
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.get_input_embeddings().weight.shape[0] == len(saved) == 514
    assert saved.eos_token_id in model.generation_config.eos_token_id  # generate stops at <|eot_id|>
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()
