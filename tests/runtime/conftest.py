"""Runtime fixtures on top of tests/conftest.py's tiny_dir: the tokenizer and a data-config factory."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir / "model")


@pytest.fixture
def data_cfg(tiny_dir: Path, tmp_path: Path):
    """data_cfg(dataset=..., **overrides) -> a config object with the data fields build_datasets reads.

    Each test gets its own datasets cache (cache_dir), so tests never read each other's cached maps.
    """

    def make(**overrides) -> SimpleNamespace:
        fields = {
            "dataset": None,
            "eval_dataset": None,
            "dataset_dir": str(tiny_dir / "data"),
            "template": None,
            "cutoff_len": 2048,
            "max_samples": None,
            "val_size": 0.0,
            "preprocessing_num_workers": None,
            "packing": False,
            "seed": 42,
            "overwrite_cache": False,
            "cache_dir": str(tmp_path / "hf-cache"),
        }
        fields.update(overrides)
        return SimpleNamespace(**fields)

    return make
