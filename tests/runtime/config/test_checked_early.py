"""Issue 27, "checked before the model loads": a template typo, a model path typo, an uncached hub id, a
DeepSpeed JSON the login node cannot see and a tokenized_path without the eval split the run needs are
each one line from the parser or the node's check (`xgen-runtime check`, torch-free), exit 2, no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runtime.config import ConfigError, parse_train_config
from runtime.config.template_names import TEMPLATE_NAMES, template_problem

REPO = Path(__file__).resolve().parents[3]
ROWS = [{"instruction": f"say {i}", "input": "", "output": str(i)} for i in range(4)]


def parse(**keys):
    return parse_train_config({"model_name_or_path": "m", "dataset": "d", **keys}, key_prefix="train.")


def runtime(*args: str, cwd: Path, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    """`python -m runtime …` as the scripts run it on a node; fails the test if torch gets imported."""
    probe = (
        "import runpy, sys; sys.argv = ['runtime', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('runtime', run_name='__main__')\n"
        "finally:\n    assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    return subprocess.run(
        [sys.executable, "-c", probe, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        env={
            k: v
            for k, v in {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}.items()
            if v is not None  # None: unset it
        },
    )


def workdir(root: Path, **train) -> Path:
    """root with a model folder, an alpaca dataset `demo` and cfg.yaml (xgen style) naming them."""
    (root / "models" / "Qwen3-8B").mkdir(parents=True)
    (root / "models" / "Qwen3-8B" / "config.json").write_text("{}")
    (root / "data").mkdir()
    (root / "data" / "demo.json").write_text(json.dumps(ROWS))
    (root / "data" / "dataset_info.json").write_text(json.dumps({"demo": {"file_name": "demo.json"}}))
    keys = {"model_name_or_path": "./models/Qwen3-8B", "dataset": "demo", "output_dir": "out", **train}
    (root / "cfg.yaml").write_text(yaml.safe_dump({"train": keys}))
    return root


def errors(result: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("xgen-runtime: error: ")]


# --- template: static data, checked when the config is parsed ------------------------------------------


def test_template_typo_is_refused_by_the_parser_with_the_closest_names():
    with pytest.raises(ConfigError) as err:
        parse(template="qwen3_no_think")
    assert err.value.key == "train.template"
    assert err.value.message.startswith(
        "unknown template 'qwen3_no_think'; did you mean qwen3_nothink, qwen3_5_nothink or qwen3_vl_nothink?"
    )
    assert parse(template="qwen3_nothink").template == "qwen3_nothink"
    assert template_problem("Llama3") and "did you mean llama3" in template_problem("Llama3")
    assert all(template_problem(name) is None for name in TEMPLATE_NAMES)


def test_template_typo_stops_runtime_train_before_torch(tmp_path):
    """`xgen-runtime train` (what every rank runs) says it in one line and exits 2: no torch, no ranks."""
    root = workdir(tmp_path, template="qwen3_no_think")
    result = runtime("train", "cfg.yaml", cwd=root)
    assert result.returncode == 2, result.stderr
    assert errors(result) == [
        "xgen-runtime: error: train.template: unknown template 'qwen3_no_think'; did you mean qwen3_nothink, "
        "qwen3_5_nothink or qwen3_vl_nothink? (or leave it unset for the tokenizer's own)"
    ]


# --- models: a folder, or a hub id in the cache ---------------------------------------------------------


def test_model_path_typo_on_the_node_names_the_close_folder(tmp_path):
    root = workdir(tmp_path, model_name_or_path="./models/Qwen3-8b")
    result = runtime("check", "cfg.yaml", cwd=root)
    assert result.returncode == 2
    assert errors(result) == [
        f"xgen-runtime: error: train.model_name_or_path: ./models/Qwen3-8b not found on this node: "
        f"{root}/models has no Qwen3-8b (did you mean {root}/models/Qwen3-8B?); fix the path"
    ]


def test_uncached_hub_id_on_the_node_says_how_to_download_it(tmp_path):
    root = workdir(tmp_path, model_name_or_path="Qwen/Qwen3-8B-Typo")
    hub = tmp_path / "hf"
    result = runtime("check", "cfg.yaml", cwd=root, env={"HF_HOME": str(hub), "HF_HUB_CACHE": None})
    assert result.returncode == 2
    (line,) = errors(result)
    assert line.startswith(
        f"xgen-runtime: error: train.model_name_or_path: Qwen/Qwen3-8B-Typo is not a folder on this node "
        f"(from {root}) nor in its Hugging Face cache ({hub}/hub), and the runtime does not download: "
        "`HF_HOME=/shared/hf hf download Qwen/Qwen3-8B-Typo`"
    ), line


def test_cached_hub_id_passes_and_visible_only_notes_an_uncached_one(tmp_path):
    """A snapshot in HF_HOME's cache (as `hf download` lays it out) is enough; `xgen check`'s side
    (--visible-only) only notes an uncached id: the nodes' HF_HOME may hold it."""
    hub = tmp_path / "hf"
    snapshot = hub / "hub" / "models--org--tiny" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (hub / "hub" / "models--org--tiny" / "refs").mkdir()
    (hub / "hub" / "models--org--tiny" / "refs" / "main").write_text("abc")
    env = {"HF_HOME": str(hub), "HF_HUB_CACHE": None}
    root = workdir(tmp_path / "a", model_name_or_path="org/tiny")
    assert runtime("check", "cfg.yaml", cwd=root, env=env).returncode == 0
    root = workdir(tmp_path / "b", model_name_or_path="org/other")
    result = runtime("check", "--visible-only", "cfg.yaml", cwd=root, env=env)
    assert result.returncode == 0, result.stderr
    assert (
        "xgen-runtime: note: train.model_name_or_path: org/other is not a folder here nor a hub id in the "
        in (result.stdout)
    )


