"""Runtime side: credential values never leave the process in what it prints or writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from trainer_harness import base_config, run_cli, write_config

from runtime.contract import secrets
from runtime.scaffolding import testing

TOKEN = "hf_Runtime7Secret0Value"
WANDB = "wandb-9f8e7d6c5b4a-key"
LISTED = "listed-by-name-4242"


@pytest.mark.parametrize(
    "name",
    [
        "HF_TOKEN",
        "WANDB_API_KEY",
        "AWS_SECRET_ACCESS_KEY",
        "DB_PASSWORD",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "hub_token",
        "MLFLOW_TRACKING_PASSWORD",
        "APIKEY",
        "SSH_KEYS",
    ],
)
def test_credential_names(name):
    assert secrets.is_credential_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "NCCL_P2P_LEVEL",
        "TOKENIZERS_PARALLELISM",
        "NCCL_IB_KEYS_LIST",
        "OMP_NUM_THREADS",
        "MONK",
        "tokenized_path",
        "micro_batch_tokens",
        "max_new_tokens",
    ],
)
def test_not_credential_names(name):
    assert not secrets.is_credential_name(name)


def test_redact_masks_named_and_listed_values(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("PLAIN_LOOKING", LISTED)
    monkeypatch.setenv(secrets.SECRET_NAMES_VAR, "PLAIN_LOOKING")
    monkeypatch.setenv("SHORT_TOKEN", "ab")  # too short to mask without wrecking every log line
    text = secrets.redact(f"a {TOKEN} b {LISTED} c ab")
    assert text == "a *** b *** c ab"


def test_outputs_json_and_say_are_redacted(monkeypatch, tmp_path, capsys):
    from runtime.contract.say import say
    from runtime.fit import outputs

    monkeypatch.setenv("WANDB_API_KEY", WANDB)
    outputs.write_json(tmp_path / "r.json", {"run_name": f"x-{WANDB}", "n": 1})
    assert json.loads((tmp_path / "r.json").read_text()) == {"run_name": "x-***", "n": 1}
    say(f"note: {WANDB}")
    assert capsys.readouterr().out == "xgen-runtime: note: ***\n"


def test_secret_env_file_round_trip(monkeypatch, tmp_path):
    """The DeepSpeed script's NUL-separated NAME=VALUE records: any byte but NUL survives."""
    value = "a b'c\"d$e`f\\g\nh=i"
    path = tmp_path / ".xgen-secret-env.x"
    path.write_bytes(f"HF_TOKEN={value}\0WANDB_API_KEY={WANDB}\0".encode())
    monkeypatch.setenv(secrets.SECRET_ENV_FILE_VAR, str(path))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    secrets.load_secret_env_file()
    assert os.environ["HF_TOKEN"] == value and os.environ["WANDB_API_KEY"] == WANDB


def test_missing_secret_env_file_is_one_config_error(monkeypatch, tmp_path):
    from runtime.config import ConfigError

    monkeypatch.setenv(secrets.SECRET_ENV_FILE_VAR, str(tmp_path / "gone"))
    with pytest.raises(ConfigError, match="filesystem every node sees"):
        secrets.load_secret_env_file()


def test_tiny_training_leaves_no_credential_anywhere(tiny_dir, tmp_path):
    """A real 2-step training with credentials in its environment: the test hook sees them set, and
    neither stdout/stderr nor any file under output_dir (checkpoint included) holds a value."""
    out = tmp_path / "out"
    cfg = base_config(tiny_dir, out, max_steps=2, save_steps=1, save_total_limit=1, plot_loss=False)
    path = write_config(tmp_path / "cfg.yaml", cfg, xgen_style=True)
    env = {
        "HF_TOKEN": TOKEN,
        "WANDB_API_KEY": WANDB,
        "MY_LISTED": LISTED,
        secrets.SECRET_NAMES_VAR: "MY_LISTED",
        testing.TEST_ASSERT_ENV: "HF_TOKEN,WANDB_API_KEY,MY_LISTED",
    }
    proc = run_cli(["train", str(path)], tmp_path, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    printed = proc.stdout + proc.stderr
    assert "test hook: rank 0 on" in printed and "set: HF_TOKEN, WANDB_API_KEY, MY_LISTED" in printed
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in files), sorted(p.name for p in files)
    assert (out / "train_results.json").is_file()
    for value in (TOKEN, WANDB, LISTED):
        assert value not in printed
        holders = [str(p.relative_to(out)) for p in files if value.encode() in p.read_bytes()]
        assert not holders, f"{value!r} written to {holders}"


def test_test_hook_fails_when_a_name_is_missing(tiny_dir, tmp_path):
    cfg = base_config(tiny_dir, tmp_path / "out", max_steps=1)
    path = write_config(tmp_path / "cfg.yaml", cfg, xgen_style=True)
    env = {testing.TEST_ASSERT_ENV: "XGEN_SURELY_UNSET_NAME"}
    proc = run_cli(["train", str(path)], tmp_path, env=env, timeout=120)
    assert proc.returncode == 3 and "NOT set: XGEN_SURELY_UNSET_NAME" in proc.stderr, proc.stderr[-2000:]
    assert not Path(tmp_path / "out").exists()
