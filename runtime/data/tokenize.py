"""Per-stage tokenization of normalized rows (_prompt/_response/_system/_tools), for
`datasets.map(batched=True)`.

Text pieces are tokenized one at a time and concatenated, so the boundary between prompt and reply is
exact: labels are -100 on every token rendered from prompt text and the token ids themselves on reply
text. Rows that cannot be used (broken turn order, nothing left to learn after truncation) are dropped;
the caller reports how many.
"""

from __future__ import annotations

from runtime.data.packing import IGNORE_INDEX
from runtime.data.templates import ChatFormat, with_system
from runtime.data.tools import apply_tools, default_tool_format, format_calls, format_tools, parse_tools


def infer_seqlen(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """LLaMA-Factory's split of a token budget: the reply keeps up to all of it when it is short."""
    if target_len * 2 < cutoff_len:
        max_target_len = cutoff_len
    elif source_len * 2 < cutoff_len:
        max_target_len = cutoff_len - source_len
    else:
        max_target_len = int(cutoff_len * (target_len / (source_len + target_len)))
    new_target_len = min(max_target_len, target_len)
    new_source_len = min(max(cutoff_len - new_target_len, 0), source_len)
    return new_source_len, new_target_len


def _keep_end(ids: list[int], n: int) -> list[int]:
    """Prompts lose their start, so the reply stays attached to the header that introduces it."""
    return ids[len(ids) - n :] if n else []


def _with_tools(
    messages: list[dict], system: str, tools: str, chat: ChatFormat, tool_format: str | None
) -> tuple[list[dict], str, str]:
    """(messages, system, tool text) for the chat format: function-call turns written in the tool
    format, the tool schemas as text after the system prompt (LLaMA-Factory's format_tools; data.tools).
    The tokenizer's own chat template (no named template) gets the turns rewritten as plain roles."""
    if not tools and not any(m["role"] in ("function", "observation") for m in messages):
        return messages, system, ""
    if chat.spec is None:
        own = apply_tools(with_system(messages, system), tools, tool_format=tool_format, template=None)
        return own, "", ""
    fmt = tool_format or default_tool_format(chat.name)
    tool_text = format_tools(parse_tools(tools), fmt)
    calls = [
        {**m, "content": format_calls(m["content"], fmt)} if m["role"] == "function" else m for m in messages
    ]
    return calls, system, tool_text


def tokenize_sft(
    batch: dict,
    *,
    tokenizer,
    chat: ChatFormat,
    cutoff_len: int,
    train_on_prompt: bool = False,
    mask_history: bool = False,
    tool_format: str | None = None,
) -> dict[str, list]:
    """LLaMA-Factory's supervised rows (its processor/supervised.py): prompt labels -100 (all labels with
    train_on_prompt); with mask_history only the last reply is a label and the token budget goes to the
    last turns first; efficient_eos templates end with one EOS that the next prompt's first token learns."""
    out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    eos = tokenizer.eos_token_id
    tools_column = batch.get("_tools") or [""] * len(batch["_prompt"])
    rows = zip(batch["_prompt"], batch["_response"], batch["_system"], tools_column, strict=True)
    for prompt, response, system, tools in rows:
        if len(prompt) % 2 != 1 or len(response) != 1:
            continue
        messages, system, tool_text = _with_tools(prompt + response, system, tools, chat, tool_format)
        pairs = chat.encode_multiturn(tokenizer, messages, system, tool_text=tool_text)
        if mask_history:
            pairs.reverse()  # the budget goes to the last turns first
        input_ids: list[int] = []
        labels: list[int] = []
        total = 1 if chat.efficient_eos else 0  # the closing EOS is reserved in the budget
        for turn, (source, target) in enumerate(pairs):
            if total >= cutoff_len:
                break
            source_len, target_len = infer_seqlen(len(source), len(target), cutoff_len - total)
            source, target = _keep_end(source, source_len), target[:target_len]
            total += source_len + target_len
            if train_on_prompt:
                source_labels = list(source)
            else:
                source_labels = [IGNORE_INDEX] * source_len
                if chat.efficient_eos and turn and source_len:
                    source_labels[0] = eos
            target_labels = [IGNORE_INDEX] * target_len if mask_history and turn else list(target)
            if mask_history:
                input_ids = source + target + input_ids
                labels = source_labels + target_labels + labels
            else:
                input_ids += source + target
                labels += source_labels + target_labels
        if chat.efficient_eos:
            input_ids.append(eos)
            labels.append(eos)
        if all(label == IGNORE_INDEX for label in labels):
            continue
        out["input_ids"].append(input_ids)
        out["attention_mask"].append([1] * len(input_ids))
        out["labels"].append(labels)
    return out


def tokenize_pairwise(
    batch: dict, *, tokenizer, chat: ChatFormat, cutoff_len: int, tool_format: str | None = None
) -> dict[str, list]:
    """chosen_* and rejected_* rows sharing one prompt (earlier turns count as prompt)."""
    names = [
        f"{side}_{field}"
        for side in ("chosen", "rejected")
        for field in ("input_ids", "attention_mask", "labels")
    ]
    out: dict[str, list] = {name: [] for name in names}
    end = [tokenizer.eos_token_id] if chat.efficient_eos else []
    tools_column = batch.get("_tools") or [""] * len(batch["_prompt"])
    rows = zip(batch["_prompt"], batch["_response"], batch["_system"], tools_column, strict=True)
    for prompt, response, system, tools in rows:
        if len(prompt) % 2 != 1 or len(response) != 2:
            continue
        messages, system, tool_text = _with_tools(prompt, system, tools, chat, tool_format)
        source, chosen = chat.encode_oneturn(tokenizer, messages + response[:1], system, tool_text=tool_text)
        _, rejected = chat.encode_oneturn(tokenizer, messages + response[1:], system, tool_text=tool_text)
        chosen, rejected = chosen + end, rejected + end
        source_len, target_len = infer_seqlen(len(source), max(len(chosen), len(rejected)), cutoff_len)
        source = _keep_end(source, source_len)
        if target_len == 0:
            continue
        for side, target in (("chosen", chosen[:target_len]), ("rejected", rejected[:target_len])):
            out[f"{side}_input_ids"].append(source + target)
            out[f"{side}_attention_mask"].append([1] * (len(source) + len(target)))
            out[f"{side}_labels"].append([IGNORE_INDEX] * len(source) + target)
    return out


def tokenize_kto(
    batch: dict, *, tokenizer, chat: ChatFormat, cutoff_len: int, tool_format: str | None = None
) -> dict[str, list]:
    """KTO rows: the labelled reply (kto_tags) plus a KL row, this prompt with the previous row's reply.

    The mismatched pairs are built as LLaMA-Factory and trl build them: replies shifted by one within
    the map batch. They estimate KTO's reference point, the policy's KL from the reference.
    """
    names = ("input_ids", "attention_mask", "labels")
    out: dict[str, list] = {name: [] for name in (*names, *(f"kl_{n}" for n in names), "kto_tags")}
    end = [tokenizer.eos_token_id] if chat.efficient_eos else []
    responses = batch["_response"]
    shifted = responses[-1:] + responses[:-1]
    tools_column = batch.get("_tools") or [""] * len(batch["_prompt"])
    rows = zip(batch["_prompt"], responses, shifted, batch["_system"], tools_column, strict=True)
    for prompt, response, other, system, tools in rows:
        if len(prompt) % 2 != 1 or len(response) != 2:
            continue
        desirable = bool(response[0]["content"])
        reply = response[0] if desirable else response[1]
        kl_reply = (other[0] if other[0]["content"] else other[1]) if len(other) == 2 else reply
        messages, system, tool_text = _with_tools(prompt, system, tools, chat, tool_format)
        pairs = []
        for r in (reply, kl_reply):
            source, target = chat.encode_oneturn(tokenizer, [*messages, r], system, tool_text=tool_text)
            source_len, target_len = infer_seqlen(len(source), len(target) + len(end), cutoff_len)
            pairs.append((_keep_end(source, source_len), (target + end)[:target_len]))
        if not pairs[0][1] or not pairs[1][1]:
            continue
        for prefix, (source, target) in zip(("", "kl_"), pairs, strict=True):
            out[f"{prefix}input_ids"].append(source + target)
            out[f"{prefix}attention_mask"].append([1] * (len(source) + len(target)))
            out[f"{prefix}labels"].append([IGNORE_INDEX] * len(source) + target)
        out["kto_tags"].append(desirable)
    return out


def tokenize_pt(
    batch: dict, *, tokenizer, cutoff_len: int, packing: bool = True, keep_apart: bool = False
) -> dict[str, list]:
    """LLaMA-Factory's pt rows. packing (its default for pt): documents + EOS concatenated and cut into
    blocks of cutoff_len (the last block may be shorter); otherwise each document cut to cutoff_len.

    keep_apart (the padding-free lever): position_ids restart at every document start, so the packing
    collator keeps documents from attending to each other inside a block.
    """
    eos = tokenizer.eos_token or ""
    texts = [prompt[0]["content"] + eos for prompt in batch["_prompt"] if prompt and prompt[0]["content"]]
    documents = (
        [ids for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] if ids] if texts else []
    )
    out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    if not packing:
        for ids in documents:
            block = ids[:cutoff_len]
            out["input_ids"].append(block)
            out["attention_mask"].append([1] * len(block))
            out["labels"].append(list(block))
        return out
    tokens = [t for ids in documents for t in ids]
    positions = [p for ids in documents for p in range(len(ids))]
    if keep_apart:
        out["position_ids"] = []
    for start in range(0, len(tokens), cutoff_len):
        block = tokens[start : start + cutoff_len]
        out["input_ids"].append(block)
        out["attention_mask"].append([1] * len(block))
        out["labels"].append(list(block))
        if keep_apart:
            # A block that starts mid-document starts that document's positions afresh.
            out["position_ids"].append(_restart_first(positions[start : start + cutoff_len]))
    return out


