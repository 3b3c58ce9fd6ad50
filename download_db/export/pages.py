"""Pages of the manifest query read from SQLite straight into Arrow (ADBC), no Python rows."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from ..db.connection import readonly_uri
from ..db.sqlite import sqlite3

# Rows the driver reads before it fixes a column's Arrow type, and rows per batch: a whole
# page, so the type of a column is decided on all its rows (a page whose first rows are
# NULL in a text column would otherwise be typed int64 and fail on the first string).
_BATCH_ROWS_OPTION = "adbc.sqlite.query.batch_rows"
BUSY_TIMEOUT_MS = 30_000


def database_path(conn: sqlite3.Connection) -> Path:
    """The file behind an open connection (its main database)."""
    for _seq, name, file in conn.execute("PRAGMA database_list"):
        if name == "main" and file:
            return Path(file)
    raise ValueError("the connection has no database file")


class PageReader:
    """Runs one keyset-paged query; each page comes back as an Arrow table of ``types``.

    The sqlite3 module builds a Python tuple per row, and turning those into Arrow costs as
    much again (bench/export.py); ADBC's SQLite driver fills Arrow buffers in C. It opens
    the database read-only and with query_only, as open_readonly does.
    """

    def __init__(self, path: Path, sql: str, types: dict[str, pa.DataType],
                 page_rows: int) -> None:
        # imported here: it loads pyarrow.dataset, half a second no other command needs
        import adbc_driver_sqlite.dbapi as adbc

        self.sql, self.types, self.page_rows = sql, types, page_rows
        self.conn = adbc.connect(readonly_uri(path))
        self.cur = self.conn.cursor()
        for pragma in (f"busy_timeout = {BUSY_TIMEOUT_MS}", "query_only = ON"):
            self.cur.execute(f"PRAGMA {pragma}")
            self.cur.fetchall()

    def page(self, *params: object) -> pa.Table:
        """The page after ``params`` (the keyset's last key), columns named and typed."""
        self.cur.adbc_statement.set_options(**{_BATCH_ROWS_OPTION: str(self.page_rows)})
        self.cur.execute(self.sql, params)
        got = self.cur.fetch_arrow_table()
        cols = [got.column(k).cast(t) for k, t in enumerate(self.types.values())]
        return pa.table(cols, names=list(self.types))

    def close(self) -> None:
        self.cur.close()
        self.conn.close()

    def __enter__(self) -> PageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
