"""The `xgen` command: parse arguments, call one target builder, write its text. Nothing else.

Errors (XgenError) become one stderr line per problem `xgen: error: <key>: <message>` and exit 2; an
output file is only ever replaced whole (temp file + os.replace), so a failure leaves nothing behind.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import click

from runtime.contract import files
from runtime.contract.zero import NAMED_STAGES, zero_config
from xgen.config import Config, field_docs
from xgen.errors import XgenError
from xgen.load import Flag, load_config

CONFIG = click.argument("config_file", metavar="CONFIG", type=click.Path(dir_okay=False))
OUTPUT = click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="Write here (atomically) instead of stdout."
)
NODE_RANK = click.option(
    "--node-rank", type=int, default=None, help="This node's rank (default: $NODE_RANK at run time)."
)

# --- flags that set config keys: a flag beats the file; a bare LLaMA-Factory YAML takes its cluster here ---
# option -> (config key, metavar). Values stay text here: xgen.load types them and runs the file's checks.
CLUSTER_FLAGS = {
    "--nodes": ("cluster.nodes", "N"),
    "--devices-per-node": ("cluster.devices_per_node", "N|auto"),
    "--device": ("cluster.device", "auto|cuda|npu|cpu"),
    "--nic": ("cluster.nic", "IFACE"),
    "--master-addr": ("cluster.master_addr", "HOST"),
    "--master-port": ("cluster.master_port", "PORT"),
    "--hosts": ("cluster.hosts", "HOST,HOST,…"),
    "--max-restarts": ("cluster.max_restarts", "N"),
    "--rendezvous": ("cluster.rendezvous", "static|c10d"),
    "--hang-timeout": ("cluster.hang_timeout", "SECONDS"),
    "--device-memory": ("cluster.device_memory_gb", "GIB|auto|NAME"),
    "--job-name": ("job.name", "NAME"),
    "--workdir": ("job.workdir", "DIR"),
    "--python": ("python", "PATH"),
}
SLURM_FLAGS = {
    "--partition": ("slurm.partition", "NAME"),
    "--time": ("slurm.time", "TIME"),
    "--account": ("slurm.account", "NAME"),
    "--qos": ("slurm.qos", "NAME"),
    "--gpus-per-node": ("slurm.gpus_per_node", "N"),
}
# xgen accelerate only: your own accelerate config file (docs/launchers.md).
ACCELERATE_FLAGS = {"--accelerate-config": ("accelerate_config", "FILE")}
_FLAGS = "xgen.flags"  # ctx.meta: the flags given, in command-line order
_FLAG_HELP = {
    "cluster.hosts": "Node names, comma-separated, first = master (hostfile launchers).",
    "job.workdir": "Directory the job runs in; relative to the current directory. Default: the config's "
    "directory; for a bare LLaMA-Factory YAML the current directory (where llamafactory-cli would run).",
    "accelerate_config": "Your own accelerate config file (LLaMA-Factory's examples/accelerate/*.yaml), "
    "relative to the current directory: kept, with each node's machine_rank, main_process_ip/port, "
    "num_machines and num_processes filled in at run time (each change said in one line); a setting that "
    "contradicts the config is refused.",
}


def config_flags(table: dict[str, tuple[str, str]]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The options of `table`, each setting its config key over the file's (help: the key's own doc)."""
    docs = {key: text for key, _, text, _ in field_docs()}

    def keep(option: str, key: str) -> Callable[[click.Context, click.Parameter, str | None], None]:
        def callback(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
            if value is not None:
                ctx.meta.setdefault(_FLAGS, []).append((option, key, value))

        return callback

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        for option, (key, metavar) in reversed(table.items()):
            command = click.option(
                option,
                metavar=metavar,
                expose_value=False,
                callback=keep(option, key),
                help=f"Sets {key}: {_FLAG_HELP.get(key, docs[key])}",
            )(command)
        return command

    return decorate


def given_flags() -> tuple[Flag, ...]:
    """The config-key flags of the running command, in the order they were typed."""
    return tuple(click.get_current_context().meta.get(_FLAGS, ()))


def require_directory_of(path: str) -> None:
    """Refuse an output path whose directory is missing, before anything is written."""
    parent = Path(path).parent
    if not parent.is_dir():
        raise XgenError(path, f"directory {parent} does not exist: create it or write elsewhere")


def write_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """Write the whole file or nothing (runtime.contract.files), once its directory is known to exist."""
    require_directory_of(path)
    files.write_atomic(path, text, mode)


def emit(text: str, output: str | None, config: Config | None = None) -> None:
    """Write the script to -o (atomically) or stdout; owner-only when it holds credential values."""
    script = text.startswith("#!")
    secrets = config.secrets_written() if config is not None else ()
    if config is None or not secrets:
        if output:
            write_atomic(output, text, 0o755 if script else 0o644)
        else:
            sys.stdout.write(text)
        return
    mode = 0o700 if script else 0o600
    if output:
        write_atomic(output, text, mode)  # the temp file is 0600 from the start, never wider
        where = f"{output} is readable by you only ({mode:04o})"
    elif protect_stdout(mode):
        where = f"the file stdout goes to is now readable by you only ({mode:04o})"
    else:
        where = "stdout is not a file xgen can protect: write with -o FILE (owner-only) instead"
    warn_secrets(config, secrets, f"written into the script; {where}")
    if not output:
        sys.stdout.write(text)


def protect_stdout(mode: int) -> bool:
    """chmod the file stdout is redirected to (`> job.sh`), before a byte is written to it.

    Only a regular, empty file we own: a shell redirect creates it with the umask's mode (often 0644),
    so this narrows it; a pipe, a terminal or a file someone else keeps (`>> shared.log`) is left alone.
    """
    try:
        sys.stdout.flush()
        fd = sys.stdout.fileno()
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_size != 0:
            return False
        os.fchmod(fd, mode)
    except (OSError, ValueError, io.UnsupportedOperation):
        return False
    return True


def warn_secrets(config: Config, secrets: tuple[tuple[str, str], ...], what: str) -> None:
    """The one warning line for credential values in the config (and a config others can read)."""
    keys = ", ".join(key for key, _ in secrets)
    names = (
        ", ".join(dict.fromkeys(n for _, n in secrets if not n.startswith("-"))) or "NAME, …"
    )  # not --flags
    try:
        config_mode = stat.S_IMODE(config.source.stat().st_mode)
    except OSError:
        config_mode = 0
    readable = (
        f"; {config.source.name} itself is readable by others (mode {config_mode:04o}): chmod 600 it"
        if config_mode & 0o077
        else ""
    )
    click.echo(
        f"xgen: warning: credentials in the config ({keys}): {what}{readable}; better: "
        f"cluster.pass_env: [{names}] and export them where the job starts, so no file holds them",
        err=True,
    )


def run(action: Callable[[Config], object], config_file: str) -> None:
    """Load the config (with the flags that set its keys over it) and run one action."""
    flags = given_flags()
    guarded(lambda: action(load_config(config_file, flags)))


def guarded(action: Callable[[], object]) -> None:
    """Run one action; every XgenError or OSError becomes one line (per problem) and exit status 2."""
    try:
        action()
    except XgenError as err:
        click.echo(err.line(), err=True)
        sys.exit(2)
    except OSError as err:
        click.echo(
            f"xgen: error: {getattr(err, 'filename', '') or 'output'}: {err.strerror or err}", err=True
        )
        sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="xgen")
