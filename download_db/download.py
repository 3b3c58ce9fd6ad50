"""``python -m download_db.download`` runs image_install_db.py (used by --processes)."""

from .cli import download_main

if __name__ == "__main__":
    raise SystemExit(download_main())
