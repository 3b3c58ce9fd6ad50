"""``python -m download_db`` is the ``gbif-download-db`` command."""

from .cli.main import main

if __name__ == "__main__":  # a spawned worker (convert) imports this module again
    raise SystemExit(main())
