"""``python -m download_db`` is the ``gbif-download-db`` command."""

from .cli.main import main

raise SystemExit(main())