# --- a DeepSpeed JSON the login node cannot see: noted, as datasets are ---------------------------------


def test_unseen_deepspeed_json_is_a_note_when_visible_only_and_an_error_otherwise(tmp_path):
    keys = {"deepspeed": "examples/deepspeed/ds_z2_config.json"}
    cfg = parse_train_config(
        {**keys, "model_name_or_path": "m", "dataset": "d"}, base_dir=tmp_path, visible_only=True
    )
    assert cfg.deepspeed_config is None
    (note,) = [n for n in cfg.notes if n.startswith("deepspeed: ")]
    assert note == (
        f"deepspeed: not checked: {tmp_path}/examples/deepspeed/ds_z2_config.json is not visible from here "
        f"({tmp_path}/examples/deepspeed is not); each node's preflight reads it; LLaMA-Factory's "
        "ds_z2_config.json is the named stage `deepspeed: z2` here, which needs no file"
    )
    with pytest.raises(
        ConfigError, match="file not found: .*; LLaMA-Factory's ds_z2_config.json is the named"
    ):
        parse_train_config({**keys, "model_name_or_path": "m", "dataset": "d"}, base_dir=tmp_path)
    (tmp_path / "examples" / "deepspeed").mkdir(
        parents=True
    )  # the folder is visible: a missing file is a typo
    with pytest.raises(ConfigError, match="file not found"):
        parse_train_config(
            {**keys, "model_name_or_path": "m", "dataset": "d"}, base_dir=tmp_path, visible_only=True
        )


# --- tokenized_path saved without the eval split the run needs -------------------------------------------


def save_tokenized(path: Path, splits: tuple[str, ...]) -> None:
    """What LLaMA-Factory (and this runtime) write: DatasetDict.save_to_disk of the tokenized splits."""
    from datasets import Dataset, DatasetDict

    rows = {"input_ids": [[1, 2, 3]] * 4, "attention_mask": [[1, 1, 1]] * 4, "labels": [[1, 2, 3]] * 4}
    DatasetDict({name: Dataset.from_dict(rows) for name in splits}).save_to_disk(str(path))


def test_tokenized_path_without_eval_split_is_refused_on_the_node_before_the_launcher(tmp_path):
    root = workdir(tmp_path, tokenized_path="tok", val_size=0.25, eval_strategy="steps", eval_steps=1)
    save_tokenized(root / "tok", ("train",))
    result = runtime("check", "cfg.yaml", cwd=root)
    assert result.returncode == 2
    assert errors(result) == [
        "xgen-runtime: error: train.tokenized_path: tok was saved with the splits train and no 'validation' "
        "split, but val_size 0.25 and eval_strategy steps need one (saved rows are reused as they are); "
        "point tokenized_path at a new folder to tokenize again with val_size or eval_dataset, or set "
        "val_size: 0, eval_strategy: no and do_eval: false"
    ]
    save_tokenized(root / "tok2", ("train", "validation"))
    text = (root / "cfg.yaml").read_text().replace("tokenized_path: tok\n", "tokenized_path: tok2\n")
    (root / "cfg.yaml").write_text(text)
    result = runtime("check", "cfg.yaml", cwd=root)
    assert result.returncode == 0, result.stderr
    assert (
        "datasets not read: tokenized_path tok2 holds the tokenized splits train, validation" in result.stdout
    )


def test_load_tokenized_refuses_before_the_model_loads(tmp_path):
    """The runtime's own gate (runtime.data.load_tokenized, before the model is built) says the same."""
    from runtime.data import load_tokenized

    save_tokenized(tmp_path / "tok", ("train", "validation_a", "validation_b"))
    cfg = parse(tokenized_path=str(tmp_path / "tok"), do_eval=True)
    with pytest.raises(ConfigError) as err:
        load_tokenized(cfg)
    assert err.value.key == "tokenized_path"
    assert "(validation_a, validation_b: LLaMA-Factory's one-per-eval-dataset splits" in err.value.message
    assert "but do_eval needs one" in err.value.message
    splits = load_tokenized(parse(tokenized_path=str(tmp_path / "tok")))  # no eval wanted: trains
    assert len(splits.train) == 4 and splits.eval is None
