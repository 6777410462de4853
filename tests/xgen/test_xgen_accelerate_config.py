"""`accelerate_config` / `--accelerate-config`: your own accelerate config under `xgen accelerate`.

LLaMA-Factory's examples/accelerate/fsdp_config.yaml and fsdp2_config.yaml (tests/runtime/lf_examples/
accelerate, verbatim) are kept, with each node's values filled in by the script (each change one line), the
FSDP settings the runtime takes from train: written as it runs them, and contradictions refused in one line.
The seed's `accelerate launch --config_file examples/accelerate/fsdp_config.yaml src/train.py
examples/extras/fsdp_qlora/llama3_lora_sft.yaml` runs through `xgen accelerate` on 2 CPU processes (gloo).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from xgen_helpers import REPO, run_xgen

from xgen.render import functions

LF = REPO / "tests" / "runtime" / "lf_examples"
FSDP_CONFIG = LF / "accelerate" / "fsdp_config.yaml"
FSDP2_CONFIG = LF / "accelerate" / "fsdp2_config.yaml"
QLORA = LF / "qlora" / "fsdp_qlora_llama3_lora_sft.yaml"
TRAIN = {"model_name_or_path": "m", "dataset": "d", "fsdp": "full_shard auto_wrap", "bf16": True}


def write(tmp_path: Path, accelerate: dict | Path | None, train: dict | None = None, **cluster) -> Path:
    """tmp/job.yaml (and tmp/acc.yaml from a mapping) for nodes n0, n1 on CPU, 2 processes each."""
    config = {
        "cluster": {"nodes": 2, "hosts": ["n0", "n1"], "device": "cpu", "devices_per_node": 2, **cluster},
        "train": TRAIN if train is None else train,
    }
    if isinstance(accelerate, dict):
        (tmp_path / "acc.yaml").write_text(yaml.safe_dump(accelerate))
        config["accelerate_config"] = "acc.yaml"
    elif accelerate is not None:
        config["accelerate_config"] = str(accelerate)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def node_config(script: str, tmp_path: Path, **env: str) -> tuple[dict, list[str]]:
    """Run the script's accelerate-config section alone with this node's values in `env`; return the
    config it wrote and the lines it said."""
    defined = functions(script)
    body = script[
        script.index("XGEN_ACCELERATE_CONFIG=$(mktemp") : script.index('xgen_say "accelerate $XGEN_')
    ]
    probe = "set -euo pipefail\n"
    for name in ("xgen_say", "xgen_accelerate_set"):
        probe += f"{name}() {{\n{defined[name]}}}\n"
    probe += body + 'cat "$XGEN_ACCELERATE_CONFIG"\n'
    values = {
        "NNODES": "2",
        "NPROC_PER_NODE": "2",
        "NODE_RANK": "0",
        "MASTER_ADDR": "n0",
        "MASTER_PORT": "29500",
    }
    run = subprocess.run(
        ["bash", "-c", probe],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "TMPDIR": str(tmp_path), "XGEN_DEVICE": "cpu", **values, **env},
        check=True,
    )
    said = [line.split(": ", 2)[2] for line in run.stderr.splitlines()]  # after "xgen: <time> <host>: "
    return yaml.safe_load(run.stdout), said


def render(path: Path, *args: str, cwd: Path | None = None) -> str:
    result = run_xgen("accelerate", str(path), *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


# --- LLaMA-Factory's two FSDP files: kept, filled in per node, each change one line ---------------------


def test_lf_fsdp_config_is_kept_and_each_node_gets_its_own_values(tmp_path):
    script = render(write(tmp_path, FSDP_CONFIG), "--node-rank", "1")
    wrote, said = node_config(script, tmp_path, NODE_RANK="1")
    original = yaml.safe_load(FSDP_CONFIG.read_text())
    changed = {"fsdp_config", "machine_rank", "num_machines", "num_processes"}
    assert {k: v for k, v in wrote.items() if k not in changed} == {
        **{k: v for k, v in original.items() if k not in changed},
        "main_process_ip": "n0",
        "main_process_port": 29500,
    }
    assert (wrote["machine_rank"], wrote["num_machines"], wrote["num_processes"]) == (1, 2, 4)
    fsdp = dict(original["fsdp_config"], fsdp_version=2, fsdp_cpu_ram_efficient_loading=False)
    del fsdp["fsdp_backward_prefetch"]
    assert wrote["fsdp_config"] == fsdp
    assert said == [
        "accelerate config: fsdp_config.fsdp_version (unset: 1) -> 2 (the runtime trains with FSDP2, from "
        "train.fsdp)",
        "accelerate config: fsdp_config.fsdp_backward_prefetch BACKWARD_PRE -> (removed) (FSDP2 has no "
        "backward prefetch; accelerate would warn on every rank)",
        "accelerate config: fsdp_config.fsdp_cpu_ram_efficient_loading true -> false (the runtime takes it "
        "from train.fsdp_config.cpu_ram_efficient_loading, unset: false)",
        "accelerate config: num_machines 1 -> 2 (cluster.nodes)",
        "accelerate config: num_processes 2 -> 4 (nodes x processes on this node)",
        "accelerate config: machine_rank 0 -> 1 (this node's rank)",
        "accelerate config: main_process_ip (unset) -> n0 (the master: the first host of cluster.hosts)",
        "accelerate config: main_process_port (unset) -> 29500 (the master port: xgen's default; set "
        "cluster.master_port)",
    ]


def test_lf_fsdp2_config_on_npu_changes_only_what_differs(tmp_path):
    """FSDP2 already: only the loading setting the runtime takes from train:, and the node's values; the
    distributed type stays FSDP on an NPU node (it is not the device's DDP type)."""
    train = dict(TRAIN, fsdp_config={"cpu_ram_efficient_loading": True})
    script = render(write(tmp_path, FSDP2_CONFIG, train, device="npu"), "--node-rank", "0")
    wrote, said = node_config(script, tmp_path, XGEN_DEVICE="npu", NPROC_PER_NODE="1")
    assert wrote["distributed_type"] == "FSDP"
    assert wrote["fsdp_config"] == yaml.safe_load(FSDP2_CONFIG.read_text())["fsdp_config"]
    assert said == [
        "accelerate config: num_machines 1 -> 2 (cluster.nodes)",  # num_processes: 2 x 1, as the file says
        "accelerate config: main_process_ip (unset) -> n0 (the master: the first host of cluster.hosts)",
        "accelerate config: main_process_port (unset) -> 29500 (the master port: xgen's default; set "
        "cluster.master_port)",
    ]


def test_ddp_config_takes_the_detected_devices_type(tmp_path):
    """LLaMA-Factory's multi-node DDP files say MULTI_GPU: an NPU node fills in MULTI_NPU, and says so."""
    accelerate = {
        "distributed_type": "MULTI_GPU",
        "mixed_precision": "no",
        "num_machines": 2,
        "gpu_ids": "all",
    }
    script = render(write(tmp_path, accelerate, {"model_name_or_path": "m", "dataset": "d"}, device="auto"))
    wrote, said = node_config(script, tmp_path, XGEN_DEVICE="npu")
    assert wrote["distributed_type"] == "MULTI_NPU" and wrote["gpu_ids"] == "all"
    assert said[0] == "accelerate config: distributed_type MULTI_GPU -> MULTI_NPU (the devices of this node)"
    wrote, said = node_config(script, tmp_path, XGEN_DEVICE="cuda")
    assert wrote["distributed_type"] == "MULTI_GPU" and not said[0].startswith(
        "accelerate config: distributed"
    )


def test_flag_is_from_the_current_directory_and_the_key_from_the_configs(tmp_path):
    """--accelerate-config FILE is relative to where xgen runs (like --workdir); accelerate_config: in a
    config relative to the config's directory (like cluster.hostfile). Both freeze into the script."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "acc.yaml").write_text(FSDP2_CONFIG.read_text())
    job = write(tmp_path / "conf", None)
    script = render(job, "--accelerate-config", "conf/acc.yaml", "--node-rank", "0", cwd=tmp_path)
    assert f"accelerate_config: {tmp_path / 'conf' / 'acc.yaml'}" in script  # the frozen config's key
    regenerate = next(line for line in script.splitlines() if line.startswith("# Regenerate"))
    assert "--accelerate-config" in regenerate
    in_file = write(tmp_path / "conf", Path("acc.yaml"))
    assert "fsdp_reshard_after_forward: true" in render(in_file, "--node-rank", "0", cwd=REPO)


def test_check_names_the_file_and_what_it_changes(tmp_path):
    result = run_xgen("check", str(write(tmp_path, FSDP_CONFIG)))
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("accelerate: "))
    assert str(FSDP_CONFIG) in line and "changed here: fsdp_config.fsdp_version" in line


# --- contradictions: one line naming both keys, nothing written ------------------------------------------

REFUSED = [
    (
        {"distributed_type": "DEEPSPEED", "mixed_precision": "bf16"},
        None,
        "distributed_type: DEEPSPEED contradicts train.fsdp; set distributed_type: FSDP",
    ),
    (
        {"distributed_type": "FSDP", "mixed_precision": "fp16"},
        None,
        "mixed_precision: fp16 contradicts train.bf16: true; set mixed_precision: bf16",
    ),
    (
        {"distributed_type": "FSDP", "mixed_precision": "bf16"},
        {"model_name_or_path": "m", "dataset": "d", "bf16": True},
        "distributed_type: FSDP contradicts train: (no fsdp or deepspeed: DDP); add fsdp: full_shard",
    ),
    (
        {"distributed_type": "FSDP", "mixed_precision": "bf16", "fsdp_config": {"fsdp_offload_params": True}},
        None,
        "fsdp_config.fsdp_offload_params: true contradicts train.fsdp (cpu_offload: false)",
    ),
    (
        {
            "distributed_type": "FSDP",
            "mixed_precision": "bf16",
            "fsdp_config": {"fsdp_sharding_strategy": "SHARD_GRAD_OP"},
        },
        None,
        "fsdp_config.fsdp_sharding_strategy: SHARD_GRAD_OP contradicts train.fsdp (reshard_after_forward: "
        "true)",
    ),
    (
        {
            "distributed_type": "FSDP",
            "mixed_precision": "bf16",
            "fsdp_config": {"fsdp_sharding_strategy": "HYBRID_SHARD"},
        },
        None,
        "fsdp_config.fsdp_sharding_strategy: HYBRID_SHARD: FSDP2 here takes FULL_SHARD or SHARD_GRAD_OP",
    ),
    (
        {"distributed_type": "FSDP", "fsdp_config": {"fsdp_state_dict_type": "SHARDED_STATE_DICT"}},
        dict(TRAIN, fsdp_config={"state_dict_type": "FULL_STATE_DICT"}),
        "fsdp_config.fsdp_state_dict_type: SHARDED_STATE_DICT contradicts "
        "train.fsdp_config.state_dict_type: FULL_STATE_DICT",
    ),
    ({"gpu_ids": "0,1"}, None, "gpu_ids: 0,1 contradicts cluster.devices_per_node: 2"),
    ({"rdzv_backend": "c10d"}, None, "rdzv_backend: c10d: xgen accelerate gives every node its machine_rank"),
    ({"distributed_type": "MULTI_XPU"}, None, "distributed_type: MULTI_XPU: xgen runs on cuda, npu or cpu"),
    ({"compute_environment": "AMAZON_SAGEMAKER"}, None, "compute_environment: AMAZON_SAGEMAKER"),
]


@pytest.mark.parametrize("accelerate,train,says", REFUSED, ids=[s.split(":")[0] for _, _, s in REFUSED])
def test_a_contradiction_is_one_line_naming_both_keys(tmp_path, accelerate, train, says):
    out = tmp_path / "node0.sh"
    result = run_xgen("accelerate", str(write(tmp_path, accelerate, train)), "-o", str(out))
    assert result.returncode == 2
    assert (
        result.stderr.startswith("xgen: error: accelerate_config: acc.yaml: ")
        and result.stderr.count("\n") == 1
    )
    assert says in result.stderr, result.stderr
    assert not out.exists()


def test_a_bare_lf_yaml_trains_fsdp_as_its_accelerate_file_says(tmp_path):
    """LLaMA-Factory takes FSDP from the accelerate file (the YAML has no fsdp key): a bare YAML does too,
    with the file's offload and resharding, and the script says so in one line."""
    (tmp_path / "sft.yaml").write_text(
        yaml.safe_dump({"model_name_or_path": "m", "dataset": "d", "bf16": True})
    )
    offload = yaml.safe_load(FSDP_CONFIG.read_text())
    offload["fsdp_config"].update(fsdp_offload_params=True, fsdp_sharding_strategy="SHARD_GRAD_OP")
    (tmp_path / "offload.yaml").write_text(yaml.safe_dump(offload))
    for accelerate, words in (
        (FSDP2_CONFIG, "full_shard auto_wrap"),
        ("offload.yaml", "shard_grad_op auto_wrap offload"),
    ):
        script = render(tmp_path / "sft.yaml", "--accelerate-config", str(accelerate), cwd=tmp_path)
        frozen = yaml.safe_load(
            script[
                script.index("# The config xgen ran") : script.index(
                    "XGEN_FROZEN_CONFIG_", script.index("# The config xgen ran")
                )
            ]
        )
        assert frozen["train"]["fsdp"] == words
        said = f"accelerate config: fsdp in sft.yaml (unset) -> {words} (this file'\"'\"'s distributed_type"
        assert said in script


def test_an_xgen_config_without_fsdp_is_told_where_to_add_it(tmp_path):
    """In an xgen config train: is the strategy's one source: the file's FSDP against DDP is refused."""
    result = run_xgen(
        "check", str(write(tmp_path, FSDP_CONFIG, {"model_name_or_path": "m", "dataset": "d", "bf16": True}))
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "distributed_type: FSDP contradicts train: (no fsdp or deepspeed: DDP); add fsdp" in result.stderr


def test_use_cpu_is_refused_on_gpus_and_turned_off_on_cpu(tmp_path):
    accelerate = {"use_cpu": True, "distributed_type": "FSDP", "mixed_precision": "bf16"}
    result = run_xgen("accelerate", str(write(tmp_path, accelerate, device="cuda")))
    assert result.returncode == 2 and "use_cpu: true contradicts cluster.device: cuda" in result.stderr
    script = render(write(tmp_path, accelerate), "--node-rank", "0")
    wrote, said = node_config(script, tmp_path)
    assert wrote["use_cpu"] is False and said[0].startswith("accelerate config: use_cpu true -> false (")


@pytest.mark.parametrize(
    "content,says",
    [
        (None, "acc.yaml: file not found (relative to the config's directory)"),
        ("- a list\n", "acc.yaml: not an accelerate config (a YAML mapping of settings)"),
        ("a: [\n", "acc.yaml: line 2: not YAML"),
    ],
)
def test_an_unreadable_file_is_one_line(tmp_path, content, says):
    job = write(tmp_path, {"x": 1})
    if content is None:
        (tmp_path / "acc.yaml").unlink()
    else:
        (tmp_path / "acc.yaml").write_text(content)
    result = run_xgen("check", str(job))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert f"xgen: error: accelerate_config: {says}" in result.stderr, result.stderr


@pytest.mark.parametrize("command", ["shell", "slurm"])
def test_other_commands_refuse_it(tmp_path, command):
    args = [command, str(write(tmp_path, FSDP_CONFIG))] + (["--node-rank", "0"] if command == "shell" else [])
    result = run_xgen(*args)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(
        f"xgen: error: accelerate_config: only xgen accelerate reads it, and xgen {command} starts "
        "torch.distributed.run; run xgen accelerate, or remove accelerate_config"
    )


# --- the seed's command form, for real: LF's fsdp_config.yaml, 2 CPU processes, gloo ---------------------


@pytest.mark.slow
def test_seed_fsdp_qlora_command_runs_through_xgen_accelerate_with_lf_fsdp_config(tiny_dir, tmp_path):
    """`accelerate launch --config_file examples/accelerate/fsdp_config.yaml src/train.py
    examples/extras/fsdp_qlora/llama3_lora_sft.yaml` as `xgen accelerate llama3_lora_sft.yaml
    --accelerate-config fsdp_config.yaml`: the bare LLaMA-Factory YAML (paths swapped to the tiny model)
    and LLaMA-Factory's own FSDP file, rendered and run on this machine, 2 CPU processes over gloo."""
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (pip install bitsandbytes)")
    out = tmp_path / "out"
    text = QLORA.read_text().replace("TINY", str(tiny_dir)).replace("OUT", str(out))
    (tmp_path / "llama3_lora_sft.yaml").write_text(text)
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "fsdp_config.yaml").write_text(FSDP_CONFIG.read_text())
    flags = ["--accelerate-config", "examples/fsdp_config.yaml", "--device", "cpu", "--devices-per-node", "2"]
    flags += ["--python", sys.executable, "--node-rank", "0", "-o", "node0.sh"]
    made = run_xgen("accelerate", "llama3_lora_sft.yaml", *flags, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    (tmp_path / "tmp").mkdir()
    env = {
        **os.environ,
        "TMPDIR": str(tmp_path / "tmp"),
        "HF_DATASETS_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    for name in ("NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "XGEN_RUN_DIR", "CUDA_VISIBLE_DEVICES"):
        env.pop(name, None)
    run = subprocess.run(
        ["bash", "node0.sh"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    said = [line.split(": ", 2)[2] for line in run.stderr.splitlines() if ": accelerate config: " in line]
    assert said[0] == (
        "accelerate config: fsdp in llama3_lora_sft.yaml (unset) -> full_shard auto_wrap (this file's "
        "distributed_type: FSDP, which LLaMA-Factory trains with)"
    )
    said = said[1:]
    assert said[:3] == [
        "accelerate config: fsdp_config.fsdp_version (unset: 1) -> 2 (the runtime trains with FSDP2, from "
        "train.fsdp)",
        "accelerate config: fsdp_config.fsdp_backward_prefetch BACKWARD_PRE -> (removed) (FSDP2 has no "
        "backward prefetch; accelerate would warn on every rank)",
        "accelerate config: fsdp_config.fsdp_cpu_ram_efficient_loading true -> false (the runtime takes it "
        "from train.fsdp_config.cpu_ram_efficient_loading, unset: false)",
    ]
    assert (
        said[3]
        == "accelerate config: main_process_ip (unset) -> 127.0.0.1 (the master: one node: this machine)"
    )
    assert said[4].startswith("accelerate config: main_process_port (unset) -> ")  # a free port
    assert len(said) == 5  # machine_rank 0, num_machines 1, num_processes 2: as the file says
    assert "xgen-runtime: world_size=2 nodes=1" in run.stdout and "strategy=fsdp" in run.stdout
    assert "quantization: 4-bit bnb nf4" in run.stdout
    assert "backward_prefetch is not supported" not in run.stdout + run.stderr
    results = json.loads((out / "train_results.json").read_text())
    assert (results["world_size"], results["strategy"], results["global_step"]) == (2, "fsdp", 3)
    assert (out / "adapter_model.safetensors").is_file()
