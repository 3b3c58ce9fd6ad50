"""Placeholders: one picture a host serves for many URLs is flagged, its files removed, refused."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from download_db.cli.main import main
from download_db.files import images, phash
from download_db.identity import placeholders
from download_db.states import PLACEHOLDER_MAX_SHARED
from tests.helpers import q, row, write_multimedia
from tests.imageserver import ImageServer, image_bytes

N_PLACEHOLDER = PLACEHOLDER_MAX_SHARED + 5


@pytest.fixture(scope="module")
def server():
    with ImageServer("127.0.0.23") as s:
        yield s


def build(tmp_path: Path, urls: list[str]) -> Path:
    mm = write_multimedia(tmp_path / "m.txt", [row(3_400_000_000 + i, u)
                                               for i, u in enumerate(urls)])
    db = tmp_path / "d.db"
    assert main(["ingest", "--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
    return db


def download(tmp_path: Path, db: Path, *extra: str) -> int:
    return main(["download", "--db", str(db), "--install-path", str(tmp_path / "images"),
                 "--lock-dir", str(tmp_path / "locks"), "--per-host-rate", "0", "--no-bar",
                 "--contact", "tests@example.org", *extra])


def saved_sha(name: str) -> tuple[str, int]:
    """sha256 and pHash of the file the downloader saves for the server's /img/{name}.jpg."""
    out = images.convert(image_bytes(name))
    return hashlib.sha256(out.data).hexdigest(), out.phash


def test_one_picture_for_many_urls_is_flagged_removed_and_refused_later(
        tmp_path: Path, server) -> None:
    urls = ([server.url(f"/img/notavailable.jpg?specimen={i}") for i in range(N_PLACEHOLDER)]
            + [server.url(f"/img/sharedsheet.jpg?specimen={i}") for i in range(3)]
            + [server.url(f"/img/own{i}.jpg") for i in range(4)])
    db = build(tmp_path, urls)
    root = tmp_path / "images"
    assert download(tmp_path, db) == 0
    # found by the download itself, as the results came in (identity/live.py)
    assert q(db, "SELECT n_images FROM placeholders") == [(N_PLACEHOLDER,)]
    assert q(db, "SELECT count(*) FROM images WHERE error_type = 'placeholder'") == \
        [(N_PLACEHOLDER,)]
    assert main(["finalize", "--db", str(db), "--install-path", str(root), "--no-bar"]) == 0
    rows = q(db, "SELECT image_id, status, error_type, error_detail, file_path, dup_group "
                 "FROM images ORDER BY image_id")
    ph, sheet, own = rows[:N_PLACEHOLDER], rows[N_PLACEHOLDER:N_PLACEHOLDER + 3], rows[-4:]
    sha, _ = saved_sha("notavailable")
    assert {(r[1], r[2]) for r in ph} == {("failed_permanent", "placeholder")}
    assert all(sha in r[3] for r in ph)
    # one example kept: the smallest id among those that made the group, which the
    # threads' order decides (an image saved later with a smaller id is refused)
    [example] = [r for r in ph if r[4] is not None]
    assert (root / example[4]).is_file()
    on_disk = {p.name for p in root.rglob("*.jpg")}
    assert len(on_disk) == 1 + 3 + 4
    # a sheet shared by three gbifIDs is an exact-duplicate group, not a placeholder
    assert {(r[1], r[5]) for r in sheet} == {("success", sheet[0][0])}
    assert {(r[1], r[5]) for r in own} == {("success", None)}
    assert q(db, "SELECT sha256, n_images, example_image_id FROM placeholders") == \
        [(sha, N_PLACEHOLDER, example[0])]
    assert q(db, "SELECT count(*) FROM gbif_ids WHERE status = 'failed'") == [(N_PLACEHOLDER,)]
    report = json.loads(subprocess.run(
        [sys.executable, "-m", "download_db", "report", "--db", str(db), "--json"],
        capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent).stdout)
    ident = report["identity"]
    assert (ident["dedupe"]["exact_groups"], ident["dedupe"]["exact_images"]) == (1, 3)
    assert ident["dedupe"]["placeholder_images"] == 0  # the download had flagged them all
    [p] = ident["placeholders"]
    assert (p["host"], p["sha256"], p["images"], p["example"]) == \
        ("127.0.0.23", sha, N_PLACEHOLDER, example[4])
    assert p["example_thumb"].startswith("data:image/jpeg;base64,")
    page = tmp_path / "report.html"
    assert main(["report", "--db", str(db), "--html", str(page)]) == 0
    html = page.read_text()
    assert "Placeholders by host" in html and p["example_thumb"] in html
    # later matches are not saved as successes
    again = [r[0] for r in ph[1:3]]
    assert main(["check", "--db", str(db), "--install-path", str(root)]) == 0
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE images SET status = 'pending', error_type = NULL, "
                     "error_detail = NULL, attempts = 0, next_attempt_at = 0 "
                     f"WHERE image_id IN ({again[0]}, {again[1]})")
    conn.close()
    assert download(tmp_path, db) == 0
    for status, et, detail, path in q(db, "SELECT status, error_type, error_detail, file_path "
                                          f"FROM images WHERE image_id IN {tuple(again)}"):
        assert (status, et, path) == ("failed_permanent", "placeholder", None)
        assert "known placeholder" in detail and sha in detail
    assert len({p.name for p in root.rglob("*.jpg")}) == 1 + 3 + 4


