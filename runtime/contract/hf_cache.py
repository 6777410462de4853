"""A file of a hub repo in the local Hugging Face cache, torch-free (xgen and the runtime's checks)."""

from __future__ import annotations


def cached_file(repo_id: str, name: str) -> tuple[str | None, str] | None:
    """(the cached file's path, or None when it is not cached or repo_id is no valid hub id; the cache
    folder), or None when huggingface_hub is not importable."""
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, name)
    except ValueError:  # not even a valid hub id (HFValidationError)
        found = None
    return (found if isinstance(found, str) else None), str(constants.HF_HUB_CACHE)
