#!/usr/bin/env python3
"""Download every distinct image that still has work into the image root (see --help)."""

from download_db.cli.main import download_main

if __name__ == "__main__":
    raise SystemExit(download_main())
