"""Raw conversion: preview or demosaic, recorded like a download, blanks and broken raws fail."""

from __future__ import annotations

import hashlib
import io
import sqlite3 as stdlib_sqlite3
from pathlib import Path

import pytest
from PIL import Image

from download_db.cli.main import init_main, main
from download_db.files import images
from download_db.files.layout import image_relpath
from download_db.upkeep.convert import convert_raw
from tests.helpers import make_dng, q, row, write_multimedia

RAW = Path(__file__).parent / "data" / "raw"
CANON = RAW / "canon_eos_6d_photoprism.dng"  # 1224x816 sensor, 1024x683 JPEG preview
STRIPPED = RAW / "exiftool_metadata_only_canon350d.dng"  # a DNG with no image data


def test_a_large_enough_preview_is_used_else_the_sensor_is_demosaiced() -> None:
    data = CANON.read_bytes()
    small = convert_raw(data, max_size=512)
    assert small.how == "preview" and (small.out.width, small.out.height) == (512, 342)
    big = convert_raw(data, max_size=2048)  # the preview (1024) is smaller than the sensor
    assert big.how == "demosaic" and (big.out.width, big.out.height) == (1224, 816)
    for c in (small, big):
        im = Image.open(io.BytesIO(c.out.data))
        assert im.format == "JPEG" and im.size == (c.out.width, c.out.height)
        assert c.out.phash is not None


def test_a_raw_without_preview_is_demosaiced(tmp_path: Path) -> None:
    c = convert_raw(make_dng(tmp_path, 256, 192), max_size=1024)
    assert c.how == "demosaic" and (c.out.width, c.out.height) == (256, 192)


@pytest.mark.parametrize("value", [0, 2000, 4095])
def test_a_uniform_sensor_block_is_no_success(tmp_path: Path, value: int) -> None:
    with pytest.raises(images.ImageError) as e:
        convert_raw(make_dng(tmp_path, 256, 192, value=value))
    assert e.value.error_type == "raw_unusable" and "nearly uniform" in e.value.detail


def test_a_raw_with_nothing_to_decode_is_unusable() -> None:
    with pytest.raises(images.ImageError) as e:
        convert_raw(STRIPPED.read_bytes())
    assert e.value.error_type == "raw_unusable" and "cannot hold its" in e.value.detail


def _raw_db(tmp_path: Path, raws: list[bytes]) -> tuple[Path, Path]:
    """A built database whose images were saved as raws kept as is (raw_unprocessed)."""
    base = 3_200_000_000
    mm = write_multimedia(tmp_path / "m.txt", [row(base + i, f"http://127.0.0.9/r/{i}.dng")
                                               for i in range(len(raws))])
    db = tmp_path / "d.db"
    assert init_main(["--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
    root = tmp_path / "images"
    conn = stdlib_sqlite3.connect(db)
    with conn:
        for i, data in enumerate(raws):
            rel = image_relpath(base + i, 0, "dng")
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
            conn.execute("UPDATE images SET status = 'success', error_type = 'raw_unprocessed', "
                         "file_path = ?, file_size = ?, sha256 = ? WHERE gbif_id = ?",
                         (rel, len(data), hashlib.sha256(data).hexdigest(), base + i))
    conn.close()
    assert main(["finalize", "--db", str(db), "--no-bar"]) == 0
    return db, root


@pytest.mark.parametrize("keep", [False, True])
def test_convert_records_each_raw_like_a_download(tmp_path: Path, keep: bool) -> None:
    raws = [CANON.read_bytes(), make_dng(tmp_path, 300, 200), make_dng(tmp_path, value=0),
            STRIPPED.read_bytes()]
    db, root = _raw_db(tmp_path, raws)
    args = ["convert", "--db", str(db), "--install-path", str(root), "--max-size", "512",
            "--workers", "2", "--no-bar", *(["--keep-raw"] if keep else [])]
    assert main(args) == 0
    got = q(db, "SELECT gbif_id, status, error_type, file_path, file_size, sha256, width, "
                "height, phash IS NOT NULL, error_detail FROM images ORDER BY image_id")
    for gid, status, etype, rel, size, sha, w, h, hashed, _ in got[:2]:
        assert (status, etype, hashed) == ("success", None, 1)
        assert rel == image_relpath(gid, 0, "jpg")
        data = (root / rel).read_bytes()
        assert (size, sha) == (len(data), hashlib.sha256(data).hexdigest())
        assert Image.open(io.BytesIO(data)).size == (w, h)
    assert got[0][9] == "converted from a camera raw (preview)" and got[0][6] == 512
    assert got[1][9] == "converted from a camera raw (demosaic)" and got[1][6:8] == (300, 200)
    for r in got[2:]:
        assert r[1:4] == ("failed_permanent", "raw_unusable", None)
    assert "nearly uniform" in got[2][9]
    dngs = sorted(p.name for p in root.rglob("*.dng"))
    assert len(dngs) == (4 if keep else 0)
    assert q(db, "SELECT status, count(*) FROM gbif_ids GROUP BY 1 ORDER BY 1") == [
        ("done", 2), ("failed", 2)]
    assert q(db, "SELECT coalesce(sum(n), 0) FROM image_tally WHERE error_type = "
                 "'raw_unprocessed'") == [(0,)]
    # nothing left: a second run converts nothing
    assert main(args) == 0
    assert q(db, "SELECT counts FROM runs WHERE stage = 'convert' ORDER BY run_id DESC "
                 "LIMIT 1")[0][0].startswith('{"converted": {}')
