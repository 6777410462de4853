"""A tiny Llama model, its tokenizer and small generated datasets, built in code (no downloads).

Tests, the README demo and the cluster tests all train this model: `xgen-runtime make-tiny DIR`
writes the model to DIR/model and the datasets (with a LLaMA-Factory dataset_info.json) to DIR/data,
and a tiny Qwen2.5-VL, Qwen3-VL and Qwen3-VL-MoE with small images and image datasets beside them
(runtime/mm/tiny.py).
Everything is deterministic for a given seed.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

from runtime.contract.say import say

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]

# The reversal task uses few words so a 124k-parameter model can learn it in a few hundred steps.
REVERSE_WORDS = ["red", "blue", "green", "cat", "dog", "sun", "tree", "fish"]
WORDS = (
    REVERSE_WORDS
    + (
        "the a one two three big small old new fast slow happy sad bird house river stone cloud "
        "runs jumps sees likes eats finds makes says is was and or but with from to in on at "
        "hello thanks please answer question write story list name color number count reverse "
        "sort word words sentence short long first last yes no good bad"
    ).split()
)
TASKS = ["write a short story about", "name a color like", "count the words in", "say hello to"]


@dataclass(frozen=True)
class TinyPaths:
    """Where build_tiny put things: `model` is a save_pretrained directory, `data` a dataset_dir."""

    model: Path
    data: Path


def build_tiny(dest: Path, *, seed: int = 0) -> TinyPaths:
    """Write DIR/model (tokenizer + 2-layer Llama) and DIR/data (datasets + dataset_info.json)."""
    dest = Path(dest)
    paths = TinyPaths(model=dest / "model", data=dest / "data")
    paths.model.mkdir(parents=True, exist_ok=True)
    paths.data.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    tokenizer = _train_tokenizer(_corpus(random.Random(seed + 1)))
    tokenizer.save_pretrained(paths.model)
    build_model(tokenizer, seed).save_pretrained(paths.model)
    _write_datasets(paths.data, rng)
    return paths


def _sentence(rng: random.Random, lo: int = 3, hi: int = 9) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def _corpus(rng: random.Random) -> list[str]:
    lines = [_sentence(rng) for _ in range(1500)]
    # Each task word both with and without a leading space, so each becomes one token either way.
    lines += [w for w in WORDS] + [" ".join(WORDS)] * 5
    lines += ["<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_start|>system\n"] * 30
    lines += [f"reverse: {' '.join(rng.choices(REVERSE_WORDS, k=3))}" for _ in range(300)]
    lines += [f"{t} {_sentence(rng, 1, 3)}." for t in TASKS for _ in range(50)]
    return lines


def _train_tokenizer(corpus: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from runtime.data.templates import chat_template

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any text stays encodable
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        unk_token="<unk>",
        bos_token="<s>",
        # The chat template ends every turn with <|im_end|>: making it EOS stops generation there.
        eos_token="<|im_end|>",
        pad_token="<pad>",
        additional_special_tokens=["</s>", "<|im_start|>"],
        chat_template=chat_template("chatml"),
        model_max_length=512,
    )


def word_tokenizer(vocab: int):
    """A word-level tokenizer over `w<i>` words (any vocab size, nothing to train): generated text
    round-trips to exact token ids, so the benchmark controls sequence lengths to the token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from runtime.data.templates import chat_template

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>", "user", "assistant", "system"]
    words = {tok: i for i, tok in enumerate(specials)}
    words.update({f"w{i}": i for i in range(len(specials), vocab)})
    backend = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # chatml's markers are special tokens, so the words beside them (`user\n`) split off on whitespace
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>"],
        chat_template=chat_template("chatml"),
        model_max_length=100_000,
    )


def llama_config(tokenizer, **sizes):
    """A Llama config over `tokenizer`: the tiny model's sizes unless `sizes` overrides them."""
    from transformers import LlamaConfig

    shape = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
        **sizes,
    }
    return LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **shape,
    )


