"""Turn alpaca and sharegpt rows (and their preference variants) into one shape, as LLaMA-Factory does:

    _prompt:   [{role, content}, ...]  the conversation up to the last user turn (history included)
    _response: [{role: assistant, content}]  one reply; for preference data [chosen, rejected];
               for KTO data (a boolean kto_tag) [reply, ""] when desirable, ["", reply] when not
    _system:   str ("" when none)
    _tools:    str (the tools column's JSON, "" when none); function_call/observation turns keep the roles
               function/observation until runtime.data.tools writes them in the family's format

Rows LLaMA-Factory would call broken (roles out of order, wrong turn count) come out with empty
_prompt/_response; the stage tokenizer drops them and says how many.
"""

from __future__ import annotations

import json
from typing import Any

from datasets import Features, List, Value

from runtime.config import ConfigError
from runtime.data.registry import DatasetAttr

MESSAGE = {"role": Value("string"), "content": Value("string")}
FEATURES = Features(
    {
        "_prompt": List(MESSAGE),
        "_response": List(MESSAGE),
        "_system": Value("string"),
        "_tools": Value("string"),
        "_media": Value("string"),  # the first <image>/<video>/<audio> placeholder seen ("" for none)
    }
)
PAIRWISE_STAGES = ("rm", "dpo")
MEDIA_COLUMNS = ("images", "videos", "audios")
MEDIA_TOKENS = ("<image>", "<video>", "<audio>")
MULTIMODAL = (
    "multimodal data is not supported for this model: images train with a Qwen2-VL, Qwen2.5-VL or "
    "Qwen3-VL model and its template (runtime/mm); use a text-only dataset here"
)
KTO_STAGE = "kto"


def check_columns(
    attr: DatasetAttr, column_names: list[str], *, stage: str, family: str | None = None
) -> None:
    """ConfigError naming the config key when a needed column is absent or the data fits not the stage.
    `family`: the model's vision-language family runtime/mm does not train, named when images are given."""
    ranking = bool(attr.ranking)
    kto = "kto_tag" in attr.columns
    if stage == KTO_STAGE and not kto:
        raise ConfigError(
            attr.key,
            f"{attr.where()}: stage kto needs a boolean label column: "
            'set columns.kto_tag in dataset_info.json (kto_en_demo: "kto_tag": "label")',
        )
    if stage != KTO_STAGE and kto:
        raise ConfigError(
            attr.key, f"{attr.where()}: KTO data (columns.kto_tag) is for stage kto, not {stage}"
        )
    if stage in PAIRWISE_STAGES and not ranking:
        raise ConfigError(
            attr.key, f"{attr.where()}: stage {stage} needs preference data (chosen/rejected, ranking)"
        )
    if stage not in PAIRWISE_STAGES and ranking:
        raise ConfigError(
            attr.key, f"{attr.where()}: preference data (ranking) is for stage rm or dpo, not {stage}"
        )
    media = [c for c in MEDIA_COLUMNS if c in attr.explicit or c in column_names]
    if media and family:
        from runtime.mm.families import unsupported_message

        raise ConfigError(
            attr.key, f"{attr.where()}: has {'/'.join(media)} columns: {unsupported_message(family)}"
        )
    if media:
        raise ConfigError(attr.key, f"{attr.where()}: has {'/'.join(media)} columns: {MULTIMODAL}")
    required = set(attr.explicit)
    if attr.formatting == "alpaca":
        required.add("prompt")
        if stage in ("sft", KTO_STAGE):
            required.add("response")
    else:
        required.add("messages")
    if ranking:
        required |= {"chosen", "rejected"}
    present = set(column_names)
    for column_key in sorted(required):
        column = attr.columns.get(column_key)
        if column not in present:
            raise ConfigError(
                attr.key,
                f"{attr.where()}: column '{column}' (columns.{column_key}) not found; "
                f"the file has: {', '.join(sorted(present))}",
            )
    # Optional default columns (query "input", ...) that the file lacks are simply not used.
    attr.columns = {k: v for k, v in attr.columns.items() if v in present}


def to_messages(dataset: Any, attr: DatasetAttr, **map_options: Any) -> Any:
    """Map the raw rows to _prompt/_response/_system/_tools (cached by datasets' fingerprint; a stream is
    mapped lazily). `map_options`: num_proc and load_from_cache_file for a Dataset, none for a stream."""
    convert = convert_alpaca if attr.formatting == "alpaca" else convert_sharegpt
    if map_options:
        map_options["desc"] = f"Converting {attr.name} ({attr.formatting})"
    return dataset.map(
        convert,
        batched=True,
        fn_kwargs={"columns": attr.columns, "tags": attr.tags, "ranking": bool(attr.ranking)},
        remove_columns=list(dataset.column_names or []),
        features=FEATURES,
        **map_options,
    )


