"""Credentials never land in what xgen prints, nor in a file others can read.

The property test renders every generator for generated credential-like names and random values, runs
the shell/accelerate/DeepSpeed scripts with a fake interpreter (what the launcher would receive), and
looks for each value everywhere.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xgen_helpers import REPO

from runtime.contract.secrets import is_credential_name, read_secret_env_file
from xgen.cli import main

# A fake interpreter: records the environment and arguments the launcher would get, and the files
# DeepSpeed's runner would read (DS_ENV_FILE, the credentials file), then exits 0.
FAKE_PYTHON = """#!/usr/bin/env bash
[[ "${{1:-}} ${{2:-}}" == "-c import runtime" ]] && exit 0  # xgen_check_python: the runtime imports
# the per-node config check and the preflight pass: they are not what the launcher starts
case "${{1:-}} ${{2:-}} ${{3:-}}" in
  "-m runtime check" | "-m runtime.preflight "*) exit 0 ;;
esac
umask 077
n=$(find "{dump}" -maxdepth 1 -name 'env.*' | wc -l)
env -0 >"{dump}/env.$n"
printf '%s\\n' "$@" >"{dump}/args.$n"
if [[ -n "${{DS_ENV_FILE:-}}" && -f "$DS_ENV_FILE" ]]; then cp "$DS_ENV_FILE" "{dump}/ds_env.$n"; fi
if [[ -n "${{XGEN_SECRET_ENV_FILE:-}}" ]]; then
  cp "$XGEN_SECRET_ENV_FILE" "{dump}/secret.$n"
  stat -c %a "$XGEN_SECRET_ENV_FILE" >"{dump}/secret_mode.$n"