def _restart_first(positions: list[int]) -> list[int]:
    """Shift the leading run (a document continued from the previous block) to start at 0."""
    result, offset = list(positions), positions[0]
    i = 0
    while i < len(result) and (i == 0 or positions[i] == positions[i - 1] + 1):
        result[i] = positions[i] - offset
        i += 1
    return result


def tokenize_generate(
    batch: dict, *, tokenizer, chat: ChatFormat, cutoff_len: int, tool_format: str | None = None
) -> dict[str, list]:
    """LLaMA-Factory's rows for generation (its processor/unsupervised.py, do_predict): input_ids the
    prompt ending with the assistant header, labels the reply to compare with (an empty reply when the row
    has none), within cutoff_len by the same split as training. A long prompt loses its start, as in
    tokenize_sft (LLaMA-Factory cuts its end), so it still ends with the header the reply follows."""
    out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    end = [tokenizer.eos_token_id] if chat.efficient_eos else []
    tools_column = batch.get("_tools") or [""] * len(batch["_prompt"])
    rows = zip(batch["_prompt"], batch["_response"], batch["_system"], tools_column, strict=True)
    for prompt, response, system, tools in rows:
        if len(prompt) % 2 != 1:
            continue
        reply = response if len(response) == 1 else [{"role": "assistant", "content": ""}]
        messages, system, tool_text = _with_tools(prompt + reply, system, tools, chat, tool_format)
        source, target = chat.encode_oneturn(tokenizer, messages, system, tool_text=tool_text)
        target = target + end
        source_len, target_len = infer_seqlen(len(source), len(target), cutoff_len)
        source = _keep_end(source, source_len)
        if not source:
            continue
        out["input_ids"].append(source)
        out["attention_mask"].append([1] * len(source))
        out["labels"].append(target[:target_len])
    return out
