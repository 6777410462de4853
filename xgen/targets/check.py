"""`xgen check`: what would run, in a few lines (nodes x devices, launcher, method, strategy, env)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from runtime.config import TrainConfig
from runtime.contract.devices import GPU, NPU, id_problem, seen_here, split_ids
from runtime.contract.secrets import MASK
from xgen.checks import launcher_commands
from xgen.config import Config
from xgen.errors import XgenError
from xgen.targets.common import master_addr, master_port


def _master(config: Config) -> str:
    addr = master_addr(config) or "first Slurm node / $MASTER_ADDR"
    port = master_port(config)
    text = f"{addr}:{port or '<a free port picked at launch>'}"
    if config.cluster.master_port is None:
        text += " (xgen slurm: 20000 + SLURM_JOB_ID % 20000)"
    return text


def _strategy(train: TrainConfig) -> str:
    if isinstance(train.deepspeed, str) and train.deepspeed_config is None:  # not visible from here
        return f"deepspeed {train.deepspeed} (ZeRO stage read on the nodes)"
    if train.deepspeed_config is not None:
        stage = train.deepspeed_config.get("zero_optimization", {}).get("stage", 0)
        source = train.deepspeed if isinstance(train.deepspeed, str) else "inline JSON"
        return f"deepspeed {source} (ZeRO-{stage})"
    if train.fsdp:
        offload = isinstance(train.fsdp_config, dict) and train.fsdp_config.get("cpu_offload")
        return "fsdp (FSDP2" + (", cpu offload)" if offload else ")")
    return "ddp"


def _launcher(config: Config) -> str:
    if config.launcher is None:
        return (
            "each command's own (xgen slurm/shell: torchrun, xgen deepspeed: deepspeed, "
            "xgen accelerate: accelerate)"
        )
    commands = ", ".join(f"xgen {c}" for c in launcher_commands(config.launcher))
    return f"{config.launcher} (started by {commands}; other commands refuse this config)"


def _accelerate(config: Config) -> str:
    """accelerate_config in one line: what xgen accelerate keeps, changes and fills in per node."""
    from xgen import accelerate_file

    assert config.accelerate_file is not None
    plan = accelerate_file.plan(config)
    changed = ", ".join(line.split(" ", 1)[0] for line in plan.changes) or "nothing"
    return (
        f"accelerate: {config.accelerate_file.path} (xgen accelerate): kept; changed here: {changed}; per "
        f"node: distributed_type, {', '.join(accelerate_file.PER_NODE)}"
    )


def _train(config: Config) -> str:
    train = config.training
    if train is None:
        return "(empty: the runtime will refuse to start; add the train: keys)"
    return f"{train.stage}/{train.finetuning_type} {train.model_name_or_path}, strategy {_strategy(train)}"


def runtime_check(config: Config) -> str:
    """The `datasets:` line and a `note:` line per thing not checked: the runtime's own check
    (`xgen-runtime check --visible-only`) run from the workdir, so model paths, a saved tokenized_path,
    dataset names, files and columns resolve as they will on the nodes; what is not visible from here is
    a note. Run as a subprocess: it reads the files with `datasets`, which xgen itself never imports.
    Problems raise XgenError."""
    if config.training is None:
        return "datasets: none named\n"
    named = bool(config.training.dataset or config.training.eval_dataset)
    if not Path(config.workdir).is_dir():
        what = "datasets" if named else "model paths"
        return f"datasets: not checked: workdir {config.workdir} is not visible from here ({what})\n"
    command = [sys.executable, "-m", "runtime", "check", "--visible-only", str(config.source)]
    result = subprocess.run(command, cwd=config.workdir, capture_output=True, text=True)
    lines = [line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    errors = [line.removeprefix("xgen-runtime: error: ") for line in lines if "xgen-runtime: error: " in line]
    if result.returncode == 2 and errors:
        first, *rest = [_key_and_message(line) for line in errors]
        raise XgenError(*first, also=rest)
    if result.returncode != 0:
        last = lines[-1] if lines else f"exit status {result.returncode}"
        return f"datasets: not checked: the runtime's check could not run here ({last})\n"
    notes = [
        line.removeprefix("xgen-runtime: note: ") for line in lines if line.startswith("xgen-runtime: note:")
    ]
    about_data = [n.removeprefix("datasets ") for n in notes if n.startswith("datasets ")]
    others = [f"note:     {n}\n" for n in notes if not n.startswith("datasets ")]
    if about_data:
        head = "datasets: " + "; ".join(about_data)
    elif not named:
        head = "datasets: none named"
    else:
        done = [line for line in result.stdout.splitlines() if line.startswith("xgen-runtime: check: ")]
        head = "datasets: " + (done[-1].removeprefix("xgen-runtime: check: ") if done else "ok")
    return head + "\n" + "".join(others)


def devices(config: Config) -> str:
    """Exported device ids against the devices this machine has, when it is one of the job's nodes (a
    hand-run or DeepSpeed cluster: `xgen check` on node 0), judged as the preflight does on each node
    (runtime.contract.devices). The ids are cluster.env's, else this shell's; DeepSpeed's --include
    gives every host the same list. Elsewhere (a login node) the preflight on each node checks them."""
    c = config.cluster
    here = {socket.gethostname(), socket.gethostname().split(".")[0], "localhost"}  # no DNS lookup
    names = {h.name for h in config.host_list} | {c.master_addr or ""}
    if c.device == "cpu" or not here & names:
        return ""
    seen = [s for s in seen_here() if c.device == "auto" or s.kind == ("NPU" if c.device == "npu" else "GPU")]
    if not seen:
        return ""
    kind = seen[0]  # auto: NPUs first, as the scripts detect them
    var = NPU[2] if kind.kind == NPU[0] else GPU[2]
    value = c.env.get(var) or os.environ.get(var, "")
    ids = split_ids(value)[: config.pinned_devices or None]
    problem = id_problem(ids, kind, value) if ids else None
    if problem:
        raise XgenError(var, problem.replace(" here ", f" on {socket.gethostname()} "))
    return f"devices:  {var}={value or '(all)'} fits the {kind.count} {kind.kind}s here\n"


def _key_and_message(line: str) -> tuple[str, str]:
    key, _, message = line.partition(": ")
    return (key, message) if message else ("train", line)


def forwarded(names: tuple[str, ...]) -> str:
    """Each forwarded name and whether it is set in this (the submitting) environment; never the value."""
    return ", ".join(f"{n} ({'set' if os.environ.get(n) else 'NOT set here'})" for n in names)


def _sweep(config: Config) -> str:
    """The sweep in one line: how many tasks, the array, and the first task's output_dir."""
    from xgen import sweep

    tasks = sweep.tasks(config)
    keys = " x ".join(f"{k} ({len(v)})" for k, v in config.sweep.items())
    array = sweep.array_spec(config)
    return (
        f"sweep:    {len(tasks)} array tasks (--array={array}) over {keys}; task 0 -> {tasks[0].output_dir}"
    )


def summary(config: Config) -> str:
    c = config.cluster
    devices = "auto-detected" if config.pinned_devices is None else str(config.pinned_devices)
    hosts = ", ".join(h.name for h in config.host_list) or "from Slurm / the environment"
    secret = set(c.written_secrets)
    env = ", ".join(f"{k}={MASK if k in secret else v}" for k, v in c.env.items()) or "defaults only"
    lines = [
        f"config:   {config.source}",
        f"job:      {config.job.name} in {config.workdir}",
        f"nodes:    {c.nodes} x {devices} devices per node (device: {c.device})",
        f"hosts:    {hosts}",
        f"master:   {_master(config)}",
        f"launcher: {_launcher(config)} (python: {config.python})",
        *([_accelerate(config)] if config.accelerate_file else []),
        f"train:    {_train(config)}",
        f"nic:      {c.nic or 'NCCL/HCCL default'}; env: {env}",
        *([f"pass_env: {forwarded(c.pass_env)}"] if c.pass_env else []),
        *([_sweep(config)] if config.sweep else []),
        # What the parser decided or could not read from here (a DeepSpeed JSON the nodes see).
        *(f"note:     {n}" for n in (config.training.notes if config.training else [])),
    ]
    return "\n".join(lines) + "\n"
