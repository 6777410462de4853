"""A corpus of bad configs: each one exits 2 with exactly one stderr line naming the key; nothing written."""

from __future__ import annotations

import pytest
import yaml
from xgen_helpers import run_xgen

GOOD = {
    "job": {"name": "t"},
    "cluster": {"nodes": 2, "device": "cuda", "devices_per_node": 4, "hosts": ["n0", "n1"]},
    "train": {
        "model_name_or_path": "m",
        "stage": "sft",
        "finetuning_type": "lora",
        "dataset": "d",
        "output_dir": "out",
    },
}


def with_(path: str, value):
    """GOOD with one key replaced (dotted path); value DELETE removes it."""
    import copy

    config = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return config


# (id, config mapping or raw YAML text, extra CLI args, key the error must name)
CASES = [
    ("unknown-top", {**GOOD, "clustr": {}}, [], "clustr: unknown key; did you mean 'cluster'"),
    ("unknown-cluster-key", with_("cluster.node", 2), [], "cluster.node: unknown key; did you mean 'nodes'"),
    ("unknown-slurm-key", with_("slurm.partiton", "gpu"), [], "did you mean 'partition'"),
    ("unknown-job-key", with_("job.nmae", "x"), [], "job.nmae"),
    ("nodes-zero", with_("cluster.nodes", 0), [], "cluster.nodes: must be at least 1, got 0"),
    ("nodes-string", with_("cluster.nodes", "two"), [], "cluster.nodes: must be an integer"),
    ("nodes-bool", with_("cluster.nodes", True), [], "cluster.nodes: must be an integer"),
    (
        "devices-zero",
        with_("cluster.devices_per_node", 0),
        [],
        "cluster.devices_per_node: must be at least 1",
    ),
    ("devices-word", with_("cluster.devices_per_node", "many"), [], "cluster.devices_per_node"),
    ("device-tpu", with_("cluster.device", "tpu"), [], "cluster.device: must be one of auto|cuda|npu|cpu"),
    (
        "hosts-count",
        with_("cluster.hosts", ["n0"]),
        [],
        "cluster.hosts: lists 1 hosts but cluster.nodes is 2",
    ),
    ("hosts-dup", with_("cluster.hosts", ["n0", "n0"]), [], "cluster.hosts: lists a host twice"),
    ("hosts-bad-name", with_("cluster.hosts", ["n0", "a b"]), [], "cluster.hosts[1]"),
    ("hosts-and-hostfile", with_("cluster.hostfile", "hf"), [], "cluster.hostfile: give either"),
    (
        "hostfile-missing",
        {**with_("cluster.hostfile", "nope.txt"), "cluster": {"nodes": 2, "hostfile": "nope.txt"}},
        [],
        "cluster.hostfile: file",
    ),
    (
        "hostfile-slots-mismatch",
        {"cluster": {"nodes": 2, "devices_per_node": 8, "hostfile": "HOSTFILE"}},
        [],
        "cluster.hostfile: slots=4 does not match cluster.devices_per_node=8",
    ),
    (
        "master-port-range",
        with_("cluster.master_port", 70000),
        [],
        "cluster.master_port: must be at most 65535",
    ),
    ("master-port-type", with_("cluster.master_port", "http"), [], "cluster.master_port"),
    ("master-addr-bad", with_("cluster.master_addr", "a;b"), [], "cluster.master_addr"),
    ("rdzv-timeout-zero", with_("cluster.rdzv_timeout", 0), [], "cluster.rdzv_timeout: must be at least 1"),
    ("ssh-port-zero", with_("cluster.ssh_port", 0), [], "cluster.ssh_port"),
    ("nic-loopback", with_("cluster.nic", "lo"), [], "cluster.nic: lo is the loopback"),
    ("nic-garbage", with_("cluster.nic", "eth0; rm"), [], "cluster.nic"),
    ("nccl-debug", with_("cluster.nccl_debug", "LOUD"), [], "cluster.nccl_debug"),
    ("env-list", with_("cluster.env", ["A=1"]), [], "cluster.env: must be a mapping"),
    ("env-bad-name", with_("cluster.env", {"A-B": "1"}), [], "cluster.env.A-B"),
    ("env-nested", with_("cluster.env", {"A": {"b": 1}}), [], "cluster.env.A: must be a string"),
    ("env-reserved", with_("cluster.env", {"MASTER_ADDR": "x"}), [], "cluster.env.MASTER_ADDR"),
    ("slurm-time", with_("slurm.time", "forever"), [], "slurm.time"),
    ("slurm-cpus", with_("slurm.cpus_per_task", -1), [], "slurm.cpus_per_task: must be at least 1"),
    ("slurm-extra-type", with_("slurm.extra", "--mail-type=END"), [], "slurm.extra: must be a list"),
    ("slurm-extra-newline", with_("slurm.extra", ["--a=1\n#SBATCH --b"]), [], "slurm.extra[0]"),
    ("slurm-extra-no-dash", with_("slurm.extra", ["mail-type=END"]), [], "slurm.extra[0]"),
    ("slurm-partition-newline", with_("slurm.partition", "gpu\nrm -rf /"), [], "slurm.partition"),
    ("slurm-gpus-too-few", with_("slurm.gpus_per_node", 2), [], "slurm.gpus_per_node"),
    ("slurm-signal", with_("slurm.signal_seconds", 0), [], "slurm.signal_seconds"),
    ("slurm-requeues", with_("slurm.max_requeues", -1), [], "slurm.max_requeues: must be at least 0"),
    ("slurm-requeue-str", with_("slurm.requeue", "yes"), [], "slurm.requeue: must be true or false"),
    (
        "launcher",
        {**GOOD, "launcher": "mpirun"},
        [],
        "launcher: must be one of torchrun|deepspeed|accelerate",
    ),
    ("python-empty", {**GOOD, "python": " "}, [], "python: must name the interpreter"),
    ("job-name-empty", with_("job.name", ""), [], "job.name: must not be empty"),
    ("job-name-newline", with_("job.name", "a\nb"), [], "job.name"),
    ("nul-byte", with_("job.name", "a\0b"), [], "job.name: contains a NUL byte"),
    ("train-not-mapping", {**GOOD, "train": ["a"]}, [], "train: must be a mapping"),
    ("zero-unknown", with_("train.deepspeed", "z4"), [], "train.deepspeed: unknown ZeRO stage 'z4'"),
    # A folder xgen sees without the file: a typo. An unseen folder is only noted (test_xgen_checked_early).
    ("zero-missing-json", with_("train.deepspeed", "none.json"), [], "train.deepspeed: file not found"),
    (
        "deepspeed-and-fsdp",
        {**GOOD, "train": {**GOOD["train"], "deepspeed": "z3", "fsdp": "full_shard"}},
        [],
        "train.fsdp: deepspeed and fsdp are both set; choose one",
    ),
    ("section-not-mapping", {**GOOD, "cluster": 3}, [], "cluster: must be a mapping"),
    ("top-not-mapping", "- a\n- b\n", [], "the config must be a YAML mapping"),
    ("yaml-syntax", "cluster: {nodes: 2\n", [], "fix the YAML syntax"),
    ("node-rank-range", GOOD, ["shell", "--node-rank", "5"], "--node-rank: must be 0 … 1"),
    ("node-rank-negative", GOOD, ["accelerate", "--node-rank", "-1"], "--node-rank"),
    (
        "deepspeed-no-hosts",
        {**GOOD, "cluster": {"nodes": 2}},
        ["deepspeed", "--hostfile", "hf.out"],
        "cluster.hosts",
    ),
    (
        "deepspeed-env-dollar",
        with_("cluster.env", {"A": "$(id)"}),
        ["deepspeed", "--hostfile", "hf.out"],
        "cluster.env.A",
    ),
    ("deepspeed-no-hostfile-option", GOOD, ["deepspeed"], "--hostfile: required for more than one node"),
    ("missing-config", None, [], "config file not found"),
]


