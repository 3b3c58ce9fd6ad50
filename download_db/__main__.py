"""``python -m download_db`` runs init_download_db.py."""

from .cli import init_main

raise SystemExit(init_main())
