"""The one error type: the CLI turns it into `xgen: error: <key>: <message>` and exit status 2."""

from __future__ import annotations


class XgenError(Exception):
    """A bad config value or argument; `key` is the dotted key path (or the option) to fix."""

    def __init__(self, key: str, message: str, *, also: list[tuple[str, str]] | None = None) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message
        self.also = list(also or [])  # further (key, message) problems found in the same pass

    def line(self) -> str:
        """One stderr line per bad key: newlines inside a message folded so each stays one line."""
        problems = [(self.key, self.message), *self.also]
        return "\n".join(" ".join(f"xgen: error: {k}: {m}".split("\n")) for k, m in problems)
