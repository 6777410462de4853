"""Two kinds of packing.

LLaMA-Factory's `packing`/`neat_packing` (sft): `pack_rows` puts whole tokenized examples into rows of at
most cutoff_len tokens offline (greedy knapsack, as LLaMA-Factory does); the batch size then counts rows.
Plain `packing` lets the examples of a row attend to each other (LLaMA-Factory's choice); `neat_packing`
keeps them apart with restarting position_ids and no attention_mask (below).

runtime.perf.plan's padding-free lever (`padding_free`, not a key): a micro-batch of whole examples flattened,
position_ids restarting at 0 for every example, like transformers' DataCollatorWithFlattening. With a
variable-length attention (VARLEN_ATTENTION: flash attention's varlen kernels, flex with a block mask, sdpa
per example: runtime/levers/sdpa_varlen.py) the
whole micro-batch is one row: its cost is linear in the row. With sdpa/eager the attention cost is the square
of the row (22 examples: 1489 tok/s as one 3870-token row, 3585 tok/s as rows of <= 512, measured on CPU),
so `pack_micro_batch` splits the micro-batch into rows of at most cutoff_len tokens (first-fit by length),
padded to the longest row.

No attention_mask is passed: transformers then reads packed sequences from position_ids and builds a
block-diagonal causal mask (eager, sdpa, flex) or uses varlen kernels (flash attention), so examples
never attend to each other. tests/runtime/data/test_data_packing.py checks packed logits == per-example
logits for eager and sdpa on CPU. Any other implementation is refused rather than trusted.
The model must run without a KV cache (use_cache False): check_packing_support(model) makes sure.
"""

from __future__ import annotations

import bisect
from typing import Any

from runtime.config import ConfigError

IGNORE_INDEX = -100
# Implementations whose transformers code path isolates packed sequences given position_ids only.
# xgen_sdpa_varlen is runtime/levers/sdpa_varlen.py (`flash_attn: sdpa_varlen`, perf auto's choice on CPU).
PACKING_ATTENTION = (
    "eager",
    "sdpa",
    "flex_attention",
    "flash_attention_2",
    "flash_attention_3",
    "xgen_sdpa_varlen",
)
# Of those, the ones whose cost stays linear in a row of many examples: one row per micro-batch is fine.
VARLEN_ATTENTION = ("flex_attention", "flash_attention_2", "flash_attention_3", "xgen_sdpa_varlen")


def attention_of(model: Any) -> str | None:
    """The attention implementation a loaded (possibly peft-wrapped) model runs, None if it has no config."""
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) if config is not None else None


def row_capacity(attention: str | None, cutoff_len: int) -> int | None:
    """The longest padding-free row: unlimited (None) under a variable-length attention, else cutoff_len.
    An unknown attention (None) gets the cap: never quadratic by accident."""
    return None if attention in VARLEN_ATTENTION else cutoff_len


def check_packing_support(model_or_attn: Any) -> None:
    """Call after loading the model when packing is on: never let packed examples cross-attend silently.

    Takes the model (or its attention implementation name). Given the model it also turns the KV cache
    off: transformers only reads packed sequences from position_ids when no cache is passed, and a
    forward with use_cache=True creates one. (Trainer already sets config.use_cache from
    TrainingArguments.use_cache, False by default; this keeps it so outside Trainer too.)
    """
    config = getattr(model_or_attn, "config", None)
    attn = getattr(config, "_attn_implementation", None) if config is not None else model_or_attn
    if attn not in PACKING_ATTENTION:
        raise ConfigError(
            "packing",
            f"packed examples are kept apart only with attention {', '.join(PACKING_ATTENTION)}; "
            f"the model uses {attn!r}: set packing: false or another flash_attn",
        )
    if config is not None:
        config.use_cache = False


