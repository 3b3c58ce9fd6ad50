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


PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY",
                   "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "REQUESTS_CA_BUNDLE",
                   "CURL_CA_BUNDLE")


@pytest.fixture(autouse=True)
def _no_proxy_from_the_machine(monkeypatch):
    """The downloader honours the proxy variables: a developer's or a cluster's own must
    not send the loopback tests through a real proxy (tests that want one set it)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
