"""`flash_attn: sdpa_varlen`: torch's scaled_dot_product_attention run once per packed example.

Why our own: on a padding-free row, transformers' `sdpa` builds a [row, row] block-diagonal mask and scores
every query against every key of the row (quadratic in the row, most of it masked); the kernels that skip
the masked blocks (flash attention's varlen, flex attention's block mask) need CUDA. Here the row is cut at
every restart of position_ids and each example runs sdpa with `is_causal=True` and no mask (torch's fused
CPU flash kernel), so the cost is the sum of the examples' squares and the whole micro-batch can be ONE row
without padding. The maths is sdpa's: transformers' own `sdpa_attention_forward` runs each piece (GQA,
scaling, dropout, causal flag as the model sets them), so a packed row gives the logits of its examples run
one by one (tests/runtime/levers/test_sdpa_varlen.py, within 1e-5, forward and gradients).

    register()                 # once per process, before from_pretrained(attn_implementation=NAME)
    why_not(model_config)      # None when the model's attention is plain causal; else the reason

With a padding mask (evaluation of padded batches, LLaMA-Factory's plain `packing` rows) the mask function
builds sdpa's mask and the attention is exactly `sdpa`. Without one, position_ids say where examples start
(transformers' own packed-sequence rule: a sequence starts at position 0). Runs of one-token sequences
(the padding of neat rows: each pad has position 0) need no kernel: a token that attends only to itself
outputs its own value vector.
"""

from __future__ import annotations

from typing import Any

NAME = "xgen_sdpa_varlen"  # the attn_implementation name registered with transformers


def register() -> None:
    """Register NAME with transformers' AttentionInterface and AttentionMaskInterface (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, mask)


def why_not(config: Any) -> str | None:
    """Why NAME would compute something else than the model's own attention, or None when it is safe.

    Checked from the model config before loading: sliding windows, logit soft-capping and attention sinks
    live in masks or kernel arguments that a per-example causal sdpa does not apply."""
    for sub in ("text_config", "language_model"):  # a multimodal wrapper's language model
        config = getattr(config, sub, None) or config
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True):
        return f"the model uses a sliding window of {window} tokens"
    kinds = set(getattr(config, "layer_types", None) or ()) - {"full_attention"}
    if kinds:
        return f"the model has {', '.join(sorted(kinds))} layers"
    for key in ("attn_logit_softcapping", "attention_sink", "sinks"):
        if getattr(config, key, None):
            return f"the model sets {key}"
    return None


def mask(*args: Any, attention_mask: Any = None, **kwargs: Any) -> Any:
    """transformers' mask function for NAME: None without a padding mask (the attention reads position_ids),
    else sdpa's own mask, never skipped to None (so the attention knows a mask was given)."""
    if attention_mask is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, attention_mask=attention_mask, **{**kwargs, "allow_is_causal_skip": False})


def sequence_starts(position_ids: Any) -> list[list[int]]:
    """Per row, the offsets where a sequence starts (position 0, and the row's first token), ending with
    the row's length. position_ids: [batch, seq] (or [seq]) long tensor."""
    import torch

    rows = position_ids.view(-1, position_ids.shape[-1])
    length = rows.shape[-1]
    starts = rows == 0
    starts[:, 0] = True
    found = torch.nonzero(starts).tolist()  # one host sync; the lists are short
    per_row: list[list[int]] = [[] for _ in range(rows.shape[0])]
    for row, col in found:
        per_row[row].append(col)
    return [offsets + [length] for offsets in per_row]


_last_starts: tuple[Any, int, list[list[int]]] | None = None  # (position_ids, its _version, offsets)


def starts_once_per_forward(position_ids: Any) -> list[list[int]]:
    """sequence_starts, computed once per forward: every layer receives the same position_ids tensor, so
    the last answer is kept with that tensor (held, so its identity cannot be reused) and its version (an
    in-place write invalidates it). One host sync per forward instead of one per layer."""
    global _last_starts
    if position_ids.is_inference():  # inference_mode tensors keep no version counter: no cache
        return sequence_starts(position_ids)
    last = _last_starts
    if last is not None and last[0] is position_ids and last[1] == position_ids._version:
        return last[2]
    offsets = sequence_starts(position_ids)
    _last_starts = (position_ids, position_ids._version, offsets)
    return offsets


def spans_of(offsets: list[int]) -> list[tuple[int, int, bool]]:
    """(start, end, False) for each sequence of a row, from sequence_starts' offsets."""
    return [(a, b, False) for a, b in zip(offsets[:-1], offsets[1:], strict=False)]


def runs_of_single_tokens(offsets: list[int]) -> list[tuple[int, int, bool]]:
    """spans_of, with each run of consecutive one-token sequences joined into one span marked True."""
    spans: list[tuple[int, int, bool]] = []
    for start, end, _ in spans_of(offsets):
        single = end - start == 1
        if single and spans and spans[-1][2]:
            spans[-1] = (spans[-1][0], end, True)
        else:
            spans.append((start, end, single))
    return spans


def attention_forward(
    module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any
) -> tuple[Any, None]:
    """AttentionInterface function. query [batch, heads, seq, head_dim], key/value [batch, kv_heads, seq,
    head_dim]; returns ([batch, seq, heads, head_dim], None) like sdpa_attention_forward.

    Raises ValueError when a packed row comes without position_ids (the model does not pass them to its
    attention), since the examples could then not be kept apart."""
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    position_ids = kwargs.pop("position_ids", None)
    if attention_mask is not None or query.shape[2] == 1 or key.shape[2] != query.shape[2]:
        # a padded batch (its mask says everything), one query, or a KV cache: plain sdpa
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if kwargs.get("position_bias") is not None:
        raise ValueError(
            f"flash_attn: sdpa_varlen cannot cut {type(module).__name__}'s position bias; "
            "set flash_attn: sdpa"
        )
    if position_ids is None:
        raise ValueError(
            f"flash_attn: sdpa_varlen needs position_ids in {type(module).__name__}'s attention call; "
            "set flash_attn: sdpa"
        )
    groups = query.shape[1] // key.shape[1]
    rows = []
    for row, offsets in enumerate(starts_once_per_forward(position_ids)):
        spans = runs_of_single_tokens(offsets) if not kwargs.get("dropout") else spans_of(offsets)
        sizes = [end - start for start, end, _ in spans]
        # torch.split, not slicing: its backward is one cat, where each slice's backward writes a zero
        # tensor the size of the whole row (measured: 2x the attention's own time on a 23-example row).
        parts = zip(*(t[row : row + 1].split(sizes, dim=2) for t in (query, key, value)), spans, strict=True)
        pieces = []
        for q, k, v, (_, _, single) in parts:
            if single:  # one-token sequences: each attends only to itself, so its output is its value
                pieces.append(repeat_kv(v, groups).transpose(1, 2).to(query.dtype))
            else:
                pieces.append(sdpa_attention_forward(module, q, k, v, None, **kwargs)[0])
        rows.append(torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0])
    return (torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]).contiguous(), None