@pytest.mark.parametrize("kind", ["sha256", "phash"])
def test_placeholder_hashes_file_refuses_from_the_first_match(tmp_path: Path, server,
                                                              kind: str) -> None:
    db = build(tmp_path, [server.url(f"/img/blocked.jpg?i={i}") for i in range(3)]
               + [server.url("/img/fine.jpg")])
    sha, ph = saved_sha("blocked")
    listed = tmp_path / "placeholders.txt"
    listed.write_text("# hashes of 'image not available' pictures\n\n"
                      + (sha if kind == "sha256" else phash.to_hex(ph)) + "  # ours\n")
    assert download(tmp_path, db, "--placeholder-hashes", str(listed)) == 0
    assert q(db, "SELECT status, error_type, file_path IS NULL FROM images ORDER BY image_id") \
        == [("failed_permanent", "placeholder", 1)] * 3 + [("success", None, 0)]


def test_a_bad_placeholder_hashes_line_is_one_line_naming_the_file(tmp_path: Path,
                                                                   capsys) -> None:
    db = build(tmp_path, ["http://127.0.0.23/img/x.jpg"])
    bad = tmp_path / "bad.txt"
    bad.write_text("0123456789abcdef\nnot-a-hash\n")
    assert download(tmp_path, db, "--placeholder-hashes", str(bad)) == 64
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "--placeholder-hashes" in err[0] and "line 2" in err[0]


def test_more_than_the_threshold_on_one_host_is_a_placeholder() -> None:
    limit = PLACEHOLDER_MAX_SHARED
    dups = ([(i, 1, "aa", limit + 1) for i in range(1, limit + 2)]      # host 1: one too many
            + [(100 + i, 2, "aa", limit) for i in range(limit)]         # host 2: at the limit
            + [(200 + i, 3, "bb", 3) for i in range(3)])                # a shared sheet
    found = placeholders.find(dups, np.empty(0, np.int64), np.empty(0, np.int64), {}, limit)
    assert [(g.host_id, g.ids[0], len(g.ids)) for g in found] == [(1, 1, limit + 1)]
    # near copies count too: one host, pHash within the distance, different bytes
    ids = np.arange(1, limit + 3, dtype=np.int64)
    near = {int(i): 1 for i in ids}
    found = placeholders.find([], ids, np.full(len(ids), 7, np.int64), near, limit)
    assert [(g.host_id, len(g.ids)) for g in found] == [(7, limit + 1 + 1)]


