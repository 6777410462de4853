"""The one error type: the CLI turns it into `xgen: error: <key>: <message>` and exit status 2."""

from __future__ import annotations

from typing import Any


class XgenError(Exception):
    """A bad config value or argument; `key` is the dotted key path (or the option) to fix."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message

    def line(self) -> str:
        """The single stderr line: newlines folded so the report stays one line."""
        return " ".join(f"xgen: error: {self.key}: {self.message}".split("\n"))

    @classmethod
    def from_config_error(cls, err: Any) -> XgenError:
        """The runtime's ConfigError as ours; one that lists several problems (`.errors`) keeps them all."""
        problems = list(getattr(err, "errors", None) or [])
        if not problems:
            return cls(err.key, err.message)
        return XgenErrors([_one(problem) for problem in problems])


def _one(problem: Any) -> XgenError:
    """One listed problem: a ConfigError, or its `key: message` line."""
    if hasattr(problem, "key") and hasattr(problem, "message"):
        return XgenError(problem.key, problem.message)
    key, _, message = str(problem).partition(": ")
    return XgenError(key, message)


class XgenErrors(XgenError):
    """Several bad keys found at once: one `xgen: error: <key>: <message>` line each."""

    def __init__(self, errors: list[XgenError]) -> None:
        super().__init__(errors[0].key, errors[0].message)
        self.errors = errors

    def line(self) -> str:
        return "\n".join(error.line() for error in self.errors)
