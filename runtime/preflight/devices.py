"""Check 9: the devices this node really has, against cluster.devices_per_node, and devices another
process already holds (stale processes are a frequent cause of NCCL/HCCL errors). Asks the vendor tools
(npu-smi, nvidia-smi) with a time limit; a node without them says so once."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from runtime.contract.devices import GPU, NPU, Seen, id_problem, parse_gpu_list, parse_npu_count, split_ids
from runtime.preflight.findings import Finding
from runtime.preflight.settings import Settings

__all__ = ["check_cann", "check_devices", "npu_node", "parse_gpu_list", "parse_npu_count"]

TOOL_TIMEOUT = 15.0
STALE_FIX = "stop the stale process (kill the pid) or keep that device out of CUDA/ASCEND_RT_VISIBLE_DEVICES"


def _run(argv: list[str]) -> tuple[str | None, str]:
    """(stdout, "") or (None, why): a tool that hangs or fails cannot stall the preflight."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT)
    except subprocess.TimeoutExpired:
        return None, f"`{' '.join(argv)}` did not answer within {TOOL_TIMEOUT:.0f} s"
    except OSError as err:
        return None, f"`{argv[0]}` cannot run: {err.strerror or err}"
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        return None, f"`{' '.join(argv)}` failed (exit {proc.returncode}): {last[0]}"
    return proc.stdout, ""


def visible(env_name: str) -> list[str] | None:
    value = os.environ.get(env_name)
    if value is None or value == "":
        return None
    return split_ids(value)


def _chosen(s: Settings, kind: tuple[str, str, str]) -> tuple[list[str] | None, str, str]:
    """(ids, who named them, the key a line is about) for the devices this node's ranks will use:
    DeepSpeed's --include over ssh (the launching node's exported list, the same for every host), else
    this node's visible-devices variable. ids None: nothing names them (all devices, in order)."""
    include = s.include_npu if kind[0] == NPU[0] else s.include_cuda
    if include is not None:
        ids = split_ids(include)
        if s.devices_per_node is not None:
            ids = ids[: s.devices_per_node]  # --include takes the first devices_per_node of the list
        return (ids or None), f"{include} (the launching node's {kind[2]}, given to every host)", "--include"
    ids = visible(kind[2])
    return ids, os.environ.get(kind[2], ""), kind[2]


def _id_findings(s: Settings, chosen: tuple[list[str] | None, str, str], seen: Seen) -> list[Finding]:
    ids, named_by, key = chosen
    problem = id_problem(ids, seen, named_by) if ids is not None else None
    return [Finding(s.host, key, problem)] if problem else []


def parse_npu_processes(text: str) -> list[tuple[str, str, int]]:
    """(npu id, pid, MB) rows of `npu-smi info`'s process table ("| NPU Chip | Process id | … |")."""
    rows: list[tuple[str, str, int]] = []
    in_table = False
    for line in text.splitlines():
        if "Process id" in line:
            in_table = True
            continue
        if in_table:
            m = re.match(r"\|\s*(\d+)\s+\d+\s*\|\s*(\d+)\s*\|\s*[^|]*\|\s*(\d+)", line)
            if m:
                rows.append((m.group(1), m.group(2), int(m.group(3))))
    return rows


def parse_gpu_apps(text: str) -> list[tuple[str, str, str]]:
    """(gpu uuid, pid, used MiB) per line of --query-compute-apps=gpu_uuid,pid,used_memory csv."""
    rows = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3 and parts[1].isdigit():
            rows.append((parts[0], parts[1], parts[2]))
    return rows


def _pinned_problem(s: Settings, kind: str, count: int, tool: str) -> list[Finding]:
    if s.devices_per_node is not None and count < s.devices_per_node:
        return [
            Finding(
                s.host,
                "cluster.devices_per_node",
                f"{s.devices_per_node} pinned but {count} {kind}s visible here ({tool})",
                f"bring the missing {kind}s back (driver, visible-devices list) or lower devices_per_node",
            )
        ]
    return []


