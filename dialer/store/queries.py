"""Named queries, loaded once from ``queries.sql`` (procrastinate's pattern).

Each query starts with a ``-- name: <identifier>`` line; Python refers to it by name. The
file is package data read through ``importlib.resources``, so a wheel install has it too.
"""

from __future__ import annotations

import re
from importlib.resources import files
from importlib.resources.abc import Traversable

_PATH: Traversable = files("dialer.store").joinpath("queries.sql")
_HEADER = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.M)


def load(path: Traversable = _PATH) -> dict[str, str]:
    text = path.read_text(encoding="utf-8")
    parts = _HEADER.split(text)
    out: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in out:
            raise RuntimeError(f"query {name} defined twice in {path.name}")
        out[name] = body.strip().rstrip(";")
    if not out:
        raise RuntimeError(f"no named query in {path}: the package is incomplete")
    return out


class _Queries:
    def __init__(self) -> None:
        self._q = load()

    def __getattr__(self, name: str) -> str:
        try:
            return self._q[name]
        except KeyError:
            raise AttributeError(f"no query named {name!r} in queries.sql") from None

    def names(self) -> list[str]:
        return sorted(self._q)


Q = _Queries()
