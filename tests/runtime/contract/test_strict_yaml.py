"""Duplicate YAML keys are refused with both lines; everything else loads as yaml.safe_load does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runtime.contract.strict_yaml import DuplicateKeyError, load

SAME = [
    "a: 1\nb: [1, 2]\nc: {d: 2.0e-4, e: null}\n",
    "base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  x: 3\n",  # a merge key may be overridden, as YAML intends
    "- 1\n- two\n",
    "",
]


@pytest.mark.parametrize("text", SAME)
def test_loads_what_safe_load_loads(text):
    assert load(text) == yaml.safe_load(text)


def test_a_key_twice_names_both_lines():
    with pytest.raises(DuplicateKeyError) as err:
        load("train:\n  learning_rate: 1.0e-4\n  stage: sft\n  learning_rate: 2.0e-4\n")
    assert err.value.problem == "key 'learning_rate' appears twice (first on line 2); keep one"
    assert err.value.problem_mark.line + 1 == 4


def test_xgen_and_the_runtime_refuse_it_in_one_line(tmp_path: Path):
    bare = tmp_path / "lf.yaml"
    bare.write_text("stage: sft\nlearning_rate: 1.0e-4\nlearning_rate: 2.0e-4\n")
    bin_dir = Path(sys.executable).parent
    for argv, prefix in (
        ([str(bin_dir / "xgen"), "check", str(bare)], f"xgen: error: {bare}: line 3: "),
        (
            [str(bin_dir / "xgen-runtime"), "train", str(bare)],
            f"xgen-runtime: error: config: {bare} line 3: ",
        ),
    ):
        run = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 2 and len(lines) == 1, run.stderr
        assert lines[0] == prefix + "key 'learning_rate' appears twice (first on line 2); keep one"