def check_npu(s: Settings) -> tuple[list[Finding], bool]:
    """(findings, found NPUs)."""
    if shutil.which("npu-smi") is None:
        return [], False
    text, why = _run(["npu-smi", "info", "-l"])
    if text is None:
        return [Finding(s.host, "devices", why + "; NPUs not checked", level="note")], s.device == "npu"
    total = parse_npu_count(text) or 0
    if total == 0:
        return [], False
    chosen = _chosen(s, NPU)
    out = _id_findings(s, chosen, Seen(*NPU[:2], total))
    shown = chosen[0]
    ids = shown if shown is not None else [str(i) for i in range(total)]
    out += _pinned_problem(s, "NPU", len(ids), "npu-smi info -l" if shown is None else chosen[2])
    table, why = _run(["npu-smi", "info"])
    if table is None:
        out.append(Finding(s.host, "devices", why + "; NPU processes not checked", level="note"))
        return out, True
    for npu, pid, mb in parse_npu_processes(table):
        if npu in ids:
            out.append(Finding(s.host, "devices", f"NPU {npu} is busy: pid {pid} holds {mb} MB", STALE_FIX))
    return out, True


def check_gpu(s: Settings) -> list[Finding]:
    if shutil.which("nvidia-smi") is None:
        if s.device == "cuda":
            return [Finding(s.host, "devices", "nvidia-smi not found here; GPUs not checked", level="note")]
        return []
    text, why = _run(["nvidia-smi", "-L"])
    if text is None:
        return [Finding(s.host, "devices", why + "; GPUs not checked", level="note")]
    gpus = parse_gpu_list(text)
    if not gpus:
        return []
    picked = _chosen(s, GPU)
    out = _id_findings(s, picked, Seen(*GPU[:2], len(gpus), tuple(u for _, u in gpus)))
    shown = picked[0]
    if shown is None:
        chosen = gpus
    else:  # indexes or UUIDs
        chosen = [g for g in gpus if g[0] in shown or g[1] in shown]
    out += _pinned_problem(s, "GPU", len(chosen), "nvidia-smi -L" if shown is None else picked[2])
    apps, why = _run(
        ["nvidia-smi", "--query-compute-apps=gpu_uuid,pid,used_memory", "--format=csv,noheader,nounits"]
    )
    if apps is None:
        out.append(Finding(s.host, "devices", why + "; GPU processes not checked", level="note"))
        return out
    by_uuid = {uuid: index for index, uuid in chosen}
    for uuid, pid, mib in parse_gpu_apps(apps):
        if uuid in by_uuid:
            out.append(
                Finding(
                    s.host, "devices", f"GPU {by_uuid[uuid]} is busy: pid {pid} holds {mib} MiB", STALE_FIX
                )
            )
    return out


# --- CANN: the Ascend toolkit's environment ---
CANN_DEFAULT = "/usr/local/Ascend/ascend-toolkit"
CANN_ENV = "XGEN_CANN_SET_ENV"  # the script's xgen_cann_env: the set_env.sh it sourced, "" when none
DAVINCI_MANAGER = "/dev/davinci_manager"  # every node with Ascend NPUs (and its containers) has it


def npu_node(s: Settings) -> bool:
    """This node has (or is pinned to) Ascend NPUs: device npu, or npu-smi or the NPU driver's device."""
    if s.device != "auto":
        return s.device == "npu"
    return shutil.which("npu-smi") is not None or os.path.exists(DAVINCI_MANAGER)


def check_cann(s: Settings) -> list[Finding]:
    """A node with NPUs where the script found no CANN set_env.sh to source: one note, not silence (the
    device and port checks then run without what it puts on the paths, and so would HCCL)."""
    if os.environ.get(CANN_ENV) != "" or not npu_node(s):  # unset: not started by a generated script
        return []
    path = f"{os.environ.get('ASCEND_TOOLKIT_HOME') or CANN_DEFAULT}/set_env.sh"
    return [
        Finding(
            s.host,
            "CANN",
            f"no {path} here, so it was not sourced: npu-smi, HCCL and the TBE modules it puts on the paths "
            "may be missing",
            "install the CANN toolkit there, or export ASCEND_TOOLKIT_HOME to its folder where the job "
            "starts",
            level="note",
        )
    ]


def check_devices(s: Settings) -> list[Finding]:
    if s.device == "cpu":
        return []
    out: list[Finding] = []
    if s.device in ("auto", "npu"):
        found, has_npu = check_npu(s)
        out += found
        if has_npu or s.device == "npu":
            if s.device == "npu" and not has_npu and not found:
                out.append(
                    Finding(s.host, "devices", "npu-smi not found here; NPUs not checked", level="note")
                )
            return out
    if s.device in ("auto", "cuda"):
        out += check_gpu(s)
    if s.device == "auto" and not shutil.which("npu-smi") and not shutil.which("nvidia-smi"):
        out.append(
            Finding(
                s.host, "devices", "no npu-smi or nvidia-smi here; device checks skipped (CPU)", level="note"
            )
        )
    return out
