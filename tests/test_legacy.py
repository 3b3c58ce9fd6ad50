"""Legacy import from the flat-file downloader, with real files in tmp_path."""

from __future__ import annotations

import hashlib
import json
import sqlite3 as stdlib_sqlite3

import pytest

from download_db.cli.main import init_main
from download_db.files.layout import image_relpath, legacy_relpath, prefix_dirs
from tests.helpers import q, row, write_multimedia
from tests.imageserver import image_bytes


def test_prefix_layout() -> None:
    assert prefix_dirs(1057161997) == ("105", "716")
    assert image_relpath(1057161997, 0, "jpg") == "105/716/1057161997-00.jpg"
    assert image_relpath(1057161997, 12, "dng") == "105/716/1057161997-12.dng"
    assert prefix_dirs(12) == ("12", "000")
    assert prefix_dirs(12345) == ("123", "000")
    assert legacy_relpath(1057161997) == "105/716/1057161997.jpg"


def test_legacy_import(tmp_path) -> None:
    ids = [1057161997, 1057161998, 1057161999, 2000000001, 2000000002]
    rows = [row(i, f"https://a.example.org/{i}.jpg") for i in ids]
    rows.append(row(2000000002, "https://a.example.org/second.jpg"))
    mm = write_multimedia(tmp_path / "m.txt", rows)
    root = tmp_path / "images"
    db = tmp_path / "d.db"
    assert init_main(["--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0

    def put(rel: str, data: bytes = b"\xff\xd8jpeg") -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)

    put(legacy_relpath(1057161997), b"\xff\xd8" + b"x" * 100)  # to be renamed
    put(image_relpath(1057161998, 0, "jpg"))  # renamed by an interrupted earlier run
    # 1057161999: listed but no file -> counted missing, left pending
    put(legacy_relpath(2000000002))
    processed = tmp_path / "processed_ids.txt"
    processed.write_text("1057161997\n1057161998\n1057161999\nnot-an-id\n\n999\n2000000002\n")
    failed = tmp_path / "failed_ids.txt"
    failed.write_text("2000000001\n123\n")
    args = [
        "--db",
        str(db),
        "--legacy-only",
        "--processed-file",
        str(processed),
        "--failed-file",
        str(failed),
        "--install-path",
        str(root),
        "--no-bar",
        "--no-verify",  # today's fast path: files adopted as they are, flagged
    ]
    assert init_main(args) == 0

    conn = stdlib_sqlite3.connect(db)
    got = conn.execute(
        "SELECT gbif_id, image_no, status, error_type, file_path, file_size "
        "FROM images ORDER BY gbif_id, image_no"
    ).fetchall()
    assert got == [
        (1057161997, 0, "success", "legacy_unverified_index", "105/716/1057161997-00.jpg", 102),
        (1057161998, 0, "success", "legacy_unverified_index", "105/716/1057161998-00.jpg", 6),
        (1057161999, 0, "pending", None, None, None),
        (2000000001, 0, "pending", None, None, None),
        (2000000002, 0, "success", "legacy_unverified_index", "200/000/2000000002-00.jpg", 6),
        (2000000002, 1, "pending", None, None, None),
    ]
    assert not (root / legacy_relpath(1057161997)).exists()
    assert (root / image_relpath(1057161997, 0, "jpg")).exists()
    counts = json.loads(
        conn.execute(
            "SELECT counts FROM runs WHERE stage='legacy' ORDER BY run_id DESC"
        ).fetchone()[0]
    )
    legacy = counts["legacy"]
    assert (
        legacy["renamed"],
        legacy["relabeled"],
        legacy["missing"],
        legacy["unknown"],
        legacy["not_numeric"],
        legacy["failed_listed"],
        legacy["failed_known"],
    ) == (2, 1, 1, 1, 1, 2, 1)
    # finalize ran: done / pending / partial
    assert conn.execute(
        "SELECT gbif_id, status, n_success FROM gbif_ids ORDER BY gbif_id"
    ).fetchall() == [
        (1057161997, "done", 1),
        (1057161998, "done", 1),
        (1057161999, "pending", 0),
        (2000000001, "pending", 0),
        (2000000002, "partial", 1),
    ]
    before = conn.execute("SELECT * FROM images ORDER BY image_id").fetchall()
    conn.close()

    # idempotent: a second run changes nothing and renames nothing
    assert init_main(args) == 0
    conn = stdlib_sqlite3.connect(db)
    assert conn.execute("SELECT * FROM images ORDER BY image_id").fetchall() == before
    conn.close()


def _legacy_setup(tmp_path, ids: list[int]):
    mm = write_multimedia(tmp_path / "m.txt", [row(i, f"https://a.example.org/{i}.jpg")
                                               for i in ids])
    db = tmp_path / "d.db"
    assert init_main(["--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
    root = tmp_path / "images"
    processed = tmp_path / "processed_ids.txt"
    processed.write_text("".join(f"{i}\n" for i in ids))
    args = ["--db", str(db), "--legacy-only", "--processed-file", str(processed),
            "--install-path", str(root), "--no-bar"]
    return db, root, args


def _put(root, rel: str, data: bytes) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_verified_import_decodes_each_file_and_an_8_byte_text_is_no_success(
        tmp_path, workers: str) -> None:
    ids = [1057161997, 1057161998, 1057161999, 2000000001]
    db, root, args = _legacy_setup(tmp_path, ids)
    sheet = image_bytes("legacy", 300, 400)
    _put(root, legacy_relpath(ids[0]), sheet)  # a real JPEG under the old name
    _put(root, legacy_relpath(ids[1]), b"not jpg\n")  # 8 bytes of text named <id>.jpg
    _put(root, image_relpath(ids[2], 0, "jpg"), sheet[: len(sheet) // 2])  # cut short
    _put(root, legacy_relpath(ids[3]), image_bytes("tiny", 16, 16))  # a placeholder icon
    assert init_main([*args, "--workers", workers]) == 0
    got = q(tmp_path / "d.db", "SELECT gbif_id, status, error_type, file_path, file_size, "
                               "sha256, width, height, last_checked IS NOT NULL, "
                               "last_attempt_at FROM images ORDER BY gbif_id")
    assert got[0] == (ids[0], "success", None, image_relpath(ids[0], 0, "jpg"), len(sheet),
                      hashlib.sha256(sheet).hexdigest(), 300, 400, 1, None)
    for r in got[1:]:
        assert r[1:4] == ("pending", "legacy_invalid", None), r
    details = [d for (d,) in q(db, "SELECT error_detail FROM images ORDER BY gbif_id")]
    assert details[1].startswith("not_an_image") and details[3].startswith("placeholder_image")
    # the invalid file keeps its name (the download writes <id>-00.jpg), the good one moved
    assert (root / legacy_relpath(ids[1])).exists()
    assert (root / image_relpath(ids[0], 0, "jpg")).exists()
    assert q(db, "SELECT gbif_id, status FROM gbif_ids ORDER BY gbif_id") == [
        (ids[0], "done"), (ids[1], "pending"), (ids[2], "pending"), (ids[3], "pending")]
    counts = json.loads(q(db, "SELECT counts FROM runs WHERE stage = 'legacy'")[0][0])
    assert (counts["legacy"]["verified"], counts["legacy"]["invalid"]) == (1, 3)
    # an import is no download: the throughput counters saw nothing
    assert q(db, "SELECT count(*) FROM activity") == [(0,)]
    # a second run changes nothing
    before = q(db, "SELECT * FROM images ORDER BY image_id")
    assert init_main(args) == 0
    assert q(db, "SELECT * FROM images ORDER BY image_id") == before


def test_no_verify_keeps_the_fast_path_and_its_flag(tmp_path) -> None:
    ids = [1057161998]
    db, root, args = _legacy_setup(tmp_path, ids)
    _put(root, legacy_relpath(ids[0]), b"not jpg\n")
    assert init_main([*args, "--no-verify"]) == 0
    assert q(db, "SELECT status, error_type, file_size FROM images") == [
        ("success", "legacy_unverified_index", 8)]