def _rows(batch: dict[str, list]) -> list[dict[str, Any]]:
    size = len(next(iter(batch.values()))) if batch else 0
    return [{k: v[i] for k, v in batch.items()} for i in range(size)]


def _out(rows: list[tuple[list, list, str]], tools: list[str]) -> dict[str, list]:
    media = []
    for prompt, response, system in rows:
        text = system + "".join(m["content"] for m in prompt + response)
        media.append(next((t for t in MEDIA_TOKENS if t in text), ""))
    return {
        "_prompt": [r[0] for r in rows],
        "_response": [r[1] for r in rows],
        "_system": [r[2] for r in rows],
        "_tools": tools,
        "_media": media,
    }


def _tools(row: dict[str, Any], columns: dict[str, str]) -> str:
    value = row.get(columns.get("tools", ""))
    if value is None or value == "":
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _msg(role: str, content: Any) -> dict[str, str]:
    return {"role": role, "content": "" if content is None else str(content)}


def _kto_response(tag: Any, reply: Any) -> list[dict[str, str]]:
    """LLaMA-Factory's KTO encoding: the reply in slot 0 when desirable, slot 1 when not; a tag that
    is not a boolean makes the row unusable (dropped)."""
    if not isinstance(tag, bool) or not isinstance(reply, str):
        return []
    empty = _msg("assistant", "")
    return [_msg("assistant", reply), empty] if tag else [empty, _msg("assistant", reply)]


def convert_alpaca(batch: dict[str, list], *, columns: dict[str, str], tags: dict[str, str], ranking: bool):
    out, tools = [], []
    for row in _rows(batch):
        tools.append(_tools(row, columns))
        prompt = []
        history = row.get(columns.get("history", ""))
        if isinstance(history, list):
            for turn in history:
                if isinstance(turn, (list, tuple)) and len(turn) == 2:
                    prompt += [_msg("user", turn[0]), _msg("assistant", turn[1])]
        query = [row.get(columns.get(k, "")) for k in ("prompt", "query")]
        prompt.append(_msg("user", "\n".join(str(q) for q in query if q)))
        chosen, rejected = row.get(columns.get("chosen", "")), row.get(columns.get("rejected", ""))
        answer = row.get(columns.get("response", ""))
        if "kto_tag" in columns:
            response = _kto_response(row.get(columns["kto_tag"]), answer)
        elif ranking and isinstance(chosen, str) and isinstance(rejected, str):
            response = [_msg("assistant", chosen), _msg("assistant", rejected)]
        elif not ranking and isinstance(answer, str):
            response = [_msg("assistant", answer)]
        else:
            response = []
        out.append((prompt, response, row.get(columns.get("system", "")) or ""))
    return _out(out, tools)


def convert_sharegpt(batch: dict[str, list], *, columns: dict[str, str], tags: dict[str, str], ranking: bool):
    role_of = {
        tags["user_tag"]: "user",
        tags["observation_tag"]: "observation",
        tags["assistant_tag"]: "assistant",
        tags["function_tag"]: "function",  # written in the family's call syntax by runtime.data.tools
    }
    odd, even = (tags["user_tag"], tags["observation_tag"]), (tags["assistant_tag"], tags["function_tag"])
    role_key, content_key = tags["role_tag"], tags["content_tag"]
    out, tools = [], []
    for row in _rows(batch):
        tools.append(_tools(row, columns))
        turns = list(row.get(columns["messages"]) or [])
        system = row.get(columns.get("system", "")) or ""
        if turns and isinstance(turns[0], dict) and turns[0].get(role_key) == tags["system_tag"]:
            system, turns = turns[0].get(content_key) or "", turns[1:]
        ok = all(isinstance(t, dict) and t.get(role_key) in (odd, even)[i % 2] for i, t in enumerate(turns))
        messages = [_msg(role_of[t[role_key]], t.get(content_key)) for t in turns] if ok else []
        if ranking:
            pair = [row.get(columns["chosen"]), row.get(columns["rejected"])]
            ok = (
                ok
                and len(messages) % 2 == 1
                and all(isinstance(p, dict) and p.get(role_key) in even for p in pair)
            )
            prompt, response = messages, [_msg("assistant", p.get(content_key)) for p in pair] if ok else []
        elif "kto_tag" in columns:
            ok = ok and len(messages) % 2 == 0 and len(messages) > 0
            prompt = messages[:-1]
            response = _kto_response(row.get(columns["kto_tag"]), messages[-1]["content"]) if ok else []
            ok = ok and bool(response)
        else:
            ok = ok and len(messages) % 2 == 0 and len(messages) > 0
            prompt, response = messages[:-1], messages[-1:]
        out.append((prompt, response, system) if ok else ([], [], system))
    return _out(out, tools)
