"""Shared fixtures (plain helpers and constants live in tests/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def build(tmp_path):
    """build(multimedia, *extra_args) -> (exit_code, db_path)."""
    from download_db.cli.main import init_main

    def _build(multimedia: Path, *extra: str, db: Path | None = None) -> tuple[int, Path]:
        db = db or tmp_path / "download_status.db"
        code = init_main(["--db", str(db), "--multimedia", str(multimedia), "--no-bar", *extra])
        return code, db

    return _build


@pytest.fixture(autouse=True)
def _no_real_slack(monkeypatch):
    """A developer's .env may hold a real webhook: tests never post to it (python-dotenv
    never overrides a variable that is already set, even to empty)."""
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "")
