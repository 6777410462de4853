"""Training arguments with LLaMA-Factory's key names. Torch-free: the generator imports it.

`parse_train_config` is the one gate every config passes: unknown keys, wrong types, bad
choices and contradictions become a `ConfigError(key, message)` before anything heavy is
imported. Keys that transformers 5.x removed (``warmup_ratio``, ``evaluation_strategy``,
``no_cuda`` …) are translated, and each translation is recorded in ``TrainConfig.notes`` so
the runtime can say what it did in one line.

A key's whole story, one module each: `schema` (name, type, default, doc), `translate`
(LLaMA-Factory / transformers-4 spellings), `rules` (cross-key checks and derived values),
`files` (the YAML and JSON files a config names), `parse` (the gate that runs them in order).
"""

from runtime.config.parse import load_config, parse_train_config
from runtime.config.schema import (
    FINETUNING_TYPES,
    STAGES,
    ConfigError,
    ConfigErrors,
    TrainConfig,
    train_fields,
)

__all__ = [
    "FINETUNING_TYPES",
    "STAGES",
    "ConfigError",
    "ConfigErrors",
    "TrainConfig",
    "load_config",
    "parse_train_config",
    "train_fields",
]
