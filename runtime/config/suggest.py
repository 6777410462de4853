"""Did-you-mean suggestions for unknown keys and choices."""

from __future__ import annotations

import difflib


def suggest(key: str, known: list[str]) -> str:
    """`; did you mean 'x'?` when one known name is close to `key`, else ''."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
