"""Perceptual hashes: equal to imagehash's for saved files, the migration, the hash backfill."""

from __future__ import annotations

import io
import signal
import sqlite3 as stdlib_sqlite3
import subprocess
import sys
import time
from pathlib import Path

import imagehash
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from download_db.cli.main import main
from download_db.db.connection import connect
from download_db.db.schema import MIGRATIONS, SCHEMA_VERSION, apply_migration, migrate
from download_db.files import edgehash, images, lanczos, phash
from download_db.identity.backfill import HashConfig, run_hash
from tests.helpers import q
from tests.identity_data import SHEETS, saved_db, synthetic, transformations

ROOT = Path(__file__).resolve().parent.parent


def reference(data: bytes) -> tuple[int, int]:
    """imagehash's own values for a saved file's bytes."""
    im = Image.open(io.BytesIO(data))
    return (phash.to_signed(imagehash.phash(im).hash), phash.to_signed(imagehash.dhash(im).hash))


def edges_of(data: bytes) -> bytes:
    """The edge hashes of a saved file's bytes, from Pillow's own grey conversion."""
    return edgehash.edge_hashes(np.asarray(Image.open(io.BytesIO(data)).convert("L")))


@pytest.mark.parametrize("sheet", SHEETS, ids=lambda p: p.stem[-4:])
def test_convert_hashes_equal_imagehash_of_the_saved_file(sheet: Path) -> None:
    for name, data in {"as shipped": sheet.read_bytes(), **transformations(sheet)}.items():
        out = images.convert(data)
        assert (out.phash, out.dhash) == reference(out.data), name
        assert out.edges == edges_of(out.data) and len(out.edges) == edgehash.SIZE, name


@settings(max_examples=25, deadline=None)
@given(sheet=st.sampled_from(SHEETS), box=st.tuples(*[st.floats(0.0, 0.45)] * 4),
       scale=st.floats(0.5, 2.0), quality=st.sampled_from([70, 85, 95]))
def test_hashes_equal_imagehash_of_the_saved_file_for_any_crop_and_scale(
        sheet: Path, box: tuple[float, ...], scale: float, quality: int) -> None:
    """The stored values are the file's, not the encoded image's: hashing the image
    before its JPEG encode differs from the file in 5 % (pHash) / 21 % (dHash) of
    such crops (bench/hashing.py --equality)."""
    im = Image.open(sheet).convert("RGB")
    w, h = im.size
    left, top, right, bottom = box
    im = im.crop((int(w * left), int(h * top), int(w * (1 - right)), int(h * (1 - bottom))))
    im = im.resize((max(8, int(im.width * scale)), max(8, int(im.height * scale))))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    out = images.convert(buf.getvalue(), quality=quality)
    assert (out.phash, out.dhash) == reference(out.data)


def test_stored_form_is_signed_64_bit_and_reads_back_as_imagehash_hex() -> None:
    out = images.convert(SHEETS[0].read_bytes())
    im = Image.open(io.BytesIO(out.data))
    assert -(1 << 63) <= out.phash < (1 << 63)
    assert phash.to_hex(out.phash) == str(imagehash.phash(im))
    assert phash.to_hex(out.dhash) == str(imagehash.dhash(im))


@given(st.lists(st.booleans(), min_size=64, max_size=64), st.integers(0, 63))
def test_signed_form_round_trips_and_distance_counts_bits(bits: list[bool], flip: int) -> None:
    arr = np.array(bits, dtype=bool).reshape(8, 8)
    v = phash.to_signed(arr)
    assert int(phash.to_hex(v), 16) == int("".join("1" if b else "0" for b in bits), 2)
    other = arr.copy().ravel()
    other[flip] = not other[flip]
    assert phash.distance(v, phash.to_signed(other.reshape(8, 8))) == 1
    assert phash.distance(v, v) == 0


def own(im: Image.Image) -> tuple[int, int]:
    """imagehash's own values for a decoded image."""
    return (phash.to_signed(imagehash.phash(im).hash), phash.to_signed(imagehash.dhash(im).hash))


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 1300), st.integers(1, 1300), st.integers(0, 2**32),
       st.sampled_from(["noise", "bars", "smooth"]))
