"""The one error type: the CLI turns it into `xgen: error: <key>: <message>` and exit status 2."""

from __future__ import annotations


class XgenError(Exception):
    """A bad config value or argument; `key` is the dotted key path (or the option) to fix."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message

    def line(self) -> str:
        """The single stderr line: newlines folded so the report stays one line."""
        return " ".join(f"xgen: error: {self.key}: {self.message}".split("\n"))