def knapsack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices grouped into bins of total length <= capacity: each bin takes the longest example that
    still fits, then the next, until none fits (LLaMA-Factory's greedy_knapsack, so rows group alike)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    sizes = [lengths[i] for i in order]
    bins = []
    while order:
        room, current = capacity, []
        while True:
            k = bisect.bisect(sizes, room) - 1
            if k < 0:
                break
            room -= sizes.pop(k)
            current.append(order.pop(k))
        if not current:  # an example longer than a row: tokenize_sft truncates, so only a bug gets here
            raise ValueError(f"example of {sizes[0]} tokens exceeds a row of {capacity}")
        bins.append(current)
    return bins


def pack_rows(batch: dict, *, capacity: int, neat: bool) -> dict[str, list]:
    """Tokenized sft examples -> rows of whole examples, each at most `capacity` tokens.

    position_ids restart per example in both modes (as in LLaMA-Factory); under `neat` the first label of
    each example is -100 (it would be predicted from the previous example) and no attention_mask is kept, so
    the collator leaves the model to build the block-diagonal mask from position_ids."""
    out: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": []}
    if not neat:
        out["attention_mask"] = []
    lengths = [len(ids) for ids in batch["input_ids"]]
    for members in knapsack(lengths, capacity):
        row = flatten([{"input_ids": batch["input_ids"][i], "labels": batch["labels"][i]} for i in members])
        if not neat:
            row["labels"] = [label for i in members for label in batch["labels"][i]]
            out["attention_mask"].append([1] * len(row["input_ids"]))
        for key in ("input_ids", "labels", "position_ids"):
            out[key].append(row[key])
    return out


def pack_micro_batch(features: list[dict], capacity: int | None) -> list[dict[str, list[int]]]:
    """A micro-batch of whole examples -> flattened rows of at most `capacity` tokens each (one row when
    capacity is None). Examples are grouped by `knapsack` (longest first), so rows come out nearly full and
    padding them to the longest row costs little; no example is ever split."""
    if capacity is None or len(features) == 1:
        return [flatten(features)]
    lengths = [len(f["input_ids"]) for f in features]
    # A pt block or an sft example is at most cutoff_len long; max() keeps a longer one whole, in its own row.
    groups = knapsack(lengths, max(capacity, *lengths))
    return [flatten([features[i] for i in sorted(group)]) for group in groups]


def flatten(features: list[dict]) -> dict[str, list[int]]:
    """One row: input_ids and labels concatenated, position_ids restarting per example (or per document
    inside a pt block, when the example brings its own position_ids). The first label of each sequence is
    -100: it would otherwise be predicted from the end of the previous example."""
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    for feature in features:
        ids = list(feature["input_ids"])
        positions = list(feature.get("position_ids") or range(len(ids)))
        example_labels = list(feature.get("labels", ids))
        input_ids += ids
        position_ids += positions
        labels += [
            IGNORE_INDEX if p == 0 else label for p, label in zip(positions, example_labels, strict=True)
        ]
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


class TokenBudgetBatches:
    """`micro_batch_tokens`: the train set cut into micro-batches of whole examples, each at most `budget`
    tokens, for a DataLoader's batch_sampler.

    The grouping is made once and is the same on every rank: examples shuffled with `seed`, then knapsack
    (as `pack_rows`, within windows of 1000 as LLaMA-Factory packs). With `row` (the collator's row cap
    under sdpa/eager) the examples are first packed into rows of at most `row` tokens and whole rows are
    then grouped up to the budget, so the collator finds nearly full rows again (computed/real tokens
    ~1.01 on the CPU benchmark's data, bench/sft_throughput.py --shape cpu, against ~1.13 when packing
    straight to the budget); without it (one row per micro-batch) examples go straight into micro-batches
    of the budget.
    Each epoch only reorders the micro-batches (seed + epoch), so their number never changes and the
    Trainer's step count holds. The batches are global: accelerate's BatchSamplerShard deals them to the
    ranks in turn (rank r takes r, r + W, ...) and repeats the first ones at the end so every rank runs the
    same number of micro-batches (no rank waits in a collective the others never reach).
    A sampler of our own: transformers' BatchRebalanceSampler fixes examples per step, not tokens.
    """

    batch_size = None  # variable-size batches (accelerate's BatchSamplerShard reads this)
    drop_last = False

    def __init__(
        self, lengths: list[int], budget: int, *, seed: int, row: int | None = None, window: int = 1000
    ) -> None:
        import random

        order = list(range(len(lengths)))
        random.Random(seed).shuffle(order)
        units: list[list[int]] = []
        for start in range(0, len(order), window):
            part = order[start : start + window]
            size = [lengths[i] for i in part]
            units += [sorted(part[k] for k in group) for group in knapsack(size, max(row or budget, *size))]
        if row is None:
            self.batches = units
        else:  # whole rows, shuffled, grouped up to the budget
            random.Random(seed).shuffle(units)
            self.batches, current, tokens = [], [], 0
            for unit in units:
                n = sum(lengths[i] for i in unit)
                if current and tokens + n > budget:
                    self.batches.append(sorted(current))
                    current, tokens = [], 0
                current, tokens = current + unit, tokens + n
            if current:
                self.batches.append(sorted(current))
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):  # noqa: ANN204
        import random

        order = list(range(len(self.batches)))
        random.Random(self.seed + self.epoch).shuffle(order)
        return iter([self.batches[i] for i in order])
