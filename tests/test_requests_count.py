"""Requests per saved image: counted by the workers, kept in runs.counts, shown by the report."""

from __future__ import annotations

import json

from download_db.cli.main import main
from download_db.config import DownloadConfig
from download_db.download.stage import run_download
from tests.helpers import row, write_multimedia
from tests.imageserver import ImageServer


def test_the_report_shows_requests_per_saved_image(tmp_path, capsys):
    with ImageServer("127.0.0.19") as srv:
        urls = [srv.url("/manifest/v2/one.json"),  # manifest + one rendering: 2 requests
                srv.url("/img/two.jpg?w=64&h=64"), srv.url("/img/three.jpg?w=64&h=64")]
        mm = write_multimedia(tmp_path / "m.txt", [row(1001 + i, u) for i, u in enumerate(urls)])
        db = tmp_path / "d.db"
        assert main(["ingest", "--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
        counts = run_download(DownloadConfig(
            db=db, install_path=tmp_path / "images", threads=2, per_host_rate=0,
            lock_dir=tmp_path / "locks", bar=False, progress_every=1000, user_agent="tests",
            wait_for_retries=0))
        assert counts["requests"] == srv.stats()["requests"] == 4
    capsys.readouterr()
    assert main(["report", "--db", str(db), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["requests"] == {"requests": 4, "saved": 3}
    assert main(["report", "--db", str(db)]) == 0
    assert "requests: 4 for 3 saved images (1.33 per saved image" in capsys.readouterr().out