def main() -> None:
    """Turn one YAML config into launch scripts for multi-node fine-tuning.

    \b
    xgen slurm job.yaml > job.sh && sbatch job.sh
    xgen deepspeed job.yaml --hostfile hostfile > launch.sh && bash launch.sh
    xgen shell job.yaml --node-rank 0 > node0.sh && bash node0.sh
    xgen slurm my_lf_config.yaml --nodes 2 --partition gpu > job.sh

    CONFIG is an xgen config or a bare LLaMA-Factory training YAML (model_name_or_path, stage, … at the
    top level): its keys become train:, the cluster comes from flags (--nodes, --partition, …; a flag
    also beats a full config's value) and the job runs in the current directory.
    """


@main.command()
@CONFIG
@OUTPUT
@config_flags(CLUSTER_FLAGS)
@config_flags(SLURM_FLAGS)
def slurm(config_file: str, output: str | None) -> None:
    """An sbatch script: one srun task per node, torch.distributed.run on each.

    \b
    Example:
      xgen slurm examples/gpu-2node-full-zero3.yaml > job.sh && sbatch job.sh
      xgen slurm my_lf_config.yaml --nodes 2 --partition gpu > job.sh   # a LLaMA-Factory YAML
    """
    from xgen.targets import slurm as target

    def action(cfg: Config) -> None:
        text = target.build(cfg)
        target.make_log_directories(cfg)
        emit(text, output, cfg)

    run(action, config_file)