def test_the_lanczos_replica_equals_pillow_pixel_for_pixel(w: int, h: int, seed: int,
                                                           kind: str) -> None:
    """Both pass orders (Pillow goes vertical first when the height shrinks much
    more), stretches, unchanged sides, and content that saturates the clipping."""
    rng = np.random.default_rng(seed)
    if kind == "noise":
        a = rng.integers(0, 256, (h, w), dtype=np.uint8)
    elif kind == "bars":
        a = (rng.integers(0, 2, (h, w)) * 255).astype(np.uint8)
    else:
        yy, xx = np.mgrid[0:h, 0:w]
        a = (np.sin(xx / 7.0) * 60 + np.cos(yy / 13.0) * 60 + 128).astype(np.uint8)
    im = Image.fromarray(a, "L")
    sizes = [(32, 32), (9, 8)]
    for got, size in zip(lanczos.resize(a.astype(np.float64), sizes), sizes, strict=True):
        assert np.array_equal(got, np.asarray(im.resize(size, Image.Resampling.LANCZOS)))
    assert phash.hashes(im) == own(im)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "CMYK", "I;16"])
def test_hashes_equal_imagehash_in_every_mode(mode: str) -> None:
    im = Image.open(SHEETS[1]).convert("RGB").resize((517, 777))
    if mode == "I;16":
        im = im.convert("L").convert("I").point(lambda v: v * 200).convert("I;16")
    elif mode != "RGB":
        im = im.convert(mode)
    assert lanczos.matches_pillow()  # the replica is in use, not the fallback
    assert phash.hashes(im) == own(im)


def test_a_pillow_that_resamples_otherwise_falls_back_to_imagehash(monkeypatch) -> None:
    im = Image.open(SHEETS[0]).convert("RGB").resize((400, 600))
    monkeypatch.setattr(phash, "_exact", lambda: False)
    assert phash.hashes(im) == own(im)


def test_a_pillow_without_convert_into_takes_the_copy(monkeypatch) -> None:
    im = Image.open(SHEETS[1]).convert("RGB").resize((333, 500))
    assert phash._convert_into_works()  # the direct conversion is in use here
    fast = phash.grey_pixels(im)
    monkeypatch.setattr(phash, "_convert_into_works", lambda: False)
    assert np.array_equal(phash.grey_pixels(im), fast)
    assert np.array_equal(fast, np.asarray(im.convert("L")))
    assert phash.hashes(im) == own(im)


@given(st.lists(st.integers(-40, 40), min_size=64, max_size=64), st.integers(0, 6))
def test_median_is_numpys(values: list[int], shift: int) -> None:
    """Ties included (a flat image gives many equal DCT values)."""
    a = np.array(values, dtype=np.float64).reshape(8, 8) / (1 << shift) + 0.1
    assert phash.median(a) == np.median(a)


def test_kept_originals_have_no_hashes_until_the_backfill() -> None:
    out = images.verify_original(SHEETS[0].read_bytes())
    assert out.phash is None and out.dhash is None


def test_identity_migrations_add_their_columns_and_table(tmp_path: Path) -> None:
    """Migrations 4, 6 and 8 on a database without what they add (the other migrations'
    steps belong to their own tests), and the schema version follows the table."""
    db, _root = saved_db(tmp_path, synthetic(2))
    conn = stdlib_sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP VIEW images_v")  # it names them since v16
    for col in ("phash", "dhash", "dup_group", "near_group"):
        conn.execute(f"ALTER TABLE images DROP COLUMN {col}")
    conn.execute("DROP TABLE placeholders")
    for v in (4, 6, 8):
        apply_migration(conn, v)
    conn.close()
    cols = {r[1] for r in q(db, "PRAGMA table_info(images)")}
    assert {"phash", "dhash", "dup_group", "near_group"} <= cols
    assert q(db, "SELECT count(*) FROM placeholders") == [(0,)]
    assert SCHEMA_VERSION == max(MIGRATIONS) >= 8
    c = connect(db)
    assert migrate(c) == SCHEMA_VERSION  # a current database: nothing to do
    c.close()


def expected(db: Path, root: Path) -> dict[int, tuple]:
    return {i: (*reference((root / f).read_bytes()), edges_of((root / f).read_bytes()))
            for i, f in q(db, "SELECT image_id, file_path FROM images WHERE status = 'success'")}


def stored(db: Path) -> dict[int, tuple]:
    return {i: (p, d, e) for i, p, d, e in q(db, "SELECT image_id, phash, dhash, edge_hashes "
                                                 "FROM images WHERE status = 'success'")}


