"""`xgen plan` and the fit warning of `xgen check`: the choices that must hold on paper, on real shapes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from xgen_helpers import REPO, run_xgen

sys.path.insert(0, str(REPO / "tests" / "runtime" / "contract"))
from plan_shapes import LLAMA3_8B, QWEN3_4B, QWEN3_30B_A3B, QWEN3_32B  # noqa: E402

from runtime.contract.plan import candidates, recommend, shape_from_config  # noqa: E402
from runtime.contract.plan.choose import trainable_params  # noqa: E402
from runtime.contract.plan.devices import known_device  # noqa: E402
from runtime.contract.plan.terms import Run  # noqa: E402


def job(tmp_path: Path, model: dict, *, cluster: dict | None = None, **train) -> Path:
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "model" / "config.json").write_text(json.dumps(model))
    base = {
        "model_name_or_path": "model",
        "stage": "sft",
        "finetuning_type": "full",
        "dataset": "alpaca_en_demo",
        "template": "llama3",
        "cutoff_len": 4096,
        "per_device_train_batch_size": 2,
        "bf16": True,
        "output_dir": "out",
    }
    config = {
        "cluster": {"nodes": 1, "devices_per_node": 8, "device": "cuda", **(cluster or {})},
        "train": {**base, **train},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_plan_prints_the_terms_the_alternatives_and_one_change(tmp_path: Path) -> None:
    proc = run_xgen("plan", str(job(tmp_path, LLAMA3_8B)), "--device-memory", "H100-80GB")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for term in ("parameters", "gradients", "optimizer states", "activations", "logits + loss", "peak"):
        assert f"\n  {term} " in out, out
    assert "configured: DDP, no checkpointing, micro-batch 2" in out and "does NOT fit" in out
    assert "79.6 GiB, 71.7 GiB usable (10% headroom)" in out
    rows = {
        line.split()[0] + line.split()[1]: line for line in out.splitlines() if line.startswith("  ZeRO-3 ")
    }
    assert rows and all(line.rstrip().endswith(("yes", "recommended")) for line in rows.values()), out
    recommended = [line for line in out.splitlines() if line.startswith("recommended: ")]
    assert recommended and not recommended[0].startswith("recommended: DDP"), out
    change = [line for line in out.splitlines() if line.startswith("change: ")]
    assert change and "train.deepspeed: z" in change[0], out


def _best(model: dict, devices: int, memory: str, finetuning_type: str = "full", micro: int = 2):
    shape = shape_from_config(model)
    from types import SimpleNamespace

    t = SimpleNamespace(
        finetuning_type=finetuning_type,
        lora_target="all",
        lora_rank=8,
        use_dora=False,
        freeze_trainable_layers=2,
        oft_target="all",
    )
    run = Run(
        shape=shape,
        method=finetuning_type,
        trainable=trainable_params(shape, t),
        world=devices,
        micro_batch=micro,
        seq=4096,
        strategy="ddp",
    )
    cands = candidates(run, known_device(memory), accumulation=4)
    return cands, recommend(cands)


def test_on_paper_full_8b_on_8x80gb_is_not_plain_ddp_and_zero3_fits() -> None:
    cands, best = _best(LLAMA3_8B, 8, "H100-80GB")
    assert not any(c.fits for c in cands if c.run.strategy == "ddp")  # 16 B/param of states alone: 120 GiB
    assert any(c.fits for c in cands if c.run.strategy == "zero3" and not c.run.offload)
    assert best is not None and best.run.strategy != "ddp"


def test_on_paper_lora_8b_on_one_device_fits_without_sharding() -> None:
    cands, best = _best(LLAMA3_8B, 1, "H100-80GB", "lora")
    assert best is not None and best.run.strategy == "ddp" and not best.run.offload


REAL = {"Llama-3-8B": LLAMA3_8B, "Qwen3-4B": QWEN3_4B, "Qwen3-32B": QWEN3_32B, "Qwen3-30B-A3B": QWEN3_30B_A3B}


@pytest.mark.parametrize("memory", ["H100-80GB", "A100-40GB", "910B-64GB"])
@pytest.mark.parametrize("nodes", [1, 2, 8])
def test_choices_on_real_shapes(memory: str, nodes: int) -> None:
    """Every model x device x nodes gets a choice or `nothing fits`; the choices that follow from sharding
    hold: more nodes never lose a fit, and LoRA of an 8B model fits any of these devices."""
    for name, model in REAL.items():
        for method in ("full", "lora"):
            _, best = _best(model, 8 * nodes, memory, method)
            _, more = _best(model, 8 * nodes * 2, memory, method)
            assert best is None or more is not None, (name, method, memory, nodes)
            print(
                name,
                method,
                memory,
                nodes,
                best and (best.run.strategy, best.run.offload, best.run.checkpointing),
            )
    assert _best(LLAMA3_8B, 8 * nodes, memory, "lora")[1] is not None


def test_check_warns_when_the_run_does_not_fit(tmp_path: Path) -> None:
    config = job(tmp_path, LLAMA3_8B, cluster={"device_memory_gb": "A100-40GB"})
    proc = run_xgen("check", str(config))
    assert proc.returncode == 0, proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if "device_memory_gb" in x]
    assert line.startswith(
        "xgen: warning: cluster.device_memory_gb: DDP, no checkpointing, micro-batch 2 needs "
    )
    assert "over the 36.0 GiB usable of 40.0 GiB (10% headroom) by " in line and "; change: train." in line
    ok = job(
        tmp_path,
        LLAMA3_8B,
        cluster={"device_memory_gb": 80},
        finetuning_type="lora",
        per_device_train_batch_size=1,
        gradient_checkpointing=True,
    )
    assert "device_memory_gb" not in run_xgen("check", str(ok)).stderr


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("H100-80GB", True),
        ("ascend 910b-64gb", True),
        ("79.5", True),
        (64, True),
        ("auto", True),
        ("B200", False),
        (0, False),
        ("1e9", False),  # bytes given as GiB
        ("A100-40", False),
    ],
)
def test_device_memory_values(tmp_path: Path, value, ok: bool) -> None:
    proc = run_xgen("plan", str(job(tmp_path, QWEN3_4B, cluster={"device_memory_gb": value})))
    assert (proc.returncode == 0) == ok, proc.stderr
    if not ok:
        assert proc.stderr.startswith("xgen: error: cluster.device_memory_gb: "), proc.stderr
    if value == "A100-40":
        assert "did you mean A100-40GB?" in proc.stderr
    if value == "auto":
        assert "fit not judged" in proc.stdout and "recommended: needs the device memory" in proc.stdout


def test_missing_config_json_is_one_line(tmp_path: Path) -> None:
    config = job(tmp_path, QWEN3_4B)
    (tmp_path / "model" / "config.json").unlink()
    proc = run_xgen("plan", str(config))
    assert proc.returncode == 2 and proc.stderr.startswith(
        "xgen: error: train.model_name_or_path: cannot read "
    )


def test_plan_never_imports_torch(tmp_path: Path) -> None:
    code = (
        "import json, sys\nfrom xgen.cli import main\n"
        f"try:\n    main(['plan', {str(job(tmp_path, QWEN3_30B_A3B))!r}, '--device-memory', '80'])\n"
        "except SystemExit:\n    pass\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == []


def test_scripts_pass_the_device_memory_to_the_preflight_only_when_set(tmp_path: Path) -> None:
    with_key = run_xgen("slurm", str(job(tmp_path, QWEN3_4B, cluster={"device_memory_gb": "910B-64GB"})))
    assert with_key.returncode == 0, with_key.stderr
    assert "    --device-memory 910B-64GB \\\n" in with_key.stdout
    without = run_xgen("slurm", str(job(tmp_path, QWEN3_4B)))
    assert "--device-memory" not in without.stdout


def test_a_hub_id_is_read_from_the_hugging_face_cache_or_said_how_to_fetch(
    tmp_path: Path, monkeypatch
) -> None:
    """`model_name_or_path: org/name` plans from the cached config.json; uncached, one line with the
    download command (a few KB), never a path under the workdir that nobody wrote."""
    path = job(tmp_path, QWEN3_4B, model_name_or_path="Qwen/Qwen3-4B")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    proc = run_xgen("plan", str(path))
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert line.startswith(
        "xgen: error: train.model_name_or_path: Qwen/Qwen3-4B is neither a folder here nor a "
    )
    assert "`hf download Qwen/Qwen3-4B config.json`" in line
    # The cache as huggingface_hub lays it out: refs/main names the snapshot that holds config.json.
    repo = tmp_path / "hf" / "hub" / "models--Qwen--Qwen3-4B"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abc")
    (repo / "snapshots" / "0123abc").mkdir(parents=True)
    (repo / "snapshots" / "0123abc" / "config.json").write_text(json.dumps(QWEN3_4B))
    proc = run_xgen("plan", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "device:   memory not stated: fit not judged" in proc.stdout, proc.stdout


def _configured(**train) -> Run:
    from runtime.config import parse_train_config
    from runtime.contract.plan.choose import run_from_config

    keys = {"model_name_or_path": "m", "dataset": "d", "finetuning_type": "full", "bf16": True, **train}
    return run_from_config(shape_from_config(LLAMA3_8B), parse_train_config(keys), world=8)


def test_preference_stages_plan_their_reference_and_both_rows() -> None:
    """DPO runs the chosen and the rejected rows in one forward (twice the tokens of SFT's micro-batch);
    a full or freeze DPO/KTO keeps a frozen copy of the model as its reference (whole under DDP and
    ZeRO-1/2, 1/N under ZeRO-3); LoRA's reference is its base with the adapter off: no copy."""
    from runtime.contract.plan.shape import total_params
    from runtime.contract.plan.terms import activations, breakdown, logits_and_loss, reference_model

    total = total_params(shape_from_config(LLAMA3_8B))
    sft, dpo = _configured(), _configured(stage="dpo", dataset="d")
    twice = sft.but(micro_batch=2 * sft.micro_batch)
    assert dpo.tokens == twice.tokens and activations(dpo) == activations(twice)
    assert logits_and_loss(dpo) == logits_and_loss(twice)
    assert reference_model(sft) == 0
    assert reference_model(dpo) == total * 4  # full tuning under autocast loads fp32 weights, as the policy
    z3 = dpo.but(strategy="zero3")
    assert reference_model(z3) == total * 2 // 8  # DeepSpeed's half dtype, partitioned
    assert reference_model(dpo.but(strategy="zero2")) == total * 2  # a stage-0 engine: whole on each rank
    kto = _configured(stage="kto", dataset="d")
    assert kto.tokens == sft.tokens and reference_model(kto) == total * 4  # the KL rows run without grad
    assert reference_model(_configured(stage="dpo", dataset="d", finetuning_type="lora")) == 0
    assert reference_model(_configured(stage="dpo", dataset="d", pref_loss="simpo")) == 0  # no reference
    assert any(t.name == "reference model" and t.bytes for t in breakdown(z3))


def test_the_change_line_applies_as_written() -> None:
    """From DeepSpeed to FSDP2 (and back) the line says what to remove; FSDP2's offload is train.fsdp's own
    `offload` word; checkpointing is turned with the key the config wrote (LLaMA-Factory's
    disable_gradient_checkpointing, which contradicts gradient_checkpointing when both are set). The
    config with the change applied parses, and plans as the chosen run."""
    from runtime.config import parse_train_config
    from runtime.contract.plan.choose import Candidate, change_line, configured_strategy, run_from_config

    shape = shape_from_config(LLAMA3_8B)
    keys = {"model_name_or_path": "m", "dataset": "d", "finetuning_type": "full", "bf16": True}
    for written, chosen in (
        ({"deepspeed": "z3", "disable_gradient_checkpointing": True}, ("fsdp2", True, True)),
        ({"fsdp": "full_shard auto_wrap"}, ("zero2", True, False)),
        ({"deepspeed": "z3_offload"}, ("ddp", False, True)),
    ):
        train = parse_train_config({**keys, **written})
        configured = run_from_config(shape, train, world=8)
        strategy, offload, checkpointing = chosen
        target = configured.but(strategy=strategy, offload=offload, checkpointing=checkpointing)
        line = change_line(configured, Candidate(target, 0, True, 1, 0), 1)
        changed = dict(keys, **written)
        for part in line.split("; "):
            if part.startswith("remove "):
                for key in part.removeprefix("remove ").split(" and "):
                    changed.pop(key.removeprefix("train."), None)
            else:
                key, value = part.removeprefix("train.").split(": ", 1)
                changed[key] = yaml.safe_load(value)
        applied = parse_train_config(changed)  # no contradiction left
        assert configured_strategy(applied) == (strategy, offload), (written, line)
        assert applied.gradient_checkpointing == checkpointing, (written, line)
    assert "disable_gradient_checkpointing: false" in change_line(
        run_from_config(shape, parse_train_config({**keys, "disable_gradient_checkpointing": True}), 8),
        Candidate(configured.but(checkpointing=True), 0, True, 1, 0),
        1,
    )


def test_a_deepspeed_json_not_seen_here_is_planned_by_its_llamafactory_name(tmp_path: Path) -> None:
    """LLaMA-Factory's examples/deepspeed/ds_z3_config.json, relative to its repo, is not visible where xgen
    plan runs: planned as the stage its name says, with a note; a bare YAML's keys are named as written."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(LLAMA3_8B))
    bare = {
        "model_name_or_path": str(tmp_path / "model"),
        "stage": "sft",
        "finetuning_type": "full",
        "dataset": "alpaca_en_demo",
        "deepspeed": "examples/deepspeed/ds_z3_config.json",
        "bf16": True,
        "output_dir": "out",
    }
    (tmp_path / "lf.yaml").write_text(yaml.safe_dump(bare))
    flags = ["--nodes", "2", "--devices-per-node", "8", "--device-memory", "H100-80GB"]
    proc = run_xgen("plan", "lf.yaml", *flags, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "configured: ZeRO-3" in proc.stdout, proc.stdout
    assert (
        "note: deepspeed: examples/deepspeed/ds_z3_config.json is not readable from here; planned as "
        "LLaMA-Factory's file of that name, the named stage z3"
    ) in proc.stdout
    assert "train." not in proc.stdout  # a bare YAML: its keys at the top level


def test_fp32_gradients_cost_their_bytes_and_a_bf16_head_is_not_copied() -> None:
    from runtime.contract.plan.choose import communication
    from runtime.contract.plan.terms import autocast_weight_copies

    shape = shape_from_config(LLAMA3_8B)
    full = Run(shape=shape, method="full", trainable=10**9, world=8, strategy="ddp")
    assert communication(full, 1) == 2 * 10**9 * 4  # DDP all-reduces fp32 gradients of fp32 weights
    lora = Run(shape=shape, method="lora", trainable=10**7, checkpointing=True)
    assert autocast_weight_copies(lora) == 0  # the frozen head is bf16 already: nothing to copy


def test_an_unverified_model_type_is_noted(tmp_path: Path) -> None:
    proc = run_xgen("plan", str(job(tmp_path, {**LLAMA3_8B, "model_type": "gemma2"})))
    assert proc.returncode == 0, proc.stderr
    assert "note: model_type gemma2: planned with the Llama-style decoder layer" in proc.stdout


def test_every_command_takes_device_memory_and_check_warns_in_the_yamls_own_keys(tmp_path: Path) -> None:
    """A bare LLaMA-Factory YAML holds no cluster: section: --device-memory sets it on every command, and
    xgen check's warning names the keys as the YAML writes them."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(LLAMA3_8B))
    bare = {"model_name_or_path": str(tmp_path / "model"), "stage": "sft", "finetuning_type": "full",
            "dataset": "alpaca_en_demo", "bf16": True, "output_dir": "out"}  # fmt: skip
    (tmp_path / "lf.yaml").write_text(yaml.safe_dump(bare))
    proc = run_xgen("check", "lf.yaml", "--nodes", "1", "--device-memory", "40", cwd=tmp_path)
    warning = [line for line in proc.stderr.splitlines() if line.startswith("xgen: warning: cluster.device")]
    assert warning and "change: deepspeed: z3" in warning[0] and "train." not in warning[0], proc.stderr
    for command in ("slurm", "shell", "deepspeed", "accelerate", "submit"):
        assert "--device-memory" in run_xgen(command, "--help").stdout, command
