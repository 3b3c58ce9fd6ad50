#!/usr/bin/env python3
"""Build the SQLite tracking database from a GBIF multimedia.txt (see --help)."""

from download_db.cli.main import init_main

if __name__ == "__main__":
    raise SystemExit(init_main())
