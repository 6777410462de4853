"""Did-you-mean suggestions for unknown keys and choices."""

from __future__ import annotations

import difflib


def suggest(key: str, known: list[str]) -> str:
    """`; did you mean 'x'?` only when one known name is really close to `key` (a typo), else ''.

    A loose cutoff suggested `use_muon` -> `use_cpu` and `use_apollo` -> `use_rslora`, which send a
    user the wrong way; a typo keeps most letters and the first ones."""
    close = [c for c in difflib.get_close_matches(key, known, n=3, cutoff=0.8) if c[:2] == key[:2]]
    return f"; did you mean {close[0]!r}?" if close else ""