fi
"""

names = st.builds(
    lambda pre, part, post: f"X{pre}{part}{post}",
    st.from_regex(r"[A-Z0-9]{0,4}_", fullmatch=True),
    st.sampled_from(
        ["TOKEN", "API_KEY", "KEY", "SECRET", "PASSWORD", "CREDENTIALS", "HUB_TOKEN", "ACCESSKEY"]
    ),
    st.from_regex(r"(_[A-Z0-9]{1,3})?", fullmatch=True),
).filter(is_credential_name)
# Any text a shell variable can hold (no NUL), quotes, $, backquotes, backslashes and newlines included;
# a fixed head so a value never coincides with text a script holds anyway.
values = st.builds(
    lambda body, n: f"s3cr{body}{n}",
    st.text(
        st.characters(min_codepoint=1, max_codepoint=0x2FF, exclude_categories=("Cs",))
        | st.sampled_from("'\"$`\\ \n"),
        min_size=6,
        max_size=30,
    ),
    st.integers(0, 10**6),
)


def _config(tmp: Path, fake: Path, env: dict[str, str], listed: list[str], passed: list[str]) -> Path:
    config = {
        "job": {"name": "creds"},
        "cluster": {
            "nodes": 2,
            "devices_per_node": 2,
            "device": "cpu",
            # IP literals: the master check resolves them without DNS, and they are not loopback.
            "hosts": ["10.255.255.1", "10.255.255.2"],
            "master_port": 29555,
            "env": {"NCCL_P2P_LEVEL": "NVL", **env},
            "secret_env": listed,
            "pass_env": passed,
        },
        "python": str(fake),
        "train": {},
    }
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)  # the user's own file; the test is about what xgen writes
    return path


def _run_script(script: Path, tmp: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    run_env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp / "tmp"), "HOME": str(tmp), **env}
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, env=run_env, timeout=60)


def _launches(dump: Path) -> list[dict[str, object]]:
    out = []
    for env_file in sorted(dump.glob("env.*")):
        n = env_file.suffix
        entries = [e.split("=", 1) for e in env_file.read_bytes().decode().split("\0") if "=" in e]
        launch: dict[str, object] = {"env": dict(entries), "args": (dump / f"args{n}").read_text()}
        for extra in ("ds_env", "secret", "secret_mode"):
            if (dump / f"{extra}{n}").exists():
                launch[extra] = dump / f"{extra}{n}"
        out.append(launch)
    return out


@st.composite
def credentials(draw: st.DrawFn) -> tuple[dict[str, str], str, dict[str, str]]:
    """(cluster.env credentials, a cluster.secret_env value, pass_env values): distinct names and values."""
    n_secret, n_passed = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    keys = draw(st.lists(names, min_size=n_secret + n_passed, max_size=n_secret + n_passed, unique=True))
    vals = draw(
        st.lists(
            values, min_size=n_secret + n_passed + 1, max_size=n_secret + n_passed + 1, unique=True
        ).filter(lambda vs: not any(a != b and a in b for a in vs for b in vs))
    )
    secret = dict(zip(keys[:n_secret], vals[:n_secret], strict=True))
    passed = dict(zip(keys[n_secret:], vals[n_secret:-1], strict=True))
    return secret, vals[-1], passed


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(credentials())
def test_no_credential_value_is_printed_or_readable_by_others(drawn):
    secret, listed_value, passed = drawn
    everything = [*secret.values(), listed_value, *passed.values()]
    hidden = [*passed, *secret, "REGISTRY_AUTH"]
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp, dump = Path(tmpdir) / "run", Path(tmpdir) / "dump"
        for d in (tmp, dump, tmp / "tmp"):
            d.mkdir()
        fake = dump / "python"
        fake.write_text(FAKE_PYTHON.format(dump=dump))
        fake.chmod(0o700)
        config = _config(
            tmp, fake, {**secret, "REGISTRY_AUTH": listed_value}, ["REGISTRY_AUTH"], list(passed)
        )
        runner = CliRunner()
        commands = {
            "check": ["check", str(config)],
            "slurm": ["slurm", str(config), "-o", str(tmp / "slurm.sh")],
            "shell": ["shell", str(config), "--node-rank", "0", "-o", str(tmp / "shell.sh")],
            "accelerate": ["accelerate", str(config), "--node-rank", "0", "-o", str(tmp / "accelerate.sh")],
            "deepspeed": [
                "deepspeed",
                str(config),
                "--hostfile",
                str(tmp / "hostfile"),
                "-o",
                str(tmp / "ds.sh"),
            ],
        }
        for target, argv in commands.items():
            result = runner.invoke(main, argv, env=passed)
            assert result.exit_code == 0, (target, result.stderr, result.output)
            printed = result.stdout + result.stderr
            assert not [v for v in everything if v in printed], f"xgen {target} printed a credential"
            assert result.stderr.count("xgen: warning: credentials in the config") == 1, result.stderr
        # Every file xgen wrote that holds a value is owner-only; the scripts do hold the cluster.env ones.
        for path in tmp.rglob("*"):
            if path.is_file() and path != config:
                data = path.read_bytes()
                if any(v.encode() in data for v in everything):
                    assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path.name} readable by others"
        for script in ("slurm.sh", "shell.sh", "accelerate.sh", "ds.sh"):
            assert stat.S_IMODE((tmp / script).stat().st_mode) == 0o700
            assert listed_value.encode() not in (tmp / "hostfile").read_bytes()
            assert not [v for v in passed.values() if v.encode() in (tmp / script).read_bytes()]

        # Run the scripts: what the nodes print, and what the launcher (and so every rank) receives.
        for script in ("shell.sh", "accelerate.sh", "ds.sh"):
            proc = _run_script(tmp / script, tmp, passed)
            assert proc.returncode == 0, (script, proc.stderr[-3000:])
            printed = proc.stdout + proc.stderr
            assert not [v for v in everything if v in printed], f"{script} printed a credential"
            (env_line,) = [line for line in proc.stderr.splitlines() if ": env " in line]
            assert all(f" {n}=<set>" in env_line for n in hidden), env_line
        launches = _launches(dump)
        assert len(launches) == 3
        for launch in launches[:2]:  # torch.distributed.run, accelerate launch: the ranks inherit
            env = launch["env"]
            assert all(env.get(n) == v for n, v in {**secret, **passed}.items())
            assert env.get("REGISTRY_AUTH") == listed_value
        deepspeed = launches[2]
        assert "deepspeed.launcher.runner" in deepspeed["args"]
        # DeepSpeed's runner never holds a credential (it copies env onto the remote command line)...
        assert not [n for n in hidden if n in deepspeed["env"]]
        ds_env = deepspeed["ds_env"].read_bytes()
        assert not [v for v in everything if v.encode() in ds_env], "a credential in DS_ENV_FILE"
        # ...the ranks read them from the owner-only file whose path DS_ENV_FILE forwards.
        assert deepspeed["secret_mode"].read_text().strip() == "600"
        assert read_secret_env_file(deepspeed["secret"]) == {
            **passed,
            **secret,
            "REGISTRY_AUTH": listed_value,
        }
        assert b"XGEN_SECRET_ENV_FILE=" in ds_env
        assert not list(tmp.glob(".xgen-secret-env.*")), "the credentials file outlived the script"


def test_unset_pass_env_is_a_warning_on_the_node(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    (tmp_path / "tmp").mkdir()
    config = _config(tmp_path, fake, {}, [], ["HF_TOKEN", "WANDB_API_KEY"])
    script = tmp_path / "node.sh"
    result = CliRunner().invoke(main, ["shell", str(config), "--node-rank", "0", "-o", str(script)])
    assert result.exit_code == 0 and result.stderr == "", result.stderr  # nothing secret was written
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    proc = _run_script(script, tmp_path, {"HF_TOKEN": "hf_value_here"})
    assert proc.returncode == 0, proc.stderr
    assert "HF_TOKEN=<set> WANDB_API_KEY=<unset>" in proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "WANDB_API_KEY is not set here" in warnings[0], proc.stderr
    assert "hf_value_here" not in proc.stderr + proc.stdout


def test_check_says_which_forwarded_names_are_set(tmp_path):
    config = _config(
        tmp_path, Path("/usr/bin/python3"), {"HF_TOKEN": "hf_x_secret"}, [], ["WANDB_API_KEY", "A"]
    )
    result = CliRunner().invoke(main, ["check", str(config)], env={"WANDB_API_KEY": "w-secret-1"})
    assert result.exit_code == 0
    assert "pass_env: WANDB_API_KEY (set), A (NOT set here)" in result.stdout
    assert "HF_TOKEN=***" in result.stdout and "NCCL_P2P_LEVEL=NVL" in result.stdout
    assert "hf_x_secret" not in result.output and "w-secret-1" not in result.output


def _shell(command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    xgen = f"{sys.executable} -m xgen.cli"
    return subprocess.run(
        ["bash", "-c", command.replace("xgen", xgen, 1)], capture_output=True, text=True, cwd=cwd, env=env
    )


def test_stdout_redirect_is_narrowed_and_a_pipe_is_named(tmp_path):
    config = _config(tmp_path, Path("/usr/bin/python3"), {"HF_TOKEN": "hf_redirect_secret"}, [], [])
    config.chmod(0o644)
    proc = _shell(f"umask 022; xgen slurm {config} > job.sh", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE((tmp_path / "job.sh").stat().st_mode) == 0o700
    assert "hf_redirect_secret" in (tmp_path / "job.sh").read_text()
    (warning,) = proc.stderr.splitlines()
    assert (
        "(cluster.env.HF_TOKEN)" in warning and "stdout goes to is now readable by you only (0700)" in warning
    )
    assert "job.yaml itself is readable by others (mode 0644)" in warning
    assert "cluster.pass_env: [HF_TOKEN]" in warning
    piped = _shell(f"xgen slurm {config} | cat > piped.sh", tmp_path)
    assert piped.returncode == 0 and "stdout is not a file xgen can protect" in piped.stderr
    assert "hf_redirect_secret" not in proc.stderr + piped.stderr


@pytest.mark.parametrize(
    "cluster,line",
    [
        ({"pass_env": ["1BAD"]}, "cluster.pass_env[0]: '1BAD' is not an environment variable name"),
        ({"pass_env": ["A", "A"]}, "cluster.pass_env[1]: A is listed twice"),
        ({"pass_env": ["NODE_RANK"]}, "cluster.pass_env[0]: NODE_RANK is set by the generated script"),
        ({"pass_env": ["HF_TOKEN"], "env": {"HF_TOKEN": "x"}}, "cluster.pass_env[0]: HF_TOKEN is also given"),
        ({"secret_env": ["REG"]}, "cluster.secret_env[0]: REG is not a key of cluster.env"),
        ({"pass_env": "HF_TOKEN"}, "cluster.pass_env: must be a list"),
    ],
)
def test_bad_pass_env_and_secret_env(tmp_path, cluster, line):
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({"cluster": cluster}))
    result = CliRunner().invoke(main, ["check", str(config)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"xgen: error: {line}"), result.stderr


def test_a_credential_in_slurm_setup_makes_the_slurm_script_owner_only(tmp_path):
    config = tmp_path / "job.yaml"
    setup = [
        "module load cuda",
        "export HF_TOKEN=hf_in_setup_1",
        "huggingface-cli login --token hf_in_setup_2",
        'export WANDB_API_KEY="$(cat ~/.wandb_key)" TOKENIZERS_PARALLELISM=false',  # read at run time: fine
        "python prep.py --tokenizer_dir tok --token $HF_TOKEN",
    ]
    config.write_text(yaml.safe_dump({"slurm": {"setup": setup}}))
    config.chmod(0o600)
    result = CliRunner().invoke(main, ["slurm", str(config), "-o", str(tmp_path / "job.sh")])
    assert result.exit_code == 0
    assert stat.S_IMODE((tmp_path / "job.sh").stat().st_mode) == 0o700
    assert "(slurm.setup[1], slurm.setup[2])" in result.stderr and "pass_env: [HF_TOKEN]" in result.stderr
    # The other scripts do not run slurm.setup, but every script embeds the whole (frozen) config text,
    # so they hold the values too: owner-only as well, with the same warning.
    result = CliRunner().invoke(main, ["shell", str(config), "-o", str(tmp_path / "node.sh")])
    assert result.exit_code == 0 and "(slurm.setup[1], slurm.setup[2])" in result.stderr
    assert stat.S_IMODE((tmp_path / "node.sh").stat().st_mode) == 0o700
