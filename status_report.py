#!/usr/bin/env python3
"""Where the download stands, read-only: text, --json or --html; --check for integrity."""

from download_db.cli.main import status_main

if __name__ == "__main__":
    raise SystemExit(status_main())