def build_model(tokenizer, seed: int, **sizes):
    """A random-weight Llama over `tokenizer` (the tiny one unless `sizes` overrides llama_config)."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    config = llama_config(tokenizer, **sizes)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


# --- datasets ---------------------------------------------------------------------------------

# Alpaca-style preference rows (instruction, input, chosen, rejected) as dataset_info.json maps them.
ALPACA_PREFERENCE_COLUMNS = {
    "prompt": "instruction",
    "query": "input",
    "chosen": "chosen",
    "rejected": "rejected",
}


def _reverse_rows(rng: random.Random) -> list[tuple[list[str], list[str]]]:
    """Every 3-word sequence once, shuffled: (words, reversed words). Train and eval never overlap."""
    seqs = [[a, b, c] for a in REVERSE_WORDS for b in REVERSE_WORDS for c in REVERSE_WORDS]
    rng.shuffle(seqs)
    return [(s, s[::-1]) for s in seqs]


def _wrong_reversal(words: list[str], rng: random.Random) -> list[str]:
    right = words[::-1]
    candidates = [words, words[1:] + words[:1], [right[0], right[2], right[1]]]
    wrong = [c for c in candidates if c != right]
    return wrong[rng.randrange(len(wrong))] if wrong else right[:-1]


def _kto_rows(pairs: list[dict], rng: random.Random) -> list[dict]:
    """kto_en_demo's format (sharegpt `messages` + boolean `label`): each preference pair as a desirable
    and an undesirable row. The first 2 * 64 rows (shuffled among themselves) hold both rows of the
    first 64 pairs, so `max_samples: 128` trains on exactly the pairs `reverse_pref` + `max_samples: 64`
    evaluates."""

    def row(pair: dict, reply: str, label: bool) -> dict:
        messages = [{"role": "user", "content": pair["instruction"]}, {"role": "assistant", "content": reply}]
        return {"messages": messages, "label": label}

    blocks = []
    for part in (pairs[:64], pairs[64:]):
        block = [row(p, p["chosen"], True) for p in part] + [row(p, p["rejected"], False) for p in part]
        rng.shuffle(block)
        blocks += block
    return blocks


def _write_datasets(data: Path, rng: random.Random) -> None:
    alpaca = []
    for i in range(200):
        row = {
            "instruction": f"{rng.choice(TASKS)} {_sentence(rng, 1, 3)}",
            "input": "",
            "output": _sentence(rng),
        }
        if i % 3 == 0:
            row["input"] = _sentence(rng, 2, 5)
        if i % 5 == 0:
            row["system"] = "you are a good bird"
        if i % 7 == 0:
            row["history"] = [[_sentence(rng, 2, 4), _sentence(rng, 2, 4)]]
        alpaca.append(row)
    _dump_json(data / "tiny_alpaca.json", alpaca)

    sharegpt = []
    for i in range(200):
        turns = []
        if i % 4 == 0:
            turns.append({"from": "system", "value": "answer with short words"})
        for _ in range(1 + i % 2):
            turns.append({"from": "human", "value": _sentence(rng, 2, 6)})
            turns.append({"from": "gpt", "value": _sentence(rng)})
        sharegpt.append({"conversations": turns})
    _dump_jsonl(data / "tiny_sharegpt.jsonl", sharegpt)

    pref = [
        {
            "instruction": _sentence(rng, 2, 5),
            "input": "",
            "chosen": _sentence(rng),
            "rejected": _sentence(rng),
        }
        for _ in range(128)
    ]
    _dump_json(data / "tiny_pref.json", pref)

    pref_sharegpt = [
        {
            "conversations": [{"from": "human", "value": _sentence(rng, 2, 5)}],
            "chosen": {"from": "gpt", "value": _sentence(rng)},
            "rejected": {"from": "gpt", "value": _sentence(rng)},
        }
        for _ in range(128)
    ]
    _dump_json(data / "tiny_pref_sharegpt.json", pref_sharegpt)

    _dump_json(data / "tiny_pt.json", [{"text": _sentence(rng, 5, 30)} for _ in range(200)])

    rows = _reverse_rows(rng)
    sft = [{"instruction": f"reverse: {' '.join(w)}", "input": "", "output": " ".join(r)} for w, r in rows]
    _dump_json(data / "reverse_sft.json", sft[64:])
    _dump_json(data / "reverse_sft_eval.json", sft[:64])
    reverse_pref = [
        {
            "instruction": f"reverse: {' '.join(w)}",
            "input": "",
            "chosen": " ".join(r),
            "rejected": " ".join(_wrong_reversal(w, rng)),
        }
        for w, r in rows[64:]
    ]
    _dump_json(data / "reverse_pref.json", reverse_pref)
    _dump_json(data / "reverse_kto.json", _kto_rows(reverse_pref, rng))

    sharegpt_tags = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}
    info = {
        "tiny_alpaca": {
            "file_name": "tiny_alpaca.json",
            "columns": {
                "prompt": "instruction",
                "query": "input",
                "response": "output",
                "system": "system",
                "history": "history",
            },
        },
        "tiny_sharegpt": {
            "file_name": "tiny_sharegpt.jsonl",
            "formatting": "sharegpt",
            "columns": {"messages": "conversations"},
            "tags": sharegpt_tags,
        },
        "tiny_pref": {
            "file_name": "tiny_pref.json",
            "ranking": True,
            "columns": ALPACA_PREFERENCE_COLUMNS,
        },
        "tiny_pref_sharegpt": {
            "file_name": "tiny_pref_sharegpt.json",
            "formatting": "sharegpt",
            "ranking": True,
            "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
        },
        "tiny_pt": {"file_name": "tiny_pt.json", "columns": {"prompt": "text"}},
        "reverse_sft": {"file_name": "reverse_sft.json"},
        "reverse_sft_eval": {"file_name": "reverse_sft_eval.json"},
        "reverse_pref": {
            "file_name": "reverse_pref.json",
            "ranking": True,
            "columns": ALPACA_PREFERENCE_COLUMNS,
        },
        # LLaMA-Factory's kto_en_demo entry, key for key.
        "reverse_kto": {
            "file_name": "reverse_kto.json",
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "kto_tag": "label"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
            },
        },
    }
    _dump_json(data / "dataset_info.json", info)


def _dump_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")


def _dump_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def main_make_tiny(argv: list[str] | None = None) -> int:
    """`xgen-runtime make-tiny DIR` (also `python -m runtime.commands.make_tiny DIR`)."""
    parser = argparse.ArgumentParser(prog="xgen-runtime make-tiny", description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="writes DIR/model and DIR/data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text-only", action="store_true", help="skip the vision-language models and images")
    args = parser.parse_args(argv)
    paths = build_tiny(args.dir, seed=args.seed)
    say(f"tiny model in {paths.model}, datasets in {paths.data}")
    if not args.text_only:
        from transformers import AutoTokenizer

        from runtime.mm.tiny import build_tiny_vl

        vl = build_tiny_vl(args.dir, AutoTokenizer.from_pretrained(paths.model), seed=args.seed)
        models = ", ".join(str(vl[name]) for name in ("vl_model", "vl3_model", "vl3moe_model"))
        say(f"tiny Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE in {models}; images in {vl['data']}/vl_images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_make_tiny())
