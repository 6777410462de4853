"""`xgen slurm`: one sbatch script; one srun task per node runs torch.distributed.run there."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from xgen import sweep
from xgen.checks import launcher_for
from xgen.config import Config
from xgen.errors import XgenError
from xgen.render import render, sbatch_quote
from xgen.targets.common import context


def directives(config: Config) -> list[str]:
    """The #SBATCH lines, from a plain list of (option, value) like submitit's _make_sbatch_string."""
    s = config.slurm
    options: list[tuple[str, object]] = [
        ("--job-name", config.job.name),
        ("--nodes", config.cluster.nodes),
        ("--ntasks-per-node", 1),
        # The job starts in its workdir, so relative slurm.output/error land where `xgen slurm` made them.
        ("--chdir", config.workdir),
    ]
    optional = [
        ("--partition", s.partition),
        ("--account", s.account),
        ("--qos", s.qos),
        ("--constraint", s.constraint),
        ("--time", s.time),
        ("--cpus-per-task", s.cpus_per_task),
        ("--mem", s.mem),
        ("--gpus-per-node", s.gpus_per_node),
        ("--gres", s.gres),
        ("--output", s.output),
        ("--error", s.error),
    ]
    options += [(flag, value) for flag, value in optional if value is not None]
    lines = [f"{flag}={sbatch_quote(value)}" for flag, value in options]
    if s.exclusive:
        lines.append("--exclusive")
    if s.requeue:
        lines += [f"--signal=B:USR1@{s.signal_seconds}", "--requeue", "--open-mode=append"]
    elif config.cluster.max_restarts > 0:
        # A run that restarts its workers also survives a node lost for good: Slurm requeues a job with
        # --requeue after a node failure (even where the site's JobRequeue=0), and the next allocation
        # resumes from the newest checkpoint. append: the requeued script adds to the same log.
        lines += ["--requeue", "--open-mode=append"]
    array = sweep.array_spec(config)
    if array:
        lines.append(f"--array={array}")
    # Free-form directives: split on the first "=", the value quoted like every other.
    for item in s.extra:
        flag, eq, value = item.partition("=")
        lines.append(f"{sbatch_quote(flag)}={sbatch_quote(value)}" if eq else sbatch_quote(flag))
    return lines


def log_directories(config: Config) -> list[tuple[str, Path]]:
    """(key, directory) of slurm.output/error, relative ones from the workdir (the job's --chdir)."""
    found = []
    for key, value in (("slurm.output", config.slurm.output), ("slurm.error", config.slurm.error)):
        if value is not None:
            found.append((key, (Path(config.workdir) / value).parent))
    return found


def make_log_directories(config: Config) -> None:
    """Slurm opens --output/--error before the script runs and never creates directories: a missing one
    ends the job with no log at all. So they are made now, or refused in one line."""
    for key, directory in log_directories(config):
        if "%" in str(directory):
            raise XgenError(
                key, f"the directory {directory} holds a Slurm %-pattern; keep patterns in the file name"
            )
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise XgenError(
                key,
                f"cannot create the log directory {directory} ({err.strerror}); Slurm would start the job "
                "with no log: create it on the cluster or run xgen slurm where job.workdir is visible",
            ) from None


def build(config: Config, module: str = "runtime train") -> str:
    ctx = context(config, "slurm" if module == "runtime train" else "doctor slurm")
    ctx["launch_module"] = module
    ctx["free_port"] = False  # the port is cluster.master_port or derived from the job id (slurm.sh.j2)
    ctx["setup"] = True
    if module != "runtime train":  # `xgen doctor` tests the cluster once: no array
        config = dataclasses.replace(
            config, sweep={}, slurm=dataclasses.replace(config.slurm, array_limit=None)
        )
    ctx["launcher"] = launcher_for(config, "slurm")
    if ctx["launcher"] == "deepspeed" and config.container.image:
        # The DeepSpeed node step (_deepspeed_node.sh.j2) is not wrapped in a container yet: refuse rather
        # than train outside the image the config names.
        raise XgenError(
            "container",
            "not supported with launcher: deepspeed under xgen slurm yet; remove launcher "
            "(torch.distributed.run runs inside the container) or the container section",
        )
    ctx["directives"] = directives(config)
    ctx["sweep_tasks"] = sweep.tasks(config)
    return render("slurm.sh.j2", ctx)


# --- submit --then export: the job that merges the trained LoRA adapter ---
def export_paths(config: Config) -> tuple[str, str]:
    """(adapter, export_dir) of `--then export`: the adapter training leaves in output_dir, and
    train.export_dir or output_dir/merged. Refused in one line where there is nothing to merge."""
    training = config.training
    if training is None:
        raise XgenError("--then", "export merges what train: trains, but train: is empty")
    if config.sweep:
        raise XgenError(
            "--then",
            "export after a sweep is not supported yet: submit the sweep, then export the task you keep "
            "with `xgen-runtime export` (adapter_name_or_path: its output_dir)",
        )
    if training.finetuning_type != "lora":
        raise XgenError(
            "--then",
            f"export merges a LoRA adapter, but train.finetuning_type is {training.finetuning_type}: "
            "its output_dir already holds a standalone model",
        )
    adapter = training.output_dir
    return adapter, training.export_dir or f"{adapter.rstrip('/')}/merged"


def build_export(config: Config, after: str) -> str:
    """The one-node job that runs `python -m runtime export` once job `after` completed (afterok)."""
    adapter, export_dir = export_paths(config)
    one_node = dataclasses.replace(
        config,
        job=dataclasses.replace(config.job, name=f"{config.job.name}-export"),
        cluster=dataclasses.replace(config.cluster, nodes=1),
        slurm=dataclasses.replace(config.slurm, requeue=False, array_limit=None),
    )
    ctx = context(one_node, "submit", " --then export")
    # No expected world or preflight for one merging process; the runtime masks the cluster's credentials.
    ctx.update(
        expect_world=False, preflight=False, setup=True, secret_names=list(one_node.cluster.hidden_env)
    )
    # --kill-on-invalid-dep=yes: a failed/cancelled training makes afterok impossible; without it Slurm
    # (unless slurm.conf sets kill_invalid_depend) keeps this job PENDING (DependencyNeverSatisfied).
    ctx["directives"] = [
        *directives(one_node),
        f"--dependency=afterok:{sbatch_quote(after)}",
        "--kill-on-invalid-dep=yes",
    ]
    ctx.update(
        after=after,
        adapter=adapter,
        export_dir=export_dir,
        overrides=json.dumps({"adapter_name_or_path": adapter, "export_dir": export_dir}),
    )
    return render("export.sh.j2", ctx)
