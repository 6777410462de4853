"""Training arguments, LLaMA-Factory key names. Torch-free (the generator imports it).

STUB written to pin the interface; the runtime issue fills in every key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """One bad key: rendered as `<key>: <message>` (the CLI prefixes `xgen-runtime: error: `)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass
class TrainConfig:
    model_name_or_path: str = ""
    stage: str = "sft"
    finetuning_type: str = "lora"
    output_dir: str = "saves/run"


def parse_train_config(mapping: Mapping[str, Any], *, key_prefix: str = "") -> TrainConfig:
    """Validate a `train:` mapping (or a flat LLaMA-Factory YAML) into a TrainConfig.

    Raises ConfigError naming the key as `key_prefix + key` (the generator passes "train.").
    Must not import torch and must not touch the file system beyond what validation needs.
    """
    raise NotImplementedError
