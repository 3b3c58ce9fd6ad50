"""The HTML report in a real headless Chromium: it renders, offline, and is not blank."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from download_db.cli.main import status_main
from download_db.db import connection, runs
from tests.helpers import generate, mutate_results

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium "
    "chromium-driver; .ci/run installs it)")


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    # A fresh profile per run, no sandbox (containers), and no network: the page
    # must be complete on its own.
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--proxy-server=127.0.0.1:9",
         "--window-size=1200,1600", *args],
        capture_output=True, text=True, timeout=120)


def test_html_report_renders_in_chromium(build, tmp_path, capsys) -> None:
    code, db = build(generate(tmp_path / "m.txt", 300, seed=5, hosts=5))
    assert code == 0
    mutate_results(db, 8, n=500, now=time.time())
    conn = connection.connect(db)  # a failed download, and the finalize it held up
    run_id = runs.start_run(conn, "download")
    runs.finish_run(conn, run_id, runs.FAILED, None, "StorageError: /data: disk full")
    runs.record_not_run(conn, "finalize", f"download run {run_id} failed: StorageError")
    conn.close()
    page = tmp_path / "status.html"
    assert status_main(["--db", str(db), "--html", str(page)]) == 0

    dom = _chromium(tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "GBIF image download status" in dom.stdout
    assert dom.stdout.count("<svg") >= 4 and "<script>" not in dom.stdout
    # the pipeline first: the verdict, each stage's last run, the stage not run
    first = dom.stdout.index("<h2>Progress")
    for words in ("NOT RUN: finalize", 'id="stages"', "StorageError: /data: disk full",
                  "Not run because a stage they depend on failed: finalize"):
        assert -1 < dom.stdout.index(words) < first, words

    shot = tmp_path / "shot.png"
    res = _chromium(tmp_path, f"--screenshot={shot}", page.as_uri())
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 1600)
    # Not blank: many distinct colours (bars, text) and real contrast.
    assert len(img.getcolors(maxcolors=1 << 20) or []) > 50
    assert max(ImageStat.Stat(img).stddev) > 20
    # The green of the success bars is on the page.
    assert any(abs(r - 0x2E) < 8 and abs(g - 0x7D) < 8 and abs(b - 0x32) < 8
               for _n, (r, g, b) in img.getcolors(maxcolors=1 << 20))
