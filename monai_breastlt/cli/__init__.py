"""The command line; nothing in the library imports it."""

from __future__ import annotations

from pathlib import Path


def json_in(path: str, name: str) -> Path:
    """``path`` itself, or ``path/name`` when ``path`` is a folder: commands take a JSON file or the folder holding it."""
    p = Path(path)
    return p / name if p.is_dir() else p
