"""The runtime's log line: `xgen-runtime: …` on stdout, said once, credential values masked.

    say("saved model to out/")             # rank 0 only (the default)
    note("tokenized datasets saved to …")  # rank 0: `xgen-runtime: note: …`
    say(line, by="node")                   # each node's first rank (LOCAL_RANK 0): one line per node
    say(line, by="caller")                 # whoever calls (the caller already chose the rank)

The prefix is what cluster logs are grepped for and what `xgen check` reads back (`xgen-runtime: note: `,
`xgen-runtime: check: `). The rank comes from the launcher's environment (RANK, LOCAL_RANK; unset: 0), so a
plain `python -m runtime` and any command outside a launch say everything.
"""

from __future__ import annotations

import os
from typing import Literal

from runtime.contract.secrets import redact

PREFIX = "xgen-runtime: "

Speaker = Literal["rank0", "node", "caller"]
_RANK_VAR: dict[str, str] = {"rank0": "RANK", "node": "LOCAL_RANK"}


def say(line: str, *, by: Speaker = "rank0") -> None:
    """One line with the prefix, flushed at once; only from rank 0 (or the node's first rank, or anyone)."""
    var = _RANK_VAR.get(by)
    if var is not None and os.environ.get(var, "0") != "0":
        return
    print(redact(PREFIX + line), flush=True)


def note(message: str, *, by: Speaker = "rank0") -> None:
    """`xgen-runtime: note: …`: something the run decided or ignored that the user should know."""
    say(f"note: {message}", by=by)