@pytest.mark.parametrize("case_id,config,args,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_config(tmp_path, case_id, config, args, expected):
    (tmp_path / "HOSTFILE").write_text("n0 slots=4\nn1 slots=4\n")
    cfg = tmp_path / "job.yaml"
    if isinstance(config, str):
        cfg.write_text(config)
    elif config is not None:
        text = yaml.safe_dump(config).replace("HOSTFILE", str(tmp_path / "HOSTFILE"))
        cfg.write_text(text)
    command = args[:1] or ["slurm"]
    out = tmp_path / "out.sh"
    result = run_xgen(*command, str(cfg), *args[1:], "-o", str(out), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("xgen: error: ")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["HOSTFILE"] + (["job.yaml"] if config is not None else [])
    )


def test_corpus_is_large_enough():
    assert len(CASES) >= 30


def test_good_config_passes(tmp_path):
    cfg = tmp_path / "job.yaml"
    cfg.write_text(yaml.safe_dump(GOOD))
    result = run_xgen("check", str(cfg))
    assert result.returncode == 0, result.stderr
    assert "nodes:    2 x 4 devices per node" in result.stdout


def test_several_bad_train_keys_one_line_each(tmp_path):
    """The runtime's parser reports every bad train key; xgen prints each as its own line, exit 2."""
    train = {
        **GOOD["train"],
        "quantization_device_map": "auto",
        "audio_sampling_rate": 8000,
        "learnig_rate": 1e-4,
    }
    cfg = tmp_path / "job.yaml"
    cfg.write_text(yaml.safe_dump({**GOOD, "train": train}))
    result = run_xgen("check", str(cfg), cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert sorted(line.split(": ")[2] for line in lines) == [
        "train.audio_sampling_rate",
        "train.learnig_rate",
        "train.quantization_device_map",
    ], result.stderr
    assert all(line.startswith("xgen: error: ") for line in lines)
    assert any(line.endswith("did you mean 'learning_rate'?") for line in lines)
