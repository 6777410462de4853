"""One finding = one line in the job log: an error stops the job, a warning or note does not."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Level = Literal["error", "warning", "note"]


@dataclass(frozen=True)
class Finding:
    host: str  # the node the line is about (where the fix has to happen)
    what: str  # the config key or resource, e.g. cluster.nic, /dev/shm, versions
    wrong: str  # what is wrong, in a few words, with the values seen
    fix: str = ""  # what to do about it
    level: Level = "error"

    def line(self) -> str:
        label = "" if self.level == "error" else f"{self.level}: "
        text = f"xgen: preflight: {self.host}: {self.what}: {label}{self.wrong}"
        return f"{text}; {self.fix}" if self.fix else text

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Finding:
        return cls(**{k: str(data.get(k, "")) for k in ("host", "what", "wrong", "fix")}, level=data["level"])


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == "error"]
