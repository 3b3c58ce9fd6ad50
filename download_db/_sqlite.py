"""The sqlite3 module we use: a bundled modern SQLite when available, else the stdlib one."""

from __future__ import annotations

try:  # pysqlite3-binary bundles SQLite 3.51: RETURNING, UPDATE FROM and faster bulk
    # loads on any cluster Python, whatever system library it was linked with.
    import pysqlite3.dbapi2 as sqlite3  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - platforms without the wheel
    import sqlite3  # type: ignore[no-redef]

MIN_VERSION = (3, 35, 0)  # RETURNING

if sqlite3.sqlite_version_info < MIN_VERSION:  # pragma: no cover
    raise ImportError(
        f"SQLite {sqlite3.sqlite_version} is too old (need >= 3.35); "
        "pip install pysqlite3-binary")

__all__ = ["sqlite3"]
