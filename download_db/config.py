"""Validated, immutable run configurations built by the CLI (and by tests directly)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError
from .finalize import DEFAULT_MAX_ATTEMPTS

DEFAULT_DB = "download_status.db"
DEFAULT_INSTALL = "images"

MODE_BUILD = "build"
MODE_RESET = "reset"
MODE_LEGACY = "legacy-only"
MODE_FINALIZE = "finalize-only"


@dataclass(frozen=True)
class InitConfig:
    """init_download_db.py: build / reset / legacy-only / finalize-only."""

    db: Path = Path(DEFAULT_DB)
    multimedia: Path | None = None
    install_path: Path = Path(DEFAULT_INSTALL)
    processed_file: Path | None = None
    failed_file: Path | None = None
    mode: str = MODE_BUILD
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    chunk_mb: int = 8
    workers: int = 2
    progress_every: float = 10.0
    bar: bool | None = None  # None: a bar only when stdout is a terminal

    def validate(self) -> InitConfig:
        if self.mode in (MODE_BUILD, MODE_RESET) and self.multimedia is None:
            raise UsageError("--multimedia PATH is required to build the database")
        if self.mode == MODE_LEGACY and self.processed_file is None:
            raise UsageError("--legacy-only needs --processed-file PATH")
        if self.max_attempts < 1:
            raise UsageError("--max-attempts must be at least 1")
        if not 1 <= self.chunk_mb <= 1024:
            raise UsageError("--chunk-mb must be between 1 and 1024")
        if not 1 <= self.workers <= 64:
            raise UsageError("--workers must be between 1 and 64")
        if self.progress_every <= 0:
            raise UsageError("--progress-every must be positive")
        parent = self.db.resolve().parent
        if not parent.is_dir():
            raise UsageError(f"directory for --db does not exist: {parent}")
        return self
