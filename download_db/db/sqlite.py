"""The sqlite3 module we use: the stdlib one when its SQLite is new enough, else pysqlite3."""

from __future__ import annotations

import sqlite3

MIN_VERSION = (3, 35, 0)  # RETURNING (claims); UPDATE ... FROM needs 3.33

if sqlite3.sqlite_version_info < MIN_VERSION:  # pragma: no cover - old cluster Pythons
    try:
        import pysqlite3.dbapi2 as sqlite3  # type: ignore[import-not-found, no-redef]
    except ImportError:
        raise ImportError(
            f"this Python's SQLite is {sqlite3.sqlite_version}; version 3.35 or newer is needed. "
            "Use a newer Python (e.g. from conda) or: pip install pysqlite3-binary") from None

__all__ = ["sqlite3"]
