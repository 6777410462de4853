"""YAML with duplicate keys refused.

Why our own loader: PyYAML keeps the last of two equal keys without a word, so a config that sets
`learning_rate` twice trains with whichever came last, and a key pasted into the wrong section twice goes
unseen. This is PyYAML's SafeLoader with one check added to every mapping (YAML 1.2 says keys are
unique; PyYAML does not enforce it). Merge keys (`<<: *base`) may still be overridden, as YAML intends.
"""

from __future__ import annotations

from typing import Any

import yaml


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping names a key twice; `problem_mark` is the second one (0-based line)."""


class _StrictLoader(yaml.SafeLoader):
    pass


def _unique_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    first_line: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            seen = first_line.get(key)
        except TypeError:  # an unhashable key: construct_mapping says so itself
            continue
        if seen is not None:
            raise DuplicateKeyError(
                None,
                None,
                f"key '{key}' appears twice (first on line {seen}); keep one",
                key_node.start_mark,
            )
        first_line[key] = key_node.start_mark.line + 1
    loader.flatten_mapping(node)
    return dict(loader.construct_pairs(node, deep=True))


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load(text: str) -> Any:
    """yaml.safe_load, but a mapping that names a key twice raises DuplicateKeyError."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 -- a SafeLoader subclass
