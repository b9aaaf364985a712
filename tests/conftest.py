"""Shared fixtures: the repository's specs and a helper that writes spec text to a file."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"
BLOG = SPECS / "blog.yaml"


@pytest.fixture
def blog_path() -> Path:
    """The seed example, ``specs/blog.yaml``."""
    return BLOG


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[..., Path]:
    """Write dedented spec text to ``tmp_path/name`` and return the path."""

    def write(text: str, name: str = "x.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return write


@pytest.fixture
def fresh_types() -> Iterator[list[str]]:
    """Collect names of node types a test registers; they are unregistered afterwards."""
    from chainspec.types.registry import unregister_type

    names: list[str] = []
    yield names
    for name in names:
        unregister_type(name)