@pytest.mark.parametrize("workers", [1, 2])
def test_backfill_hashes_every_saved_image_and_records_its_run(tmp_path: Path,
                                                                workers: int) -> None:
    db, root = saved_db(tmp_path, synthetic(12), convert=False)
    missing = q(db, "SELECT file_path FROM images ORDER BY image_id LIMIT 1")[0][0]
    (root / missing).unlink()
    st_ = run_hash(HashConfig(db=db, install_path=root, workers=workers, chunk=5, bar=False))
    assert (st_.hashed, st_.missing, st_.unreadable) == (11, 1, 0)
    got = stored(db)
    for image_id, f in q(db, "SELECT image_id, file_path FROM images WHERE status = 'success'"):
        if f == missing:
            assert got[image_id] == (None, None, None)
        else:
            data = (root / f).read_bytes()
            assert got[image_id] == (*reference(data), edges_of(data))
    runs = q(db, "SELECT outcome, counts FROM runs WHERE stage = 'hash'")
    assert [r[0] for r in runs] == ["ok"] and '"hashed": 11' in runs[0][1]
    assert q(db, "SELECT value FROM meta WHERE key = 'hash_cursor'") == [("0",)]
    again = run_hash(HashConfig(db=db, install_path=root, bar=False))
    assert (again.hashed, again.missing) == (0, 1)  # only the missing file is looked at again


def test_backfill_adds_edge_hashes_to_images_hashed_before_them(tmp_path: Path) -> None:
    """Rows hashed before schema v17 have pHash and dHash but no edge hashes: the next
    backfill reads those files again and leaves the rest alone."""
    db, root = saved_db(tmp_path, synthetic(6), convert=False)
    run_hash(HashConfig(db=db, install_path=root, bar=False))
    want = stored(db)
    conn = stdlib_sqlite3.connect(db, isolation_level=None)
    conn.execute("UPDATE images SET edge_hashes = NULL WHERE image_id % 2 = 0")
    conn.execute("UPDATE images SET phash = 1 WHERE image_id % 2 = 1")  # to see it is kept
    conn.close()
    again = run_hash(HashConfig(db=db, install_path=root, bar=False))
    assert again.hashed == 3
    got = stored(db)
    assert {i: v for i, v in got.items() if i % 2 == 0} == \
        {i: v for i, v in want.items() if i % 2 == 0}
    assert {v[0] for i, v in got.items() if i % 2 == 1} == {1}


def test_backfill_cli_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["hash", "--db", str(tmp_path / "none.db"), "--no-bar"]) == 64  # EX_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--db" in err[0]


@pytest.mark.timeout(180)
def test_backfill_killed_with_sigkill_resumes_to_the_same_result(tmp_path: Path) -> None:
    db, root = saved_db(tmp_path, synthetic(160, size=900), convert=False)
    want = expected(db, root)
    cmd = [sys.executable, "-m", "download_db", "hash", "--db", str(db), "--install-path",
           str(root), "--chunk", "10", "--no-bar", "--progress-every", "1000"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if q(db, "SELECT count(*) FROM images WHERE phash IS NOT NULL")[0][0] >= 20:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the backfill finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    part = q(db, "SELECT count(*) FROM images WHERE phash IS NOT NULL")[0][0]
    assert 20 <= part < len(want)
    cursor = int(q(db, "SELECT value FROM meta WHERE key = 'hash_cursor'")[0][0])
    assert cursor > 0
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"hash: {len(want) - part:,} images hashed" in done.stdout  # resumed, not redone
    assert stored(db) == want
    assert sorted(r[0] for r in q(db, "SELECT outcome FROM runs WHERE stage = 'hash'")) == \
        ["ok", "running"]


def test_downloaded_images_carry_their_hashes(tmp_path: Path) -> None:
    from tests.helpers import row, write_multimedia
    from tests.imageserver import ImageServer

    with ImageServer("127.0.0.21") as srv:
        urls = [srv.url(f"/img/h{i}.jpg?w=600&h=800") for i in range(4)]
        mm = write_multimedia(tmp_path / "m.txt", [row(3_200_000_000 + i, u)
                                                   for i, u in enumerate(urls)])
        db = tmp_path / "d.db"
        assert main(["ingest", "--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
        root = tmp_path / "images"
        assert main(["download", "--db", str(db), "--install-path", str(root), "--no-bar",
                     "--lock-dir", str(tmp_path / "locks"), "--per-host-rate", "0",
                     "--contact", "tests@example.org"]) == 0
    assert len(stored(db)) == 4
    assert stored(db) == expected(db, root)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 700), w=st.integers(1, 700), seed=st.integers(0, 2**32),
       level=st.integers(0, 255))
def test_edge_hashes_of_any_shape_are_64_bytes_and_deterministic(h: int, w: int, seed: int,
                                                                 level: int) -> None:
    """Any size the downloader lets through (1 px wide strips too): the stored value is
    always 64 bytes, the same for the same pixels, and zeros for a flat picture."""
    grey = np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)
    v = edgehash.edge_hashes(grey)
    assert len(v) == edgehash.SIZE and edgehash.edge_hashes(grey.copy()) == v
    assert edgehash.unpack([v]).shape == (1, len(edgehash.EDGES), edgehash.WORDS)
    assert edgehash.edge_hashes(np.full((h, w), level, np.uint8)) == bytes(edgehash.SIZE)