@main.command()
@CONFIG
@click.option(
    "--then",
    "then",
    type=click.Choice(["export"]),
    default=None,
    help="Chain a dependent job (afterok): export merges the LoRA adapter into a standalone model.",
)
@config_flags(CLUSTER_FLAGS)
@config_flags(SLURM_FLAGS)
def submit(config_file: str, then: str | None) -> None:
    """Render the Slurm script (a job array with sweep:), sbatch it, print the job id(s).

    The script and the config stay in workdir/xgen-runs/<job id>/. With `--then export` a second job
    waits for the training (afterok) and merges its LoRA adapter into output_dir/merged (or
    train.export_dir); a failed training cancels it. stdout: one job id per line, training first.

    \b
    Example:
      xgen submit examples/gpu-1node-lora-sft.yaml --then export
      xgen submit my_lf_config.yaml --nodes 2 --partition gpu --time 1-00:00:00
    """
    from xgen.ops.submit import submit as submit_jobs

    def action(cfg: Config) -> None:
        jobs = submit_jobs(cfg, then)
        for job in jobs:
            click.echo(f"xgen: submitted {job.what} job {job.job_id}; kept in {job.run_dir}", err=True)
        if cfg.secrets_written():
            warn_secrets(cfg, cfg.secrets_written(), "the submitted scripts hold them (owner-only)")
        click.echo("\n".join(job.job_id for job in jobs))
        click.echo(f"xgen: watch it: xgen status {jobs[0].job_id}", err=True)

    run(action, config_file)


@main.command()
@CONFIG
@click.option(
    "--hostfile",
    type=click.Path(dir_okay=False),
    help="Where to write the DeepSpeed hostfile (multi-node; one node runs without one).",
)
@OUTPUT
@config_flags(CLUSTER_FLAGS)
def deepspeed(config_file: str, hostfile: str | None, output: str | None) -> None:
    """A DeepSpeed hostfile (`host slots=N`) and the script that launches on all its hosts.

    \b
    Example:
      xgen deepspeed examples/deepspeed-hostfile.yaml --hostfile hostfile > launch.sh && bash launch.sh
      xgen deepspeed my_lf_config.yaml --nodes 2 --hosts n0,n1 --hostfile hostfile > launch.sh
    """
    from xgen.targets import deepspeed as target

    def action(cfg: Config) -> None:
        script, hosts = target.build(cfg, hostfile)
        if output:  # both files or neither
            require_directory_of(output)
        if hosts is not None and hostfile:
            write_atomic(hostfile, hosts)
        emit(script, output, cfg)

    run(action, config_file)


@main.command()
@CONFIG
@NODE_RANK
@OUTPUT
@config_flags(CLUSTER_FLAGS)
def shell(config_file: str, node_rank: int | None, output: str | None) -> None:
    """The script for one node of a hand-run cluster (NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT).

    \b
    Example:
      xgen shell examples/npu-2node-lora.yaml --node-rank 1 > node1.sh && bash node1.sh
      xgen shell my_lf_config.yaml --nodes 2 --master-addr n0 --node-rank 0 > node0.sh
    """
    from xgen.targets import shell as target

    run(lambda cfg: emit(target.build(cfg, node_rank), output, cfg), config_file)


