from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """make-tiny's output: model/, data/ (text) plus vl_model/ (Qwen2.5-VL), vl3_model/ (Qwen3-VL),
    vl3moe_model/ (Qwen3-VL-MoE), data/vl_images/ and the image datasets tiny_mllm, tiny_mllm_alpaca."""
    from runtime.commands.make_tiny import main_make_tiny

    dest = tmp_path_factory.mktemp("tiny_vl")
    assert main_make_tiny([str(dest)]) == 0
    return dest
