"""Issue 27 at the generator: `xgen check` says what would fail on the nodes (a template typo, a model
path typo, a hub id not in the cache, a tokenized_path without the eval split, visible-device ids this
node does not have) in one line each, notes what it cannot see (a DeepSpeed JSON, as datasets), the
generated scripts source CANN before the preflight checks the NPUs, and `xgen deepspeed --hostfile` never
replaces a file the user wrote. Fake npu-smi on PATH, the real preflight and runtime check."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml
from xgen_helpers import REPO, run_xgen

from xgen.targets.deepspeed import HOSTFILE_MARK

ROWS = [{"instruction": f"say {i}", "input": "", "output": str(i)} for i in range(4)]
NPU_SMI_2 = """#!/bin/sh
# fake npu-smi: a node (or container) with 2 NPUs
if [ "$1" = info ] && [ "$2" = -l ]; then echo "        Total Count                    : 2"; fi
"""


def job(root: Path, train: dict | None = None, cluster: dict | None = None) -> Path:
    """root/job.yaml running in root/run, with a model folder and an alpaca dataset `demo` there."""
    run = root / "run"
    (run / "models" / "Qwen3-8B").mkdir(parents=True)
    (run / "models" / "Qwen3-8B" / "config.json").write_text("{}")
    (run / "data").mkdir()
    (run / "data" / "demo.json").write_text(json.dumps(ROWS))
    (run / "data" / "dataset_info.json").write_text(json.dumps({"demo": {"file_name": "demo.json"}}))
    config = {
        "job": {"name": "t", "workdir": "run"},
        "cluster": {"nodes": 1, "device": "cpu", **(cluster or {})},
        "python": sys.executable,
        "train": {
            "model_name_or_path": "./models/Qwen3-8B",
            "dataset": "demo",
            "output_dir": "out",
            **(train or {}),
        },
    }
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def xgen(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """run_xgen with this environment (PYTHONPATH set)."""
    return subprocess.run(
        [sys.executable, "-m", "xgen.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        timeout=120,
    )


def check(path: Path, **env: str) -> subprocess.CompletedProcess:
    return xgen("check", str(path), env={**os.environ, **env})


def test_template_typo_is_one_line_at_check_time(tmp_path):
    result = check(job(tmp_path, {"template": "qwen3_no_think"}))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "xgen: error: train.template: unknown template 'qwen3_no_think'; did you mean qwen3_nothink, "
        "qwen3_5_nothink or qwen3_vl_nothink? (or leave it unset for the tokenizer's own)"
    ]


def test_model_path_typo_is_an_error_and_an_unseen_folder_a_note(tmp_path):
    result = check(job(tmp_path / "a", {"model_name_or_path": "./models/Qwen3-8b"}))
    run = tmp_path / "a" / "run"
    assert result.returncode == 2, result.stdout
    assert result.stderr.splitlines() == [
        f"xgen: error: train.model_name_or_path: ./models/Qwen3-8b not found: {run}/models has no Qwen3-8b "
        f"(did you mean {run}/models/Qwen3-8B?); fix the path"
    ]
    result = check(job(tmp_path / "b", {"model_name_or_path": "/nodes-only/models/Qwen3-8B"}))
    assert result.returncode == 0, result.stderr
    assert (
        "note:     train.model_name_or_path: not checked: /nodes-only/models/Qwen3-8B is not visible from "
        "here (/nodes-only/models is not); each node's check reads it\n"
    ) in result.stdout


def test_hub_id_not_in_the_cache_is_a_note_that_says_how_to_download_it(tmp_path):
    hf = tmp_path / "hf"
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_CACHE"}
    result = xgen(
        "check", str(job(tmp_path, {"model_name_or_path": "Qwen/Qwen3-8B"})), env={**env, "HF_HOME": str(hf)}
    )
    assert result.returncode == 0, result.stderr
    assert (
        f"note:     train.model_name_or_path: Qwen/Qwen3-8B is not a folder here nor a hub id in the Hugging "
        f"Face cache here ({hf}/hub), and the nodes do not download; unless they have it, for a hub id: "
        "`HF_HOME=/shared/hf hf download Qwen/Qwen3-8B`"
    ) in result.stdout


def test_unseen_deepspeed_json_is_noted_like_datasets_and_generation_goes_on(tmp_path):
    """LLaMA-Factory's examples/deepspeed/ds_z3_config.json, relative to a workdir where only the nodes
    have it: a note naming the stage that stands for it, and the scripts are still written."""
    path = job(tmp_path, {"deepspeed": "examples/deepspeed/ds_z3_config.json"})
    result = check(path)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    assert "strategy deepspeed examples/deepspeed/ds_z3_config.json (ZeRO stage read on the nodes)" in (
        result.stdout
    )
    assert (
        f"note:     train.deepspeed: not checked: {run}/examples/deepspeed/ds_z3_config.json is not visible "
        f"from here ({run}/examples/deepspeed is not); each node's preflight reads it; LLaMA-Factory's "
        "ds_z3_config.json is the named stage `deepspeed: z3` here, which needs no file\n"
    ) in result.stdout
    assert "datasets: ok (1 dataset read, columns present)\n" in result.stdout
    script = run_xgen("shell", str(path), "--node-rank", "0")
    assert script.returncode == 0 and script.stdout.startswith("#!"), script.stderr


def test_tokenized_path_without_the_eval_split_is_refused_at_check_time(tmp_path):
    from datasets import Dataset, DatasetDict

    path = job(tmp_path, {"tokenized_path": "tok", "val_size": 0.25})
    rows = {"input_ids": [[1, 2]] * 4, "attention_mask": [[1, 1]] * 4, "labels": [[1, 2]] * 4}
    DatasetDict({"train": Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "run" / "tok"))
    result = check(path)
    assert result.returncode == 2, result.stdout
    assert result.stderr.splitlines() == [
        "xgen: error: train.tokenized_path: tok was saved with the splits train and no 'validation' split, "
        "but val_size 0.25 needs one (saved rows are reused as they are); point tokenized_path at a new "
        "folder to tokenize again with val_size or eval_dataset, or set val_size: 0, eval_strategy: no and "
        "do_eval: false"
    ]


def fake_bin(tmp_path: Path, tools: dict[str, str]) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for name, body in tools.items():
        (bindir / name).write_text(body)
        (bindir / name).chmod(0o755)
    return bindir


def test_fake_npu_smi_visible_ids_beyond_this_node_at_check_time(tmp_path):
    """`xgen check` on a node of a hand-run cluster (listed in cluster.hosts) with 2 NPUs and host ids
    exported: the preflight's line, before anything is generated or started."""
    bindir = fake_bin(tmp_path, {"npu-smi": NPU_SMI_2})
    cluster = {"device": "npu", "hosts": [socket.gethostname()]}
    env = {"PATH": f"{bindir}:{os.environ['PATH']}", "ASCEND_RT_VISIBLE_DEVICES": "4,5"}
    result = check(job(tmp_path, cluster=cluster), **env)
    assert result.returncode == 2, result.stdout
    assert result.stderr.splitlines() == [
        "xgen: error: ASCEND_RT_VISIBLE_DEVICES: 4,5 names NPU 4, 5, but `npu-smi info -l` shows 2 NPUs on "
        f"{socket.gethostname()} (ids 0-1); ids count from 0 among the devices this node or container shows, "
        "not the host's numbering: use ids 0-1"
    ]
    result = check(job(tmp_path / "ok", cluster=cluster), **{**env, "ASCEND_RT_VISIBLE_DEVICES": "1"})
    assert result.returncode == 0, result.stderr
    assert "devices:  ASCEND_RT_VISIBLE_DEVICES=1 fits the 2 NPUs here\n" in result.stdout


