"""Jinja templates shipped as the package `xgen.templates` (mapped from the top-level templates/ dir)."""
