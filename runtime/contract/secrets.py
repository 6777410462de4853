"""Credentials in the environment: which names hold one, and hiding their values in what we print or write.

Torch-free and xgen-free: the generator imports `is_credential_name` to decide which scripts it writes
owner-only, and the runtime masks the values of such variables in every line it prints and every JSON
it writes to output_dir. A value never needs to be printed: the scripts and `xgen check` say `<set>`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

MASK = "***"
# Word parts that make a variable a credential (HF_TOKEN, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY, ...).
_CREDENTIAL_PARTS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")
# Names listed by the scripts (cluster.pass_env, cluster.secret_env): hidden even when they look harmless.
SECRET_NAMES_VAR = "XGEN_SECRET_NAMES"
# DeepSpeed's multi-node launcher: the owner-only file holding the credentials (see load_secret_env_file).
SECRET_ENV_FILE_VAR = "XGEN_SECRET_ENV_FILE"
# Shorter values are not masked: "1", "true" or "false" would turn words all over a log into ***.
_MIN_MASKED = 6


def is_credential_name(name: str) -> bool:
    """True for *TOKEN*, *KEY*, *SECRET*, *PASSWORD*, *CREDENTIAL* names, judged word by word (`_`).

    Not credentials: `TOKENIZERS_PARALLELISM` (a tokenizers switch every ML job sets), other `TOKENIZ*`
    words (`tokenized_path`), `TOKENS` counts (`micro_batch_tokens`, `max_new_tokens`) and a `KEYS` word
    inside a name (`*_KEYS_*`, configuration lists as in NCCL-style settings).
    """
    words = name.upper().split("_")
    for i, word in enumerate(words):
        if word.startswith("TOKENIZ") or word == "TOKENS" or (word == "KEYS" and 0 < i < len(words) - 1):
            continue
        if any(part in word for part in _CREDENTIAL_PARTS):
            return True
    return False


def secret_names(environ: Mapping[str, str] | None = None) -> set[str]:
    """Every credential-looking name in the environment, plus the ones the scripts listed by name."""
    env = os.environ if environ is None else environ
    listed = {n for n in env.get(SECRET_NAMES_VAR, "").split(",") if n}
    return {n for n in env if is_credential_name(n)} | listed


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """The values to mask, longest first (so a value containing another is masked whole)."""
    env = os.environ if environ is None else environ
    values = {env[n] for n in secret_names(env) if n in env and len(env[n]) >= _MIN_MASKED}
    return sorted(values, key=len, reverse=True)


def redact(text: str, values: Iterable[str] | None = None) -> str:
    """`text` with every credential value from the environment replaced by ***."""
    for value in secret_values() if values is None else values:
        text = text.replace(value, MASK)
    return text


def load_secret_env_file() -> None:
    """Put the credentials DeepSpeed's multi-node launch left in an owner-only file into os.environ.

    DeepSpeed forwards environment to remote nodes only by writing `export NAME=VALUE` onto the pdsh
    command line (visible in `ps` there) and logging that command, so the launch script keeps credentials
    out of it: it writes them as NUL-separated NAME=VALUE records to a 0600 file next to the config and
    forwards only the file's path. Each rank reads it here, before anything else runs.
    """
    path = os.environ.get(SECRET_ENV_FILE_VAR)
    if not path:
        return
    try:
        os.environ.update(read_secret_env_file(path))
    except OSError as err:
        from runtime.config import ConfigError

        raise ConfigError(
            SECRET_ENV_FILE_VAR,
            f"cannot read {path} on this node ({err.strerror}); keep the config's directory on a "
            "filesystem every node sees",
        ) from None


def read_secret_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """NAME=VALUE records separated by NUL (the one byte no environment value can hold)."""
    with open(path, "rb") as handle:
        data = handle.read()
    records = (r.decode("utf-8", "surrogateescape").partition("=") for r in data.split(b"\0"))
    return {name: value for name, sep, value in records if sep}