def run_shell_script(tmp_path: Path, cann: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    path = job(tmp_path, cluster={"device": "npu"})
    script = tmp_path / "node0.sh"
    assert run_xgen("shell", str(path), "--node-rank", "0", "-o", str(script)).returncode == 0
    run_env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "ASCEND_TOOLKIT_HOME": str(cann),
        **env,
    }
    return subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, env=run_env, cwd=tmp_path, timeout=120
    )


def test_fake_npu_smi_cann_is_sourced_before_the_preflight_checks(tmp_path):
    """npu-smi is only on PATH once CANN's set_env.sh is sourced: the preflight sees it (it used to say
    `npu-smi not found here; NPUs not checked`) and names the host ids the node does not have."""
    bindir = fake_bin(tmp_path, {"npu-smi": NPU_SMI_2})
    cann = tmp_path / "cann"
    cann.mkdir()
    (cann / "set_env.sh").write_text(f'export PATH="{bindir}:$PATH"\n')
    result = run_shell_script(tmp_path, cann, {"ASCEND_RT_VISIBLE_DEVICES": "4,5"})
    assert result.returncode == 3, result.stderr
    lines = result.stderr.splitlines()
    sourced = next(i for i, x in enumerate(lines) if f"sourcing {cann}/set_env.sh" in x)
    flagged = next(i for i, x in enumerate(lines) if ": ASCEND_RT_VISIBLE_DEVICES: 4,5 names NPU 4, 5" in x)
    assert sourced < flagged, result.stderr
    assert not any("npu-smi not found" in x for x in lines), result.stderr


