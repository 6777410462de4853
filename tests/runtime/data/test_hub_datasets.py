"""Hub datasets (dataset_info.json's hf_hub_url, ms_hub_url, om_hub_url) with no network: a loopback hub
(tests/runtime/fake_hub.py) answers behind HF_ENDPOINT, then the same runs go offline from the cache it
filled. Subprocesses for everything online: huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE at import,
and this process imported it offline (tests/conftest.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fake_hub import FakeHub
from trainer_harness import (
    REPO,
    base_config,
    log_history,
    run_cli,
    run_inprocess,
    run_torchrun,
    subprocess_env,
    write_config,
)

from runtime.config import ConfigError
from runtime.data.loaders import load_raw
from runtime.data.registry import resolve_datasets

PLAIN = "xgen-test/alpaca-plain"
SUBSETS = "xgen-test/alpaca-subsets"
SUBSETS_CARD = """---
configs:
- config_name: en
  data_files:
  - split: train
    path: en/train.json
- config_name: zh
  data_files:
  - split: train
    path: zh/*.json
---
"""
# LLaMA-Factory's entry shapes: a plain repo, a subset (datasets' `name`), a folder (`data_dir`) with a split.
HUB_INFO = {
    "hub_plain": {"hf_hub_url": PLAIN},
    "hub_subset": {"hf_hub_url": SUBSETS, "subset": "zh"},
    "hub_folder": {"hf_hub_url": PLAIN, "folder": "extra", "split": "test"},
}
HUB_NAMES = ",".join(HUB_INFO)


def _rows(tiny_dir: Path) -> list[dict]:
    """tiny_alpaca's rows with one set of columns (a repo's splits share their columns, or datasets fails)."""
    rows = json.loads((tiny_dir / "data" / "tiny_alpaca.json").read_text())
    return [{k: row[k] for k in ("instruction", "input", "output")} for row in rows]


def _repos(tiny_dir: Path) -> dict[str, dict[str, bytes]]:
    rows = _rows(tiny_dir)

    def as_json(part: list[dict]) -> bytes:
        return json.dumps(part).encode()

    def as_jsonl(part: list[dict]) -> bytes:
        return "".join(json.dumps(row) + "\n" for row in part).encode()

    return {
        PLAIN: {
            "data/train.json": as_json(rows[:8]),
            "extra/train.jsonl": as_jsonl(rows[8:10]),
            "extra/test.jsonl": as_jsonl(rows[10:16]),
        },
        SUBSETS: {
            "README.md": SUBSETS_CARD.encode(),
            "en/train.json": as_json(rows[16:18]),
            "zh/a.json": as_json(rows[18:24]),
        },
    }


def _data_dir(tmp_path: Path, info: dict) -> Path:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "dataset_info.json").write_text(json.dumps(info))
    return data


def _hub_env(hub: FakeHub | None, hf_home: Path, *, offline: bool) -> dict[str, str]:
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1" if offline else "0"}
    env["HF_ENDPOINT"] = hub.url if hub else "http://127.0.0.1:9"  # port 9: nothing answers
    return env


def _hub_calls(hub: FakeHub) -> list[tuple[str, str]]:
    """Requests about datasets (huggingface_hub also asks for its agent-harness registry once)."""
    return [(m, p) for m, p in hub.requests if p.startswith(("/datasets/", "/api/datasets/"))]


@pytest.mark.slow
def test_named_hub_datasets_train_on_two_ranks_then_offline_from_the_cache(tiny_dir: Path, tmp_path: Path):
    """Rank 0 downloads each file once and the other rank reads its cache; a later run, offline, trains
    from that cache with no request at all."""
    data = _data_dir(tmp_path, HUB_INFO)
    cache, hf_home = tmp_path / "cache", tmp_path / "hf-home"
    overrides = dict(dataset=HUB_NAMES, dataset_dir=str(data), cache_dir=str(cache), max_steps=2)
    online = write_config(
        tmp_path / "online.yaml", base_config(tiny_dir, tmp_path / "out-online", **overrides)
    )
    with FakeHub(_repos(tiny_dir)) as hub:
        proc = run_torchrun(online, tmp_path, nproc=2, env=_hub_env(hub, hf_home, offline=False))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        downloads = hub.downloads()
        # Every data file once (the folder's train file too: datasets resolves the folder's splits).
        files = {path.split("/resolve/")[1].split("/", 1)[1] for path in downloads}
        assert files == {"data/train.json", "extra/train.jsonl", "extra/test.jsonl", "README.md", "zh/a.json"}
        assert len(downloads) == len(files), downloads
        # load_dataset starts with HEAD README.md at main: one per named dataset, none from rank 1.
        starts = [p for m, p in hub.requests if m == "HEAD" and p.endswith("/resolve/main/README.md")]
        assert sorted(starts) == sorted(
            f"/datasets/{HUB_INFO[n]['hf_hub_url']}/resolve/main/README.md" for n in HUB_INFO
        )
        assert "data: rank 0 tokenizes into" in proc.stdout + proc.stderr
        assert [e["step"] for e in log_history(tmp_path / "out-online") if "loss" in e] == [1, 2]

        before = len(hub.requests)
        offline = write_config(
            tmp_path / "offline.yaml", base_config(tiny_dir, tmp_path / "out-offline", **overrides)
        )
        proc = run_cli(
            ["train", str(offline)], tmp_path, env=_hub_env(hub, hf_home, offline=True), timeout=240
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert hub.requests[before:] == []
    assert [e["step"] for e in log_history(tmp_path / "out-offline") if "loss" in e] == [1, 2]


def test_offline_with_nothing_cached_stops_in_one_line_before_the_model_loads(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    import datasets.config
    import transformers
    from huggingface_hub import constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # whatever this shell exported
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def no_model(*args, **kwargs):
        raise AssertionError("the model loaded before the dataset was refused")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_model)
    data = _data_dir(tmp_path, HUB_INFO)
    cache = tmp_path / "empty-cache"
    cfg = base_config(
        tiny_dir, tmp_path / "out", dataset="hub_subset", dataset_dir=str(data), cache_dir=str(cache)
    )
    assert run_inprocess(write_config(tmp_path / "cfg.yaml", cfg)) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"xgen-runtime: error: dataset: dataset 'hub_subset' (hf_hub_url {SUBSETS}, subset zh) is not in the "
        f"datasets cache {cache} and HF_HUB_OFFLINE=1: download it where there is network with "
        "`xgen-runtime check CONFIG --download` into the same cache (cache_dir, or HF_HOME; a folder every "
        "node mounts)"
    ]


def test_checks_name_each_dataset_that_needs_the_network(tiny_dir: Path, tmp_path: Path):
    """The node check and `xgen check`: a note per hub dataset not in the cache, with no request to the
    hub; offline, a problem per dataset; `--download` fills the cache, after which both read it."""
    data = _data_dir(tmp_path, HUB_INFO)
    cache, hf_home = tmp_path / "cache", tmp_path / "hf-home"
    train = {"model_name_or_path": str(tiny_dir / "model"), "dataset": HUB_NAMES, "dataset_dir": str(data)}
    train.update(cache_dir=str(cache), output_dir=str(tmp_path / "out"))
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump(train))
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "job": {"name": "hub", "workdir": str(tmp_path)},
                "cluster": {"nodes": 1, "device": "cpu", "devices_per_node": 1},
                "python": sys.executable,
                "train": train,
            }
        )
    )

    def check(hub: FakeHub | None, *extra: str, offline: bool = False) -> subprocess.CompletedProcess:
        return run_cli(["check", str(cfg), *extra], tmp_path, env=_hub_env(hub, hf_home, offline=offline))

    def xgen_check(hub: FakeHub, offline: bool = False) -> subprocess.CompletedProcess:
        env = {**_hub_env(hub, hf_home, offline=offline), "PYTHONPATH": str(REPO)}
        return run_cli_xgen(["check", str(job)], tmp_path, env)

    def needs(name: str) -> str:
        source = {
            "hub_plain": PLAIN,
            "hub_subset": f"{SUBSETS}, subset zh",
            "hub_folder": f"{PLAIN}, folder extra",
        }
        needed = "needs the network: not in the datasets cache"
        return f"dataset '{name}' (hf_hub_url {source[name]}) {needed} {cache}"

    with FakeHub(_repos(tiny_dir)) as hub:
        proc = check(hub)
        assert proc.returncode == 0, proc.stderr
        notes = [line for line in proc.stdout.splitlines() if line.startswith("xgen-runtime: note: dataset:")]
        assert [n.split(": ", 3)[3].split(";")[0] for n in notes] == [needs(n) for n in HUB_INFO]
        assert f"rank 0 downloads it from {hub.url} when the run starts" in notes[0]
        assert (
            "check: ok (0 datasets read, columns present; 3 from a hub, not read: see the note)"
            in proc.stdout
        )

        result = xgen_check(hub)
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stdout.splitlines() if line.startswith("note:")]
        assert [line.split(": ", 2)[2].split(";")[0] for line in lines if "train.dataset:" in line] == [
            needs(n) for n in HUB_INFO
        ]
        assert _hub_calls(hub) == []  # neither check asked the hub
        # Offline where xgen check runs: Slurm passes HF_HUB_OFFLINE to the job, whose node check refuses
        # it, so xgen check refuses it too (it was a note, and the job then stopped on every node).
        result = xgen_check(hub, offline=True)
        assert result.returncode == 2, result.stdout
        assert "HF_HUB_OFFLINE=1: download it where there is network" in result.stderr, result.stderr

        proc = check(hub, offline=True)
        assert proc.returncode == 2
        errors = proc.stderr.splitlines()
        assert len(errors) == 3 and all(
            "HF_HUB_OFFLINE=1: download it where there is network" in e for e in errors
        )
        assert errors[0].startswith(f"xgen-runtime: error: dataset: dataset 'hub_plain' (hf_hub_url {PLAIN})")

        proc = check(hub, "--download")
        assert proc.returncode == 0, proc.stderr
        assert "check: ok (3 datasets read, columns present)" in proc.stdout
        assert _hub_calls(hub) != []

    proc = check(None, offline=True)  # the hub is gone: the cache answers
    assert proc.returncode == 0, proc.stderr
    assert "check: ok (3 datasets read, columns present)" in proc.stdout

    # A cache datasets filled without this runtime's records (LLaMA-Factory's, say): datasets' own offline
    # lookup finds a plain repo and a subset, but not a folder (datasets 5.2 looks for another config id).
    shutil.rmtree(cache / ".xgen-hub")
    proc = check(None, offline=True)
    assert proc.returncode == 2
    assert [line.split("'")[1] for line in proc.stderr.splitlines()] == ["hub_folder"]


def run_cli_xgen(args: list[str], tmp: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xgen.cli", *args],
        cwd=REPO,
        env=subprocess_env(tmp, env),
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- which hub an entry loads from, and the other hubs' clients ---


@pytest.mark.parametrize(
    ("entry", "env", "chosen"),
    [
        ({"hf_hub_url": "a/hf", "ms_hub_url": "a/ms", "om_hub_url": "a/om"}, {}, "hf_hub_url a/hf"),
        ({"hf_hub_url": "a/hf", "ms_hub_url": "a/ms"}, {"USE_MODELSCOPE_HUB": "1"}, "ms_hub_url a/ms"),
        ({"hf_hub_url": "a/hf", "om_hub_url": "a/om"}, {"USE_OPENMIND_HUB": "true"}, "om_hub_url a/om"),
        ({"hf_hub_url": "a/hf", "om_hub_url": "a/om"}, {"USE_MODELSCOPE_HUB": "1"}, "hf_hub_url a/hf"),
        ({"ms_hub_url": "a/ms"}, {}, "ms_hub_url a/ms"),
        ({"om_hub_url": "a/om", "folder": "f"}, {}, "om_hub_url a/om, folder f"),
        ({"hf_hub_url": "a/hf", "file_name": "local.json"}, {}, "hf_hub_url a/hf"),  # a hub url wins
    ],
)
def test_the_hub_is_chosen_as_llamafactory_chooses_it(tmp_path, monkeypatch, entry, env, chosen):
    for name in ("USE_MODELSCOPE_HUB", "USE_OPENMIND_HUB"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    (attr,) = resolve_datasets("d", _data_dir(tmp_path, {"d": entry}), key="dataset")
    assert attr.hub is not None and attr.hub.describe() == chosen


def test_dataset_dir_online_makes_every_name_a_repo(tmp_path, monkeypatch):
    for name in ("USE_MODELSCOPE_HUB", "USE_OPENMIND_HUB"):
        monkeypatch.delenv(name, raising=False)
    attrs = resolve_datasets("org/a, org/b", tmp_path / "ONLINE", key="dataset")
    assert [(a.hub.describe() if a.hub else None, a.formatting) for a in attrs] == [
        ("hf_hub_url org/a", "alpaca"),
        ("hf_hub_url org/b", "alpaca"),
    ]
    monkeypatch.setenv("USE_OPENMIND_HUB", "1")
    (attr,) = resolve_datasets("org/a", tmp_path / "ONLINE", key="dataset")
    assert attr.hub is not None and attr.hub.describe() == "om_hub_url org/a"


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ({"script_url": "s"}, "script_url is a dataset loading script: datasets 5 runs no scripts"),
        ({"cloud_file_name": "s3://b/f.json"}, "cloud_file_name is a file in s3/gcs"),
        ({"hf_hub_url": "a/b", "subset": ""}, "subset must be a non-empty string"),
    ],
)
def test_sources_this_runtime_cannot_read_are_refused_in_one_line(tmp_path, entry, fragment):
    with pytest.raises(ConfigError) as info:
        resolve_datasets("d", _data_dir(tmp_path, {"d": entry}), key="dataset")
    assert info.value.key == "dataset" and fragment in info.value.message


def test_modelscope_and_openmind_without_their_clients_say_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    data = _data_dir(tmp_path, {"ms": {"ms_hub_url": "a/ms"}, "om": {"om_hub_url": "a/om"}})
    expected = {
        "ms": "dataset 'ms' (ms_hub_url a/ms) loads through ModelScope's client and modelscope is not "
        "installed: pip install 'modelscope>=1.14.0'",
        "om": "dataset 'om' (om_hub_url a/om) loads through OpenMind's client and openmind is not "
        "installed: pip install 'openmind>=0.8.0'",
    }
    for name, message in expected.items():
        (attr,) = resolve_datasets(name, data, key="dataset")
        with pytest.raises(ConfigError) as info:
            load_raw(attr, cache_dir=str(tmp_path / "cache"), seed=0, max_samples=None)
        assert str(info.value) == f"dataset: {message}"


def test_modelscope_is_called_as_llamafactory_calls_it(tmp_path, monkeypatch, tiny_dir: Path):
    """A stand-in `modelscope` package (with its dist-info) records MsDataset.load's arguments."""
    package = tmp_path / "site" / "modelscope"
    (package / "utils").mkdir(parents=True)
    (package / "__init__.py").write_text(
        "import datasets\n"
        "CALLS = []\n"
        "class MsDataset:\n"
        "    def __init__(self, ds):\n"
        "        self.ds = ds\n"
        "    @classmethod\n"
        "    def load(cls, **kwargs):\n"
        "        CALLS.append(kwargs)\n"
        "        return cls(datasets.Dataset.from_list(ROWS))\n"
        "    def to_hf_dataset(self):\n"
        "        return self.ds\n"
        f"ROWS = {_rows(tiny_dir)[:3]!r}\n"
    )
    (package / "utils" / "__init__.py").write_text("")
    (package / "utils" / "config_ds.py").write_text("MS_DATASETS_CACHE = '/ms-cache'\n")
    meta = tmp_path / "site" / "modelscope-1.20.0.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: modelscope\nVersion: 1.20.0\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("USE_MODELSCOPE_HUB", "1")
    entry = {"hf_hub_url": "a/hf", "ms_hub_url": "a/ms", "subset": "zh", "folder": "f", "split": "test"}
    (attr,) = resolve_datasets("d", _data_dir(tmp_path, {"d": entry}), key="dataset")
    try:
        raw = load_raw(attr, cache_dir=None, seed=0, max_samples=2)
        calls = sys.modules["modelscope"].CALLS
    finally:  # the stand-in must not stay imported for later tests
        for module in [m for m in sys.modules if m == "modelscope" or m.startswith("modelscope.")]:
            del sys.modules[module]
    assert calls == [
        {
            "dataset_name": "a/ms",
            "subset_name": "zh",
            "data_dir": "f",
            "data_files": None,
            "split": "test",
            "cache_dir": "/ms-cache",
            "token": None,
            "use_streaming": False,
        }
    ]
    assert len(raw) == 2 and raw.column_names == list(_rows(tiny_dir)[0])


def test_the_preflight_does_not_ask_the_nodes_for_a_hub_entrys_file(tmp_path):
    """LLaMA-Factory ignores file_name next to a hub url; so does the per-node input check."""
    from types import SimpleNamespace

    from runtime.preflight import inputs

    info = {"both": {"hf_hub_url": "a/b", "file_name": "gone.json"}, "local": {"file_name": "x.json"}}
    data = _data_dir(tmp_path, info)
    cfg = SimpleNamespace(
        model_name_or_path=None, dataset_dir=str(data), dataset="both,local", eval_dataset=None
    )
    assert [key for key, _, _ in inputs.inputs(cfg, {}, str(tmp_path))] == [
        "train.dataset_dir",
        "train.dataset (local)",
    ]
