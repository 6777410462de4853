"""Files every node must see alike: the model, the datasets, a DeepSpeed JSON, the config itself
(check 5), and an output_dir that is one directory for all nodes (check 6).

Each node describes what it sees (`describe`): per input its absolute path, whether it exists, and per file
its size, modification time and, for small files (config.json, dataset_info.json …), a SHA-256. The master
compares every node's description with its own (`compare`); nothing is read twice over the network.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from runtime.preflight.findings import Finding
from runtime.preflight.settings import Settings

SMALL = 1 << 20  # files up to 1 MiB are hashed; larger ones are compared by size (and mtime: a warning)
MAX_FILES = 200  # a directory is described by at most this many top-level files
WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
SHARED_FIX = "put it on a filesystem every node mounts at the same path (or copy it to every node)"
HUB_URLS = {"hf_hub_url", "ms_hub_url", "om_hub_url"}  # such an entry's file_name is not read (LLaMA-Factory)


def path_like(value: str) -> bool:
    """A value the user meant as a local path (a hub id such as org/name is neither absolute nor dotted)."""
    return value.startswith(("/", ".", "~"))


def inputs(cfg: Any, raw_train: dict[str, Any], workdir: str) -> list[tuple[str, Path, bool]]:
    """(key, absolute path, must exist) for every file or directory the run reads."""
    base = Path(workdir)
    found: list[tuple[str, Path, bool]] = []

    def add(key: str, value: Any, must: bool | None = None) -> None:
        if isinstance(value, str) and value:
            path = (base / Path(value).expanduser()).absolute()
            found.append((key, path, path_like(value) or path.exists() if must is None else must))

    add("train.model_name_or_path", cfg.model_name_or_path)
    add("train.adapter_name_or_path", getattr(cfg, "adapter_name_or_path", None))
    ds = raw_train.get("deepspeed")
    if isinstance(ds, str) and ds.endswith(".json"):
        add("train.deepspeed", ds, True)
    fsdp_config = raw_train.get("fsdp_config")
    if isinstance(fsdp_config, str):
        add("train.fsdp_config", fsdp_config, True)
    data_dir = base / str(getattr(cfg, "dataset_dir", "data"))
    names = _names(getattr(cfg, "dataset", None)) + _names(getattr(cfg, "eval_dataset", None))
    if names:
        info_path = data_dir / "dataset_info.json"
        info = _read_info(info_path)
        if info_path.exists() or info is not None:
            add("train.dataset_dir", str(info_path), True)
        for name in names:
            entry = (info or {}).get(name)
            if isinstance(entry, dict) and HUB_URLS & set(entry):
                continue  # downloaded from a hub by rank 0 (runtime.data.hub), not read from dataset_dir
            if isinstance(entry, dict) and isinstance(entry.get("file_name"), str):
                add(f"train.dataset ({name})", str(data_dir / entry["file_name"]), True)
            elif entry is None:
                for candidate in (Path(name).expanduser(), data_dir / name):
                    if candidate.exists():
                        add(f"train.dataset ({name})", str(candidate), True)
                        break
    return found


def _names(value: Any) -> list[str]:
    if not value:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(i).strip() for i in items if str(i).strip()]


def _read_info(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _file(path: Path) -> list[Any]:
    st = path.stat()
    digest = None
    if st.st_size <= SMALL:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return [st.st_size, int(st.st_mtime), digest]


def describe(path: Path) -> dict[str, Any]:
    """{"exists", "dir", "files": {name: [size, mtime, sha or None]}} for one input."""
    if not path.exists():
        return {"exists": False, "dir": False, "files": {}}
    if path.is_file():
        return {"exists": True, "dir": False, "files": {path.name: _file(path)}}
    files: dict[str, list[Any]] = {}
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError:
        entries = []
    for entry in entries[:MAX_FILES]:
        if entry.is_file():
            try:
                files[entry.name] = _file(Path(entry.path))
            except OSError:
                continue
    return {"exists": True, "dir": True, "files": files}


def check_local(s: Settings, items: list[tuple[str, Path, bool]]) -> tuple[list[Finding], dict[str, Any]]:
    """Check 5 on this node: what must exist does; a model directory holds a config.json."""
    out: list[Finding] = []
    facts: dict[str, Any] = {}
    for key, path, must in items:
        info = describe(path)
        info["path"] = str(path)
        facts[key] = info
        if not info["exists"]:
            if must:
                out.append(Finding(s.host, key, f"{path} not found here", SHARED_FIX))
                info["bad"] = True
        elif key == "train.model_name_or_path" and info["dir"] and "config.json" not in info["files"]:
            what = "is empty" if not info["files"] else "has no config.json"
            out.append(Finding(s.host, key, f"{path} {what} here", SHARED_FIX))
            info["bad"] = True
    return out, facts


def compare(master: str, mine: dict[str, Any], host: str, theirs: dict[str, Any]) -> list[Finding]:
    """Check 5 across nodes: `host` sees an input differently from the master (named in the line)."""
    out: list[Finding] = []
    for key, ref in mine.items():
        other = theirs.get(key)
        if other is None or ref.get("bad") or other.get("bad"):
            continue  # a node that misses the file already said so itself
        if ref["exists"] != other["exists"]:
            where, missing = (master, host) if ref["exists"] else (host, master)
            out.append(Finding(missing, key, f"{ref['path']} exists on {where} but not here", SHARED_FIX))
            continue
        diffs, warns = _file_diffs(ref["files"], other["files"])
        if diffs:
            out.append(
                Finding(
                    host,
                    key,
                    f"{ref['path']} differs from {master}'s: " + ", ".join(diffs[:4]),
                    "use one copy on a shared filesystem, or sync it (rsync -a) to every node",
                )
            )
        elif warns:
            out.append(
                Finding(
                    host,
                    key,
                    f"{ref['path']}: same sizes as on {master} but other modification times: "
                    + ", ".join(warns[:4]),
                    "check the copies are the same (rsync -a keeps times)",
                    level="warning",
                )
            )
    return out


def _file_diffs(ref: dict[str, list[Any]], other: dict[str, list[Any]]) -> tuple[list[str], list[str]]:
    diffs: list[str] = []
    warns: list[str] = []
    for name in sorted(set(ref) | set(other)):
        a, b = ref.get(name), other.get(name)
        if a is None or b is None:
            diffs.append(f"{name} {'missing' if b is None else 'extra'} here")
        elif a[0] != b[0]:
            diffs.append(f"{name} size {b[0]} vs {a[0]}")
        elif a[2] is not None and a[2] != b[2]:
            diffs.append(f"{name} content (sha256 {b[2]} vs {a[2]})")
        elif a[2] is None and a[1] != b[1]:
            warns.append(f"{name}")
    return diffs, warns


def model_bytes(facts: dict[str, Any]) -> int:
    """Size of the model's weight files as this node sees them (0 when unknown, e.g. a hub id)."""
    info = facts.get("train.model_name_or_path") or {}
    return sum(v[0] for k, v in info.get("files", {}).items() if k.endswith(WEIGHTS))


