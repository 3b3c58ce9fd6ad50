"""One fetch per URL: images of several gbifIDs with the same URL share one request and file."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from download_db.cli.main import main
from download_db.files import store
from tests.helpers import q, row, write_multimedia
from tests.imageserver import ImageServer


@pytest.fixture(scope="module")
def server():
    with ImageServer("127.0.0.24") as s:
        yield s


@pytest.mark.parametrize("delay", ["0", "0.5"])
def test_a_url_shared_by_three_gbifids_is_requested_once(tmp_path: Path, server,
                                                         delay: str) -> None:
    shared = f"/slow/sheet{delay}.jpg"
    urls = [server.url(f"{shared}?delay={delay}")] * 3 + \
        [server.url(f"/img/other{delay}-{i}.jpg") for i in range(5)]
    mm = write_multimedia(tmp_path / "m.txt", [row(3_500_000_000 + i, u)
                                               for i, u in enumerate(urls)])
    db = tmp_path / "d.db"
    assert main(["ingest", "--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
    root = tmp_path / "images"
    # with a delay, the three are claimed together and two wait for the one in flight
    assert main(["download", "--db", str(db), "--install-path", str(root), "--threads", "8",
                 "--lock-dir", str(tmp_path / "locks"), "--per-host-rate", "0", "--no-bar",
                 "--contact", "tests@example.org"]) == 0
    assert server.stats()["by_path"][shared] == 1
    rows = q(db, "SELECT status, file_path, sha256 FROM images ORDER BY image_id")[:3]
    assert {r[0] for r in rows} == {"success"} and len({r[2] for r in rows}) == 1
    stats = [os.stat(root / r[1]) for r in rows]
    assert len({r[1] for r in rows}) == 3  # each gbifID its own <gbifID>-NN file
    assert len({s.st_ino for s in stats}) == 1 and stats[0].st_nlink == 3  # hard links
    counts = [json.loads(c) for (c,) in q(db, "SELECT counts FROM runs WHERE stage = "
                                              "'download'")]
    assert sum(c.get("requests_saved", 0) for c in counts) == 2
    assert main(["report", "--db", str(db), "--output-dir", str(tmp_path)]) == 0
    text = next(tmp_path.glob("summary_*.txt")).read_text()
    assert "requests saved (one fetch per shared URL): 2" in text


def test_link_falls_back_to_a_copy_without_hard_links(tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "src.jpg"
    src.write_bytes(b"\xff\xd8 the bytes \xff\xd9")

    def no_links(a, b):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    tmp = store.link_temp(tmp_path / "root", 3_500_000_123, 0, src)
    assert Path(tmp).read_bytes() == src.read_bytes()
    assert os.stat(tmp).st_ino != os.stat(src).st_ino
    with pytest.raises(FileNotFoundError):
        store.link_temp(tmp_path / "root", 3_500_000_124, 0, tmp_path / "gone.jpg")
