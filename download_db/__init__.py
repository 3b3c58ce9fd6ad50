"""GBIF multimedia bulk image downloader, tracked in SQLite."""

__version__ = "0.1.0"