def output_dir(cfg: Any, workdir: str) -> Path:
    return (Path(workdir) / Path(str(cfg.output_dir)).expanduser()).absolute()


def needs_shared_output(cfg: Any) -> str | None:
    """Why this run needs output_dir shared between nodes, or None."""
    if getattr(cfg, "save_strategy", "no") != "no" and not getattr(cfg, "save_only_model", False):
        return "checkpoints are saved and resumed from it"
    if getattr(cfg, "save_strategy", "no") != "no":
        return "checkpoints are saved in it"
    if getattr(cfg, "load_best_model_at_end", False):
        return "load_best_model_at_end reads checkpoints on every node"
    if getattr(cfg, "resume_from_checkpoint", None):
        return "resume_from_checkpoint reads it on every node"
    if str(getattr(cfg, "strategy", "")).startswith("deepspeed-z3"):
        return "ZeRO-3 saves gather shards from every node into it"
    return None


def write_probe(out_dir: Path, host: str, nonce: str) -> tuple[str | None, str | None]:
    """Check 6, the writing side: a file only this node makes. (name, None) or (None, error)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        name = f".xgen-preflight-{host}-{nonce}"
        (out_dir / name).write_text(f"{host} {nonce}\n")
        return name, None
    except OSError as err:
        return None, err.strerror or str(err)


def remove_probe(out_dir: Path, name: str | None) -> None:
    if name:
        try:
            (out_dir / name).unlink()
        except OSError:
            pass
