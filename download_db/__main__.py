"""``python -m download_db`` is the ``gbif-download-db`` command."""

from .cli.main import init_main

raise SystemExit(init_main())
