"""Check 4: the same Python and the same versions of the packages that have to agree across nodes.
Read from package metadata, so nothing is imported (torch takes seconds to import)."""

from __future__ import annotations

import platform
from importlib import metadata

from runtime.preflight.findings import Finding

PACKAGES = ("torch", "transformers", "peft", "deepspeed", "accelerate", "xgen")


def collect() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def compare(master: str, mine: dict[str, str], host: str, theirs: dict[str, str]) -> list[Finding]:
    diffs = [
        f"{name} {theirs.get(name, '?')} here, {version} on {master}"
        for name, version in mine.items()
        if theirs.get(name, version) != version
    ]
    if not diffs:
        return []
    return [
        Finding(
            host,
            "versions",
            ", ".join(diffs),
            "install the same versions on every node (one shared environment, or the same lock file)",
        )
    ]
