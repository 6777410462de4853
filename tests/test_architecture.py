"""The import rules of docs/architecture.md hold: every import statement in the tree (top-level or inside a
function) is read with `ast`, so a forbidden import fails here before it can slow the CLI or tie rooms."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) for every import in one file; `from a import b` gives `a.b`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def files(*rooms: str) -> list[Path]:
    return sorted(p for room in rooms for p in (REPO / room).rglob("*.py"))


def violations(rooms: tuple[str, ...], allowed: tuple[str, ...], first_party: tuple[str, ...]) -> list[str]:
    """Imports of a first-party package (`first_party`) from `rooms` that are not under an allowed prefix."""
    bad = []
    for path in files(*rooms):
        for line, module in imports_of(path):
            top = module.split(".")[0]
            if top in first_party and not any(module == a or module.startswith(a + ".") for a in allowed):
                bad.append(f"{path.relative_to(REPO)}:{line}: {module}")
    return bad


def test_xgen_imports_only_config_and_contract_from_the_runtime() -> None:
    assert violations(("xgen",), ("xgen", "runtime.config", "runtime.contract"), ("runtime", "bench")) == []


def test_contract_imports_only_the_standard_library_config_and_itself() -> None:
    allowed = ("runtime.contract", "runtime.config")
    assert violations(("runtime/contract",), allowed, ("runtime", "xgen")) == []
    third_party = {"torch", "transformers", "peft", "datasets", "deepspeed", "accelerate", "numpy"}
    heavy = [
        f"{p.relative_to(REPO)}:{line}: {m}"
        for p in files("runtime/contract")
        for line, m in imports_of(p)
        if m.split(".")[0] in third_party
    ]
    assert heavy == []


def test_config_imports_only_itself_and_contract() -> None:
    assert violations(("runtime/config",), ("runtime.config", "runtime.contract"), ("runtime", "xgen")) == []


def test_the_two_perf_plans_never_import_each_other() -> None:
    npu = {m for _, m in imports_of(REPO / "runtime/perf/npu.py")}
    assert not any(m.startswith("runtime.perf.plan") for m in npu)
    # plan.py may name the NPU plan only lazily, inside resolve_perf, as `from runtime.perf import npu`
    top_level = {
        f"{n.module}.{a.name}"
        for n in ast.parse((REPO / "runtime/perf/plan.py").read_text()).body
        if isinstance(n, ast.ImportFrom) and n.module
        for a in n.names
    }
    assert "runtime.perf.npu" not in top_level


def test_runtime_never_imports_xgen_and_nothing_imports_bench() -> None:
    assert violations(("runtime",), ("runtime",), ("xgen",)) == []
    rooms = ("xgen", "runtime", "scripts", "tests")
    users = [
        f"{p.relative_to(REPO)}:{line}: {m}"
        for p in files(*rooms)
        for line, m in imports_of(p)
        if m.split(".")[0] == "bench"
    ]
    assert users == []


@pytest.mark.parametrize("module", ["xgen.cli", "runtime.config", "runtime.contract.zero"])
def test_torch_free_entry_points_load_no_forbidden_runtime_module(module: str) -> None:
    """What the imports above promise, checked in a fresh interpreter: no torch, and from the runtime
    only runtime.config and runtime.contract (plus the package itself)."""
    code = (
        f"import sys, {module}; "
        "bad = sorted(m for m in sys.modules if m == 'torch' or (m.startswith('runtime.') and "
        "not m.startswith(('runtime.config', 'runtime.contract')))); print(' '.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == ""


def test_a_forbidden_import_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker itself fails on a planted violation (so a pass above means something)."""
    room = tmp_path / "xgen"
    room.mkdir()
    (room / "bad.py").write_text("def f():\n    from runtime.fit.trainer import XgenTrainer\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert violations(("xgen",), ("xgen", "runtime.config", "runtime.contract"), ("runtime",)) == [
        "xgen/bad.py:2: runtime.fit.trainer.XgenTrainer"
    ]