def test_files_left_by_a_run_without_the_image_root_are_removed_by_the_next(
        tmp_path: Path, monkeypatch) -> None:
    from tests.identity_data import saved_db, synthetic

    pic = synthetic(1, size=120)[0]
    db, root = saved_db(tmp_path, [pic] * N_PLACEHOLDER, convert=False)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # no ./images here: no root, files stay
    assert main(["dedupe", "--db", str(db), "--no-bar"]) == 0
    assert q(db, "SELECT count(*) FROM images WHERE error_type = 'placeholder' "
                 "AND file_path IS NOT NULL") == [(N_PLACEHOLDER,)]
    assert len(list(root.rglob("*.jpg"))) == N_PLACEHOLDER  # flagged, files still there
    assert main(["dedupe", "--db", str(db), "--install-path", str(root), "--no-bar"]) == 0
    assert q(db, "SELECT count(*) FROM images WHERE file_path IS NOT NULL") == [(1,)]
    assert len(list(root.rglob("*.jpg"))) == 1
    assert q(db, "SELECT count(*) FROM placeholders") == [(1,)]


def test_a_placeholder_is_refused_in_the_run_that_finds_it(tmp_path: Path, server) -> None:
    """One thread, slow answers: the writer commits while the run goes on, so the run
    finds the placeholder after more than the threshold and its workers refuse the rest
    before saving them."""
    n = PLACEHOLDER_MAX_SHARED * 3
    urls = [server.url(f"/slow/notavailable.jpg?delay=0.05&specimen={i}") for i in range(n)]
    db = build(tmp_path, urls)
    assert download(tmp_path, db, "--threads", "1") == 0
    sha, _ = saved_sha("notavailable")
    details = [r[0] for r in q(db, "SELECT error_detail FROM images ORDER BY image_id")]
    assert q(db, "SELECT DISTINCT status, error_type FROM images") == \
        [("failed_permanent", "placeholder")]
    refused = [d for d in details if "known placeholder" in d]
    assert refused and details[-1] in refused  # the last ones were never saved
    assert all(sha in d for d in details)
    assert q(db, "SELECT n_images FROM placeholders") == [(n,)]
    assert len(list((tmp_path / "images").rglob("*.jpg"))) == 1  # the example only


def test_repeat_watch_counts_distinct_urls_per_host_and_flags_past_the_limit() -> None:
    from download_db.identity.live import RepeatWatch

    w = RepeatWatch(max_shared=3)
    assert [w.add(1, "a" * 64, "http://h/1", 10), w.add(1, "a" * 64, "http://h/1", 11)] == \
        [None, None]  # one URL under two gbifIDs is one URL
    assert w.add(2, "a" * 64, "http://other/1", 12) is None  # another host counts apart
    assert w.add(1, "a" * 64, "http://h/2", 13) is None
    assert w.add(1, "a" * 64, "http://h/3", 14) is None
    g = w.add(1, "a" * 64, "http://h/4", 15)
    assert g is not None and (g.host_id, g.ids) == (1, (10, 13, 14, 15))
    later = w.add(1, "a" * 64, "http://h/5", 16)
    assert later is not None and later.ids == (16,)  # flagged already: this one alone


def test_repeat_watch_memory_is_bounded_by_forgetting_the_least_recent() -> None:
    from download_db.identity.live import RepeatWatch

    w = RepeatWatch(max_shared=1, capacity=2)
    w.add(1, "a" * 64, "u1", 1)
    w.add(1, "b" * 64, "u2", 2)
    w.add(1, "a" * 64, "u1", 3)  # a is recent again
    w.add(1, "c" * 64, "u3", 4)  # b is forgotten
    assert len(w._recent) == 2
    assert w.add(1, "a" * 64, "u5", 6) is not None  # a was kept: two URLs > 1
    assert w.add(1, "b" * 64, "u4", 5) is None  # b starts over
