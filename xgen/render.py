"""The Jinja environment: templates from the xgen.templates package, strict undefined, quoting filters.

Every config value reaches a script through `q` (POSIX shell quoting). `#SBATCH` lines are read by
sbatch, not bash, so they get `sbatch_q` (sbatch's own double-quote/backslash syntax). Values inside
the accelerate YAML get `yaml_q` (JSON strings are valid YAML scalars).

A Slurm step runs shell functions on the nodes by shipping their text:
`bash -c "$(declare -f NAMES…); ENTRY"`.
Templates never list NAMES by hand: `{{ ship("xgen_node") }}` stands for ENTRY and every function it calls,
directly or not, computed from the function definitions of the rendered script itself (`shipped`).
"""

from __future__ import annotations

import json
import re
import shlex
from functools import cache
from importlib import resources
from typing import Any

import jinja2

_SBATCH_SAFE = re.compile(r"[A-Za-z0-9_%.:/@+=,-]+\Z")


def shell_quote(value: Any) -> str:
    """Quote one value as a single shell word; what bash reads back is the value, byte for byte."""
    return shlex.quote(str(value))


def sbatch_quote(value: Any) -> str:
    """Quote one value for an #SBATCH line (sbatch honours "…" with backslash escapes; # starts a comment)."""
    text = str(value)
    if _SBATCH_SAFE.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def yaml_quote(value: Any) -> str:
    """A YAML scalar for a config value (JSON is a subset of YAML: strings, numbers, booleans)."""
    return json.dumps(value, ensure_ascii=False)


# A function definition in a generated script: `xgen_name() {` at the start of a line, ending at the first
# line that is a lone `}` (how every template writes them).
_FUNCTION = re.compile(r"^(xgen_\w+)\(\) \{\n(.*?)^\}$", re.MULTILINE | re.DOTALL)
_NAME = re.compile(r"\bxgen_\w+")
_SHIP = re.compile(r"@@XGEN_SHIP:([\w ]+)@@")


def functions(text: str) -> dict[str, str]:
    """Every `xgen_*` function the script defines, name → body, in the order they are defined."""
    return {match[1]: match[2] for match in _FUNCTION.finditer(text)}


def shipped(text: str, entries: list[str]) -> list[str]:
    """The functions a node step that runs `entries` needs: the entries and every function they call,
    directly or through another, in definition order. A name the script does not define is an error here,
    at generation, rather than `command not found` on a node at run time."""
    defined = functions(text)
    missing = [name for name in entries if name not in defined]
    if missing:
        raise ValueError(f"a node step runs {', '.join(missing)}, which this script does not define")
    needed: set[str] = set()
    todo = list(entries)
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo += [called for called in _NAME.findall(defined[name]) if called in defined]
    return [name for name in defined if name in needed]


def _ship(*entries: str) -> str:
    return f"@@XGEN_SHIP:{' '.join(entries)}@@"


def _load(name: str) -> str:
    try:
        return resources.files("xgen.templates").joinpath(name).read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        raise jinja2.TemplateNotFound(name) from None


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_load),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
        # bash's ${#array[@]} contains "{#", Jinja's default comment opener; use one bash never writes.
        comment_start_string="<#--",
        comment_end_string="--#>",
    )
    env.filters["q"] = shell_quote
    env.filters["sbatch_q"] = sbatch_quote
    env.filters["yaml_q"] = yaml_quote
    env.globals["ship"] = _ship
    return env


# The embedded config (context key "config_text") must reach the script byte for byte, so it is put in
# after the blank-line squeeze, in place of this marker.
_VERBATIM = "@@XGEN_VERBATIM_CONFIG_TEXT@@"


def render(template: str, context: dict[str, Any]) -> str:
    """Render one template; squeeze blank-line runs so the output has no trailing junk."""
    verbatim = context.get("config_text")
    if verbatim is not None:
        context = {**context, "config_text": _VERBATIM}
    text = environment().get_template(template).render(**context)
    text = re.sub(r"\n{3,}", "\n\n", text)
    text = _SHIP.sub(lambda m: " ".join(shipped(text, m[1].split())), text)
    if verbatim is not None:
        text = text.replace(_VERBATIM, verbatim)
    return text.rstrip("\n") + "\n"
