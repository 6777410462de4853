"""The golden files' line counts, printed after every run that includes tests/xgen/test_golden.py (no -s
needed), so a script that grows shows up in the test output, not only in the diff."""

from __future__ import annotations

from pathlib import Path

GOLDEN = Path(__file__).resolve().parent / "golden"


def pytest_terminal_summary(terminalreporter) -> None:
    reports = [r for reports in terminalreporter.stats.values() for r in reports if hasattr(r, "nodeid")]
    if not any("test_golden.py" in report.nodeid for report in reports):
        return
    terminalreporter.section("golden script line counts")
    scripts = sorted(p for p in GOLDEN.iterdir() if p.suffix == ".sh")
    width = max(len(p.name) for p in scripts)
    for path in scripts:
        terminalreporter.write_line(f"{path.name:<{width}}  {len(path.read_text().splitlines()):4d}")
    total = sum(len(p.read_text().splitlines()) for p in scripts)
    terminalreporter.write_line(f"{'total':<{width}}  {total:4d}")
