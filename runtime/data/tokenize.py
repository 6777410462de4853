"""Per-stage tokenization of normalized rows (_prompt/_response/_system), for `datasets.map(batched=True)`.

Text pieces are tokenized one at a time and concatenated, so the boundary between prompt and reply is
exact: labels are -100 on every token rendered from prompt text and the token ids themselves on reply
text. Rows that cannot be used (broken turn order, nothing left to learn after truncation) are dropped;
the caller reports how many.
"""

from __future__ import annotations

from runtime.data.templates import ChatFormat, with_system

IGNORE_INDEX = -100


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


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _keep_end(ids: list[int], n: int) -> list[int]:
    """Prompts lose their start, so the reply stays attached to the header that introduces it."""
    return ids[len(ids) - n :] if n else []


def tokenize_sft(batch: dict, *, tokenizer, chat: ChatFormat, cutoff_len: int) -> dict[str, list]:
    out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    for prompt, response, system in zip(batch["_prompt"], batch["_response"], batch["_system"], strict=True):
        if len(prompt) % 2 != 1 or len(response) != 1:
            continue
        pieces = chat.segments(tokenizer, with_system(prompt + response, system))
        input_ids: list[int] = []
        labels: list[int] = []
        for (source_text, _), (target_text, _) in zip(pieces[0::2], pieces[1::2], strict=True):
            budget = cutoff_len - len(input_ids)
            if budget <= 0:
                break
            source, target = _encode(tokenizer, source_text), _encode(tokenizer, target_text)
            source_len, target_len = infer_seqlen(len(source), len(target), budget)
            source, target = _keep_end(source, source_len), target[:target_len]
            input_ids += source + target
            labels += [IGNORE_INDEX] * len(source) + target
        if all(label == IGNORE_INDEX for label in labels):
            continue
        out["input_ids"].append(input_ids)
        out["attention_mask"].append([1] * len(input_ids))
        out["labels"].append(labels)
    return out


def tokenize_pairwise(batch: dict, *, tokenizer, chat: ChatFormat, cutoff_len: int) -> dict[str, list]:
    """chosen_* and rejected_* rows sharing one prompt (earlier turns count as prompt)."""
    names = [
        f"{side}_{field}"
        for side in ("chosen", "rejected")
        for field in ("input_ids", "attention_mask", "labels")
    ]
    out: dict[str, list] = {name: [] for name in names}
    for prompt, response, system in zip(batch["_prompt"], batch["_response"], batch["_system"], strict=True):
        if len(prompt) % 2 != 1 or len(response) != 2:
            continue
        conversation = with_system(prompt, system)
        head, chosen_text = chat.split_last_reply(tokenizer, conversation + response[:1])
        _, rejected_text = chat.split_last_reply(tokenizer, conversation + response[1:])
        source = _encode(tokenizer, head)
        chosen, rejected = _encode(tokenizer, chosen_text), _encode(tokenizer, rejected_text)
        source_len, target_len = infer_seqlen(len(source), max(len(chosen), len(rejected)), cutoff_len)
        source = _keep_end(source, source_len)
        if target_len == 0:
            continue
        for side, target in (("chosen", chosen[:target_len]), ("rejected", rejected[:target_len])):
            out[f"{side}_input_ids"].append(source + target)
            out[f"{side}_attention_mask"].append([1] * (len(source) + len(target)))
            out[f"{side}_labels"].append([IGNORE_INDEX] * len(source) + target)
    return out


def tokenize_kto(batch: dict, *, tokenizer, chat: ChatFormat, cutoff_len: int) -> dict[str, list]:
    """KTO rows: the labelled reply (kto_tags) plus a KL row, this prompt with the previous row's reply.

    The mismatched pairs are built as LLaMA-Factory and trl build them: replies shifted by one within
    the map batch. They estimate KTO's reference point, the policy's KL from the reference.
    """
    names = ("input_ids", "attention_mask", "labels")
    out: dict[str, list] = {name: [] for name in (*names, *(f"kl_{n}" for n in names), "kto_tags")}
    responses = batch["_response"]
    shifted = responses[-1:] + responses[:-1]
    for prompt, response, other, system in zip(
        batch["_prompt"], responses, shifted, batch["_system"], strict=True
    ):
        if len(prompt) % 2 != 1 or len(response) != 2:
            continue
        desirable = bool(response[0]["content"])
        reply = response[0] if desirable else response[1]
        kl_reply = (other[0] if other[0]["content"] else other[1]) if len(other) == 2 else reply
        conversation = with_system(prompt, system)
        rows = [_one_reply(tokenizer, chat, conversation, r, cutoff_len) for r in (reply, kl_reply)]
        if not rows[0][1] or not rows[1][1]:
            continue
        for prefix, (source, target) in zip(("", "kl_"), rows, strict=True):
            out[f"{prefix}input_ids"].append(source + target)
            out[f"{prefix}attention_mask"].append([1] * (len(source) + len(target)))
            out[f"{prefix}labels"].append([IGNORE_INDEX] * len(source) + target)
        out["kto_tags"].append(desirable)
    return out


def _one_reply(tokenizer, chat: ChatFormat, conversation: list, reply: dict, cutoff_len: int):
    """(prompt ids, reply ids) cut to cutoff_len the way pairs are cut."""
    head, text = chat.split_last_reply(tokenizer, conversation + [reply])
    source, target = _encode(tokenizer, head), _encode(tokenizer, text)
    source_len, target_len = infer_seqlen(len(source), len(target), cutoff_len)
    return _keep_end(source, source_len), target[:target_len]


def tokenize_pt(batch: dict, *, tokenizer, cutoff_len: int, packing: bool) -> dict[str, list]:
    """Documents + EOS concatenated and cut into blocks of cutoff_len (the last block may be shorter).

    With packing, position_ids restart at every document start, so the packing collator keeps documents
    from attending to each other inside a block.
    """
    eos = tokenizer.eos_token or ""
    texts = [prompt[0]["content"] + eos for prompt in batch["_prompt"] if prompt and prompt[0]["content"]]
    documents = (
        [ids for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] if ids] if texts else []
    )
    tokens = [t for ids in documents for t in ids]
    positions = [p for ids in documents for p in range(len(ids))]
    out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    if packing:
        out["position_ids"] = []
    for start in range(0, len(tokens), cutoff_len):
        block = tokens[start : start + cutoff_len]
        out["input_ids"].append(block)
        out["attention_mask"].append([1] * len(block))
        out["labels"].append(list(block))
        if packing:
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
