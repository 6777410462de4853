"""Write what LLaMA-Factory's own template code makes of a few conversations, for every template it has.

Run with LLaMA-Factory's Python (it cannot share the project's environment), on the tiny tokenizer:

    .venv/bin/python -m runtime.commands.make_tiny /tmp/tiny
    LF=/work/lfvenv/bin/python
    $LF scripts/lf_template_cases.py /tmp/tiny/model tests/runtime/lf_templates/cases.jsonl

`... lf_template_cases.py table > runtime/data/template_table.py` writes the runtime's template table from
LLaMA-Factory's registry instead (done once for 0.9.5; review the diff when redoing it for a new release).

One JSON line per (template, settings, conversation): the token ids and labels LLaMA-Factory's supervised
(or pairwise) processor produces, the same split into decoded runs (prompt / label / other-label), and the
tokenizer's EOS and added stop words after LLaMA-Factory fixed it. tests/runtime/data/test_templates.py checks
the runtime against the committed file always, and against a fresh run of this script when LLaMA-Factory
is installed. Standalone on purpose: it imports nothing from this repository.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys

SFT_CASES = {
    "one_turn": ("", [("user", "What is two plus two?")], [("assistant", "four")]),
    "system_multi_turn": (
        "Answer with short words.",
        [("user", "hi there"), ("assistant", "hello, how can I help?"), ("user", "name a color")],
        [("assistant", "blue")],
    ),
    "thoughts": (
        "",
        [("user", "red or blue?"), ("assistant", "<think>\nlet me see\n</think>\n\nred"), ("user", "why")],
        [("assistant", "<think>\nbecause\n</think>\n\nit is warm")],
    ),
}
PAIR_CASES = {
    "pair": (
        "Be kind.",
        [("user", "say hello"), ("assistant", "<think>\nok\n</think>\n\nhello"), ("user", "once more")],
        [("assistant", "hello again"), ("assistant", "no")],
    ),
}
# (label, data arguments): every template once as LLaMA-Factory defaults it, reasoning ones also without
# thinking, and a default_system override.
SETTINGS = {
    "defaults": {},
    "no_thinking": {"enable_thinking": False},
    "default_system": {"default_system": "You are a tiny model."},
}


def _messages(turns):
    return [{"role": role, "content": content} for role, content in turns]


def _runs(tokenizer, ids, labels):
    """[[kind, text], ...]: contiguous runs of prompt (-100), label (== id) and other (label != id)."""
    runs: list[list] = []
    for token, label in zip(ids, labels, strict=True):
        kind = "prompt" if label == -100 else "label" if label == token else "other"
        if runs and runs[-1][0] == kind:
            runs[-1][1].append(token)
        else:
            runs.append([kind, [token]])
    return [[kind, tokenizer.decode(tokens)] for kind, tokens in runs]


def main(model_dir: str, out_path: str) -> int:
    os.environ.setdefault("LLAMAFACTORY_VERBOSITY", "ERROR")  # one info line per template otherwise
    import llamafactory
    from llamafactory.data.mm_plugin import get_mm_plugin
    from llamafactory.data.processor import PairwiseDatasetProcessor, SupervisedDatasetProcessor
    from llamafactory.data.template import TEMPLATES, ReasoningTemplate, get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments
    from transformers import AutoTokenizer

    pristine = {name: copy.deepcopy(t) for name, t in TEMPLATES.items()}
    lines = []
    for name in sorted(pristine):
        for setting, extra in SETTINGS.items():
            if setting == "no_thinking" and not isinstance(pristine[name], ReasoningTemplate):
                continue
            TEMPLATES[name] = copy.deepcopy(pristine[name])  # LLaMA-Factory edits templates in place
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            args = DataArguments(template=name, cutoff_len=100000, **extra)
            template = get_template_and_fix_tokenizer(tokenizer, args)
            plugin = type(template.mm_plugin).__name__
            if plugin != "BasePlugin":
                # A multimodal plugin wants the model's image processor even for text; on text-only
                # messages every plugin passes text and ids through unchanged, as the base plugin does.
                template.mm_plugin = get_mm_plugin(name="base")
            head = {
                "template": name,
                "setting": setting,
                "mm_plugin": plugin,
                "eos_token": tokenizer.eos_token,
                "added_tokens": sorted(str(t) for t in tokenizer.get_added_vocab()),
            }
            for stage, cases, cls in (
                ("sft", SFT_CASES, SupervisedDatasetProcessor),
                ("pair", PAIR_CASES, PairwiseDatasetProcessor),
            ):
                processor = cls(template=template, tokenizer=tokenizer, processor=None, data_args=args)
                for case, (system, prompt, response) in cases.items():
                    row = {**head, "stage": stage, "case": case, "system": system}
                    row.update(prompt=_messages(prompt), response=_messages(response))
                    try:
                        out = processor._encode_data_example(
                            prompt=_messages(prompt),
                            response=_messages(response),
                            system=system,
                            tools="",
                            images=[],
                            videos=[],
                            audios=[],
                        )
                    except Exception as exc:  # recorded: the runtime must then refuse the template too
                        row["error"] = f"{type(exc).__name__}: {exc}"
                        lines.append(row)
                        continue
                    if stage == "sft":
                        ids, labels = out
                        row.update(input_ids=ids, labels=labels, runs=_runs(tokenizer, ids, labels))
                    else:
                        chosen_ids, chosen_labels, rejected_ids, rejected_labels = out
                        row.update(
                            chosen_input_ids=chosen_ids,
                            chosen_labels=chosen_labels,
                            rejected_input_ids=rejected_ids,
                            rejected_labels=rejected_labels,
                            chosen_runs=_runs(tokenizer, chosen_ids, chosen_labels),
                            rejected_runs=_runs(tokenizer, rejected_ids, rejected_labels),
                        )
                    lines.append(row)
    vocab = AutoTokenizer.from_pretrained(model_dir).get_vocab()
    meta = {
        "llamafactory": llamafactory.__version__,
        "vocab_sha": hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest(),
    }
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"meta": meta}) + "\n")
        for row in lines:
            f.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
    return 0


def _slot(slots) -> str:
    parts = []
    for piece in slots:
        if isinstance(piece, str):
            parts.append(repr(piece.replace("{{content}}", "{content}")))
        elif isinstance(piece, set):  # LLaMA-Factory encodes a set naming neither token as nothing
            if "bos_token" in piece:
                parts.append("BOS")
            elif "eos_token" in piece:
                parts.append("EOS")
        else:
            parts.append(f"Tok({piece['token']!r})")
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def table() -> int:
    from llamafactory.data.template import (
        TEMPLATES,
        Glm47ReasoningTemplate,
        Llama2Template,
        ReasoningTemplate,
    )

    print(TABLE_HEAD)
    ct = TEMPLATES["chatml"]
    chatml = {
        "system": _slot(ct.format_system.slots),
        "user": _slot(ct.format_user.slots),
        "assistant": _slot(ct.format_assistant.slots),
    }
    for name, t in TEMPLATES.items():
        eos_slots = ["{{content}}"] if t.efficient_eos else ["{{content}}", {"eos_token"}]
        fields: dict[str, str] = {}
        user = _slot(t.format_user.slots)
        for key, slots, default in (
            ("prefix", t.format_prefix.slots, "()"),
            ("system", t.format_system.slots, _slot(["{{content}}"])),
            ("user", t.format_user.slots, _slot(["{{content}}"])),
            ("assistant", t.format_assistant.slots, _slot(eos_slots)),
            ("observation", t.format_observation.slots, user),
            ("function", t.format_function.slots, _slot(t.format_assistant.slots)),
        ):
            if _slot(slots) != default:
                fields[key] = _slot(slots)
        if t.default_system:
            fields["default_system"] = repr(t.default_system)
        if t.stop_words:
            fields["stop_words"] = repr(tuple(t.stop_words))
        for key, value in (
            ("efficient_eos", t.efficient_eos),
            ("replace_eos", t.replace_eos),
            ("replace_jinja", t.replace_jinja_template),
            ("system_in_user", isinstance(t, Llama2Template)),
        ):
            if value:
                fields[key] = "True"
        if isinstance(t, Glm47ReasoningTemplate):
            fields["thinking"] = repr("close_only")
        elif isinstance(t, ReasoningTemplate):
            fields["thinking"] = repr("reasoning")
        if t.thought_words != ("<think>\n", "\n</think>\n\n"):
            fields["thought_words"] = repr(tuple(t.thought_words))
        if t.format_tools.tool_format not in (None, "default"):
            fields["tool_format"] = repr(t.format_tools.tool_format)
        if type(t.mm_plugin).__name__ != "BasePlugin":
            fields["multimodal"] = repr(type(t.mm_plugin).__name__)
        family = "Spec"
        if all(fields.get(k) == v for k, v in chatml.items()):
            family = "chatml"
            fields = {k: v for k, v in fields.items() if k not in chatml}
        print(f"    {name!r}: {family}(")
        for key, value in fields.items():
            print(f"        {key}={value},")
        print("    ),")
    print("}")
    return 0


TABLE_HEAD = '''"""Every chat template LLaMA-Factory 0.9.5 registers, as data (scripts/lf_template_cases.py).

Slots are pieces encoded one at a time: text with `{content}` where the message goes, BOS/EOS for the
tokenizer's own tokens, Tok(x) for a token looked up by name. runtime/data/templates.py says what each
field means; a field not given takes Spec's default (the same defaults LLaMA-Factory's registry uses).
"""

# ruff: noqa: E501  (format strings and default system prompts stay on one line each)
from runtime.data.template_spec import BOS, EOS, Spec, Tok, chatml

TEMPLATES: dict[str, Spec] = {'''


if __name__ == "__main__":
    if sys.argv[1:2] == ["table"]:
        raise SystemExit(table())
    raise SystemExit(main(*sys.argv[1:3]))