@main.command()
@CONFIG
@NODE_RANK
@OUTPUT
@config_flags(CLUSTER_FLAGS)
@config_flags(ACCELERATE_FLAGS)
def accelerate(config_file: str, node_rank: int | None, output: str | None) -> None:
    """An accelerate config (MULTI_GPU or FSDP, or your own) and its `accelerate launch` line, for one node.

    \b
    Example:
      xgen accelerate examples/fsdp-accelerate.yaml --node-rank 0 > node0.sh && bash node0.sh
      xgen accelerate my_lf_config.yaml --nodes 2 --master-addr n0 --node-rank 0 > node0.sh
      xgen accelerate llama3_lora_sft.yaml --accelerate-config fsdp_config.yaml --nodes 2 \\
        --hosts n0,n1 --node-rank 1 > node1.sh
    """
    from xgen.targets import accelerate as target

    run(lambda cfg: emit(target.build(cfg, node_rank), output, cfg), config_file)


@main.group()
def doctor() -> None:
    """The preflight plus an all-reduce bandwidth test, as its own job (docs/preflight.md).

    \b
    The script is the matching generator's (same allocation, environment, detection and rendezvous)
    with `python -m runtime.doctor` in place of the trainer: bus bandwidth (nccl-tests' busbw) inside
    and across nodes, one table row per node, a JSON report (xgen-doctor-<job>.json in the workdir).
    Exit 0 when nothing is wrong (warnings allowed), 3 when the preflight fails.
    """


@doctor.command("slurm")
@CONFIG
@OUTPUT
@click.option("--submit", is_flag=True, help="sbatch it, wait for the end, print the table.")
@config_flags(CLUSTER_FLAGS)
@config_flags(SLURM_FLAGS)
def doctor_slurm(config_file: str, output: str | None, submit: bool) -> None:
    """`xgen doctor slurm CFG [--submit]`.

    \b
    Example:
      xgen doctor slurm examples/gpu-2node-full-zero3.yaml --submit
      xgen doctor slurm my_lf_config.yaml --nodes 2 --partition gpu --submit
    """
    from xgen.targets import slurm as target

    def action(cfg: Config) -> None:
        text = target.build(cfg, module="runtime.doctor")
        if not submit:
            emit(text, output, cfg)
            return
        path = output or "xgen-doctor.sh"
        write_atomic(path, text, 0o700 if cfg.secrets_written() else 0o755)
        sys.exit(submit_and_report(path))

    run(action, config_file)


@doctor.command("shell")
@CONFIG
@NODE_RANK
@OUTPUT
@config_flags(CLUSTER_FLAGS)
def doctor_shell(config_file: str, node_rank: int | None, output: str | None) -> None:
    """`xgen doctor shell CFG --node-rank N`: run the script on every node.

    \b
    Example:
      xgen doctor shell examples/npu-2node-lora.yaml --node-rank 0 > doctor0.sh
      xgen doctor shell my_lf_config.yaml --nodes 2 --master-addr n0 --node-rank 0 > doctor0.sh
    """
    from xgen.targets import shell as target

    run(lambda cfg: emit(target.build(cfg, node_rank, module="runtime.doctor"), output, cfg), config_file)


@doctor.command("deepspeed")
@CONFIG
@click.option("--hostfile", type=click.Path(dir_okay=False), help="Where to write the DeepSpeed hostfile.")
@OUTPUT
@config_flags(CLUSTER_FLAGS)
def doctor_deepspeed(config_file: str, hostfile: str | None, output: str | None) -> None:
    """`xgen doctor deepspeed CFG --hostfile H`: run the script on the first host.

    \b
    Example:
      xgen doctor deepspeed examples/deepspeed-hostfile.yaml --hostfile hostfile > doctor.sh
      xgen doctor deepspeed my_lf_config.yaml --nodes 2 --hosts n0,n1 --hostfile hostfile > doctor.sh
    """
    from xgen.targets import deepspeed as target

    def action(cfg: Config) -> None:
        script, hosts = target.build(cfg, hostfile, module="runtime.doctor")
        if output:
            require_directory_of(output)
        if hosts is not None and hostfile:
            write_atomic(hostfile, hosts)
        emit(script, output, cfg)

    run(action, config_file)


