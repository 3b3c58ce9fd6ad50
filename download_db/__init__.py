"""GBIF multimedia bulk image downloader, tracked in SQLite."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import os

    import pandas

__version__ = "0.1.0"
__all__ = ["__version__", "read_manifest"]


def read_manifest(db: str | os.PathLike, **filters: Any) -> pandas.DataFrame:
    """The export manifest of ``db`` as a pandas DataFrame (same columns as
    ``gbif-download-db export``). Filters: ``license="CC0,CC-BY"`` (or a list),
    ``host="a.org"`` (or a list), ``since="2026-01-01"``, ``exclude_duplicates=True``,
    ``exclude_placeholders=True``."""
    from pathlib import Path

    # imported here: the downloader's entry points should not pay for pandas
    from .export.manifest import make_filters
    from .export.stage import read_table

    return read_table(Path(db), make_filters(**filters)).to_pandas()
