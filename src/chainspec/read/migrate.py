"""Upgrading specs written for older format versions to the current one.

Each entry of ``MIGRATIONS`` turns a document of version ``v`` into one of
version ``v + 1``; ``migrate`` applies them in turn. Version 1 is the first
format, so the table is empty today: it is where version 2 will hook in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .format import FORMAT_VERSION

MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def migrate(data: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Bring ``data`` up to ``FORMAT_VERSION``; return it and an error message, if any.

    Example:
        >>> migrate({"chainspec": 1, "chains": {}})[1] is None
        True
        >>> migrate({"chainspec": 9})[1]
        'format version 9 is newer than this chainspec reads (1); upgrade chainspec'
    """
    version = data.get("chainspec")
    if not isinstance(version, int) or isinstance(version, bool):
        return data, None  # the model reports the missing or mistyped version
    if version > FORMAT_VERSION:
        return data, (
            f"format version {version} is newer than this chainspec reads ({FORMAT_VERSION}); upgrade chainspec"
        )
    while version < FORMAT_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            return data, f"format version {version} is not supported; the oldest readable version is 1"
        data = step(data)
        version += 1
        data["chainspec"] = version
    return data, None
