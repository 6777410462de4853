"""Fixtures shared by every test package: the tiny model and datasets, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The same environment scripts/test.sh sets, for a bare `pytest` run too.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")


@pytest.fixture(autouse=True)
def _restore_environment():
    """Every test starts from the same environment: an in-process run exports RANK, WORLD_SIZE and
    MASTER_PORT for a one-rank DeepSpeed world, and a later test (or its subprocess) would join that."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with model/ (tiny Llama + tokenizer) and data/ (datasets + dataset_info.json)."""
    from runtime.commands.make_tiny import build_tiny

    dest = tmp_path_factory.mktemp("tiny")
    build_tiny(dest)
    return dest
