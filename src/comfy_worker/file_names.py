"""The one rule for a file name a job gives (an input image, a model): a plain name inside its folder."""

from __future__ import annotations

from typing import Any

from .errors import InvalidInput


def check_file_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput(f"{where}: 'name' must be a non-empty file name")
    if "/" in name or "\\" in name or "\0" in name or name in (".", "..") or len(name) > 255:
        raise InvalidInput(
            f"{where}: 'name' {name!r} must be a plain file name (no folders, no '..')"
        )
    return name