def submit_and_report(script: str) -> int:
    """sbatch the doctor script, wait for its end, print its preflight lines and table; its exit status."""
    import re
    import subprocess
    import time

    def sh(*argv: str) -> str:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise XgenError(argv[0], (proc.stderr or proc.stdout).strip() or f"exit {proc.returncode}")
        return proc.stdout

    try:
        job = sh("sbatch", "--parsable", script).strip().split(";")[0]
    except FileNotFoundError:
        raise XgenError("--submit", "sbatch not found; run it on a Slurm login node") from None
    click.echo(f"xgen: doctor: submitted job {job}; waiting", err=True)
    final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"}
    while True:
        info = dict(re.findall(r"(\S+?)=(\S*)", sh("scontrol", "show", "job", "--oneliner", job)))
        if info.get("JobState") in final:
            break
        time.sleep(2)
    try:
        log = Path(info.get("StdOut", "")).read_text(errors="replace")
    except OSError:
        log = ""
    # The preflight's lines, then the doctor's block (from its results marker to its report line).
    # Worker lines carry torch.distributed.run's `--tee` prefix (`[default0]:`); the table is rank 0's.
    lines = [re.sub(r"^\[default\d+\]:", "", line) for line in log.splitlines()]
    shown = [line for line in lines if line.startswith("xgen: preflight:")]
    if "xgen: doctor: results" in lines:
        block = lines[lines.index("xgen: doctor: results") + 1 :]
        shown += block[
            : next((i + 1 for i, x in enumerate(block) if x.startswith("xgen: doctor: report")), None)
        ]
    click.echo("\n".join(shown))
    code = int(info.get("ExitCode", "1:0").split(":")[0])
    click.echo(
        f"xgen: doctor: job {job} {info.get('JobState')} (exit {code}); log {info.get('StdOut')}", err=True
    )
    return code


@main.command()
@click.argument("name", metavar="STAGE", type=click.Choice(NAMED_STAGES))
@OUTPUT
def zero(name: str, output: str | None) -> None:
    """The DeepSpeed JSON a named ZeRO stage (`train.deepspeed: z3`, …) stands for.

    The runtime builds the same JSON at start (and keeps it as output_dir/deepspeed_config.json);
    write it out to read it or to edit it, then set `train.deepspeed` to the file's path.

    \b
    Example:
      xgen zero z3_offload -o ds_z3_offload.json
    """
    guarded(lambda: emit(json.dumps(zero_config(name), indent=2) + "\n", output))


@main.command()
@CONFIG
@config_flags(CLUSTER_FLAGS)
@config_flags(SLURM_FLAGS)
@config_flags(ACCELERATE_FLAGS)
def check(config_file: str) -> None:
    """Validate only: print what would run and exit 0, or one error line per problem and exit 2.

    The model paths, a saved tokenized_path and the datasets are read as the runtime will read them
    (names through dataset_info.json, files, columns) when they are visible from here; what is not
    visible (a folder only the nodes mount, a hub id not in this machine's cache) is a note.

    \b
    Example:
      xgen check examples/cpu-tiny.yaml
      xgen check my_lf_config.yaml --nodes 2 --devices-per-node 8
    """
    from xgen.targets.check import devices, runtime_check, summary
    from xgen.targets.plan import fit_warning

    def action(cfg: Config) -> None:
        sys.stdout.write(summary(cfg) + runtime_check(cfg) + devices(cfg) + "ok\n")
        misfit = fit_warning(cfg)
        if misfit:
            click.echo(f"xgen: warning: {misfit}", err=True)
        if cfg.secrets_written():
            warn_secrets(cfg, cfg.secrets_written(), "the generated scripts will hold them (owner-only)")

    run(action, config_file)