def test_fake_npu_smi_missing_cann_set_env_is_one_note(tmp_path):
    bindir = fake_bin(tmp_path, {"npu-smi": NPU_SMI_2})
    # Host ids make the preflight stop (exit 3) before any launcher starts.
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "ASCEND_RT_VISIBLE_DEVICES": "4,5"}
    result = run_shell_script(tmp_path, tmp_path / "no-cann", env)
    assert result.returncode == 3, result.stderr
    notes = [x for x in result.stderr.splitlines() if ": CANN: note: " in x]
    assert notes == [
        f"xgen: preflight: {socket.gethostname()}: CANN: note: no {tmp_path}/no-cann/set_env.sh here, so it "
        "was not sourced: npu-smi, HCCL and the TBE modules it puts on the paths may be missing; install "
        "the CANN toolkit there, or export ASCEND_TOOLKIT_HOME to its folder where the job starts"
    ], result.stderr


# --- `xgen deepspeed --hostfile`: never a file the user wrote ----------------------------------------------


def two_hosts(root: Path, cluster: dict | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    config = {"cluster": {"nodes": 2, "hosts": ["n0", "n1"], "devices_per_node": 2, **(cluster or {})}}
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_users_own_hostfile_is_refused_in_one_line_and_left_as_it_was(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# my cluster\nn0 slots=2\nn1 slots=2\n")
    result = run_xgen("deepspeed", str(two_hosts(tmp_path)), "--hostfile", str(hostfile))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"xgen: error: --hostfile: {hostfile} exists and xgen did not write it (no xgen first line), so "
        "it is not replaced; give --hostfile a new path, or name this file in cluster.hostfile to launch "
        "with it as it is"
    ]
    assert hostfile.read_text() == "# my cluster\nn0 slots=2\nn1 slots=2\n"


def test_xgen_rewrites_its_own_hostfile_and_launches_with_a_cluster_hostfile_as_it_is(tmp_path):
    hostfile = tmp_path / "hostfile"
    config = two_hosts(tmp_path)
    assert run_xgen("deepspeed", str(config), "--hostfile", str(hostfile)).returncode == 0
    assert hostfile.read_text() == f"{HOSTFILE_MARK}\nn0 slots=2\nn1 slots=2\n"
    config.write_text(config.read_text().replace("devices_per_node: 2", "devices_per_node: 4"))
    result = run_xgen("deepspeed", str(config), "--hostfile", str(hostfile))
    assert result.returncode == 0, result.stderr
    assert hostfile.read_text() == f"{HOSTFILE_MARK}\nn0 slots=4\nn1 slots=4\n"
    # The user's file, named as cluster.hostfile too: read there, launched with, not rewritten.
    mine = tmp_path / "mine"
    mine.write_text("# my cluster\nn0 slots=2\nn1 slots=2\n")
    listed = two_hosts(tmp_path / "listed", {"hosts": None, "hostfile": str(mine)})
    listed.write_text(listed.read_text().replace("  hosts: null\n", ""))
    result = run_xgen("deepspeed", str(listed), "--hostfile", str(mine))
    assert result.returncode == 0, result.stderr
    assert f"XGEN_HOSTFILE={mine}\n" in result.stdout
    assert mine.read_text() == "# my cluster\nn0 slots=2\nn1 slots=2\n"
