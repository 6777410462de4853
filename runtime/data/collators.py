"""Batch builders for the Trainer: dynamic padding, padding-free packing, and chosen/rejected pairs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime.data.packing import IGNORE_INDEX, pack_micro_batch


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(row) for row in rows)
    return torch.tensor([list(row) + [value] * (width - len(row)) for row in rows], dtype=torch.long)


@dataclass
class PaddingCollator:
    """Pads to the longest row in the batch (right side); labels padded with -100."""

    pad_token_id: int

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        ids = [f["input_ids"] for f in features]
        batch = {
            "input_ids": _pad(ids, self.pad_token_id),
            "attention_mask": _pad(
                [f.get("attention_mask") or [1] * len(f["input_ids"]) for f in features], 0
            ),
            "labels": _pad([f.get("labels", f["input_ids"]) for f in features], IGNORE_INDEX),
        }
        if all(f.get("position_ids") is not None for f in features):
            batch["position_ids"] = _pad([f["position_ids"] for f in features], 0)
        return batch


@dataclass
class PackingCollator:
    """Padding-free: the micro-batch flattened into rows of at most `max_row` tokens (None: one row, for a
    variable-length attention), position_ids restarting per example, no attention_mask (see packing.py).
    Rows are padded to the longest; each pad has position 0 (a sequence of its own) and label -100."""

    pad_token_id: int = 0
    max_row: int | None = None

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        rows = pack_micro_batch(features, self.max_row)
        return {
            "input_ids": _pad([r["input_ids"] for r in rows], self.pad_token_id),
            "labels": _pad([r["labels"] for r in rows], IGNORE_INDEX),
            "position_ids": _pad([r["position_ids"] for r in rows], 0),
        }


@dataclass
class NeatPackingCollator:
    """Rows from pack_rows(neat=True), padded to the longest; no attention_mask, so transformers keeps the
    examples apart from position_ids (each pad gets position 0: a sequence of its own, label -100)."""

    pad_token_id: int

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        return {
            "input_ids": _pad([f["input_ids"] for f in features], self.pad_token_id),
            "labels": _pad([f["labels"] for f in features], IGNORE_INDEX),
            "position_ids": _pad([f["position_ids"] for f in features], 0),
        }


@dataclass
class PairwiseCollator:
    """input_ids [2B, L]: the B chosen rows first, then the B rejected rows, padded together."""

    pad_token_id: int

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        rows = [
            {"input_ids": f[f"{side}_input_ids"], "labels": f[f"{side}_labels"]}
            for side in ("chosen", "rejected")
            for f in features
        ]
        return PaddingCollator(self.pad_token_id)(rows)


@dataclass
class KTOCollator:
    """The labelled rows padded as one batch, the mismatched KL rows as kl_*, and kto_tags (bool)."""

    pad_token_id: int

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        pad = PaddingCollator(self.pad_token_id)
        batch = pad([{k: f[k] for k in ("input_ids", "attention_mask", "labels")} for f in features])
        kl = pad([{k: f[f"kl_{k}"] for k in ("input_ids", "attention_mask", "labels")} for f in features])
        batch.update({f"kl_{k}": v for k, v in kl.items()})
        batch["kto_tags"] = torch.tensor([bool(f["kto_tags"]) for f in features], dtype=torch.bool)
        return batch