@main.command()
@CONFIG
@config_flags(CLUSTER_FLAGS)
@config_flags(SLURM_FLAGS)
def plan(config_file: str) -> None:
    """Memory per device before submitting: parameters, gradients, optimizer states, activations, buffers.

    Reads only the model's config.json. Prints the configured run's terms and peak, the alternatives
    (DDP, ZeRO-1/2/3, offload, FSDP2, checkpointing, micro-batch), which fit the device memory
    (cluster.device_memory_gb or --device-memory; 10% kept free) and the one with the least
    communication per step, with the keys to change. docs/plan.md says where each term comes from.

    \b
    Example:
      xgen plan job.yaml --device-memory H100-80GB --nodes 2 --devices-per-node 8
    """
    from xgen.targets.plan import plan as plan_of

    run(lambda cfg: sys.stdout.write(plan_of(cfg)), config_file)


# --- operable: watching and stopping a submitted run ---
_TARGET = "JOBID|RUNID|RUN_DIR|OUTPUT_DIR"
_WORKDIR = click.option(
    "--workdir",
    default=None,
    metavar="DIR",
    help="The job.workdir whose xgen-runs/ holds RUNID (default: the current directory).",
)


@main.command()
@click.argument("target", metavar=_TARGET)
@_WORKDIR
def status(target: str, workdir: str | None) -> None:
    """A run's state, progress, and for a failed run the first failing node and rank (or the error line
    a node's script printed, when it failed before training).

    TARGET: a Slurm job id (scontrol, else sacct); a run id, or its prefix, under ./xgen-runs/ (a hand-run
    job's nodes each write `<UTC time>-<host>-<pid>`: they are found together); a run directory; or the
    output_dir.

    \b
    Example:
      xgen status 4242          # or: xgen status saves/llama3-lora, xgen status 20260101T1200
    """
    from xgen.ops.status import status_lines

    def action() -> None:
        colours = {"red": "red", "green": "green"}
        for style, line in status_lines(target, workdir):  # colours on a terminal only: stripped when piped
            click.secho(line, fg=colours.get(style), bold=style == "bold")

    guarded(action)


@main.command()
@click.argument("target", metavar=_TARGET)
@click.option("--node", default=None, help="Only this node's log (its hostname).")
@click.option("--rank", type=int, default=None, help="One worker's own stdout/stderr logs (global rank).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing as the logs grow (tail -F).")
@_WORKDIR
def logs(target: str, node: str | None, rank: int | None, follow: bool, workdir: str | None) -> None:
    """Print a run's logs: each node's (newest attempt) under a header naming node and file, or one rank's.

    TARGET as for `xgen status`; the logs of every run directory of a hand-run job.

    \b
    Example:
      xgen logs 4242 --node node1 --follow
    """
    from xgen.ops.status import log_files

    def action() -> None:
        files = log_files(target, node, rank, workdir)
        if follow:
            # tail: the one well-known tool that follows several files, a header (the file) before each.
            os.execvp("tail", ["tail", "-v", "-n", "+1", "-F", *(str(path) for _, path in files)])
        out = sys.stdout.buffer
        for number, (header, path) in enumerate(files):
            out.write(f"{chr(10) if number else ''}==> {header}: {path} <==\n".encode())
            with path.open("rb") as log:
                shutil.copyfileobj(log, out)
        out.flush()

    guarded(action)


@main.command()
@click.argument("job_id", metavar="JOBID")
def cancel(job_id: str) -> None:
    """Cancel a job (scancel): every node stops; a requeueable job is not requeued.

    \b
    Example:
      xgen cancel 4242
    """
    import subprocess

    def action() -> None:
        result = subprocess.run(["scancel", job_id], capture_output=True, text=True)
        if result.returncode != 0:
            raise XgenError(job_id, (result.stderr.strip() or "scancel failed").splitlines()[-1])
        click.echo(f"xgen: cancelled job {job_id}")

    guarded(action)


if __name__ == "__main__":
    main()
