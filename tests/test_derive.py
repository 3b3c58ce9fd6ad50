"""Re-derive: another JPEG size from saved files, no network, resumable, the database only read."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from download_db.cli.main import main
from download_db.files.layout import image_relpath
from download_db.upkeep import derive
from download_db.upkeep.derive import shrink
from tests.helpers import dump, q, spy_stop_events
from tests.identity_data import SHEETS, saved_db, synthetic

ROOT = Path(__file__).resolve().parent.parent


def test_shrink_fits_the_long_edge_and_never_upscales() -> None:
    sheet = SHEETS[0].read_bytes()
    w0, h0 = Image.open(io.BytesIO(sheet)).size
    data, w, h = shrink(sheet, max_size=512, quality=85)
    assert max(w, h) == 512 and abs(w / h - w0 / h0) < 0.01
    assert Image.open(io.BytesIO(data)).size == (w, h)
    small = synthetic(1, size=200)[0]
    _, w, h = shrink(small, max_size=512, quality=85)
    assert (w, h) == Image.open(io.BytesIO(small)).size


def _derive(db: Path, root: Path, out: Path, *extra: str) -> int:
    return main(["derive", "--db", str(db), "--install-path", str(root), "--out", str(out),
                 "--max-size", "128", "--no-bar", *extra])


def test_a_set_in_the_same_layout_from_kept_originals(tmp_path: Path) -> None:
    db, root = saved_db(tmp_path, synthetic(5), convert=False)  # originals kept as is
    before = dump(db)
    out = tmp_path / "set-128"
    assert _derive(db, root, out, "--workers", "2") == 0
    got = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg"))
    assert got == sorted(image_relpath(3_100_000_000 + i, 0, "jpg") for i in range(5))
    for p in out.rglob("*.jpg"):
        assert max(Image.open(p).size) == 128
    assert dump(db) == before  # the database is only read (its runs row aside)
    assert not list(out.rglob("*.part"))


def test_resumes_after_a_limit_and_a_rerun_adds_only_what_is_new(tmp_path: Path,
                                                                 capsys) -> None:
    db, root = saved_db(tmp_path, synthetic(6), convert=False)
    out = tmp_path / "set"
    assert _derive(db, root, out, "--limit", "2", "--workers", "1") == 0
    first = {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")}
    assert len(first) == 2
    assert _derive(db, root, out) == 0
    assert len(list(out.rglob("*.jpg"))) == 6
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())  # not redone
    capsys.readouterr()
    assert _derive(db, root, out) == 0  # a finished pass: the next one finds nothing new
    assert "derive: 0 JPEGs written (0.0 MB), 6 already there" in capsys.readouterr().out
    # other settings start over, overwriting
    assert main(["derive", "--db", str(db), "--install-path", str(root), "--out", str(out),
                 "--max-size", "64", "--no-bar"]) == 0
    assert all(max(Image.open(p).size) == 64 for p in out.rglob("*.jpg"))


def test_out_must_not_be_the_image_root(tmp_path: Path, capsys) -> None:
    db, root = saved_db(tmp_path, synthetic(1), convert=False)
    assert _derive(db, root, root) == 64
    assert "--out must not be the image root" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_a_killed_derive_continues_and_leaves_no_half_file(tmp_path: Path) -> None:
    db, root = saved_db(tmp_path, synthetic(30, size=300), convert=False)
    out = tmp_path / "set"
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
              "from pathlib import Path\n"
              "import download_db.upkeep.derive as d\n"
              "d.CHUNK = 3\n"
              f"d.run_derive(d.DeriveConfig(db=Path({str(db)!r}), install_path=Path({str(root)!r}),"
              f" out=Path({str(out)!r}), max_size=64, bar=False))\n")
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and p.poll() is None:
        if len(list(out.rglob("*.jpg"))) >= 6:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert _derive(db, root, out) == 0
    files = list(out.rglob("*.jpg"))
    assert len(files) == 30 and not list(out.rglob("*.part"))
    for f in files:
        Image.open(f).load()  # every file whole


# -- its runs row ------------------------------------------------------------------------

def _runs(db: Path) -> list[tuple]:
    return [(st, out, msg, json.loads(c) if c else None) for st, out, msg, c in q(
        db, "SELECT stage, outcome, message, counts FROM runs WHERE stage = 'derive' "
            "ORDER BY run_id")]


def test_each_run_is_recorded_with_what_it_did(tmp_path: Path) -> None:
    db, root = saved_db(tmp_path, synthetic(5), convert=False)
    out = tmp_path / "set"
    assert _derive(db, root, out, "--limit", "2", "--workers", "1") == 0
    assert _derive(db, root, out, "--workers", "1") == 0  # resumes: the other three
    (first, second) = _runs(db)
    assert first[:3] == second[:3] == ("derive", "ok", None)
    assert {k: first[3][k] for k in ("images", "derived", "already", "missing")} == {
        "images": 2, "derived": 2, "already": 0, "missing": 0}
    assert {k: second[3][k] for k in ("images", "derived", "already")} == {
        "images": 3, "derived": 3, "already": 0}
    assert second[3]["bytes_written"] > 0 and "seconds" in second[3]
    assert q(db, "SELECT depends_on, finished_at >= started_at FROM runs "
                 "WHERE stage = 'derive'") == [(None, 1), (None, 1)]


def test_a_failure_is_one_line_and_a_failed_run(tmp_path: Path, monkeypatch, capsys) -> None:
    db, root = saved_db(tmp_path, synthetic(3), convert=False)

    def full(*_a) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(derive, "_save_cursor", full)
    assert _derive(db, root, tmp_path / "set", "--workers", "1") == 74
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "Traceback" not in err
    ((stage, outcome, message, counts),) = _runs(db)
    assert (stage, outcome) == ("derive", "failed")
    assert message == "OSError: [Errno 28] No space left on device"


def test_a_stop_signal_is_an_interrupted_run(tmp_path: Path, monkeypatch, capsys) -> None:
    db, root = saved_db(tmp_path, synthetic(4), convert=False)
    monkeypatch.setattr(derive, "CHUNK", 2)
    real = derive._save_cursor

    def then_stop(cfg, after, st) -> None:  # a scheduler's SIGTERM after the first batch
        real(cfg, after, st)
        if after >= 0:
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not _stopped():
                time.sleep(0.01)

    stops = spy_stop_events(monkeypatch, derive)

    def _stopped() -> bool:
        return bool(stops) and stops[0].is_set()

    monkeypatch.setattr(derive, "_save_cursor", then_stop)
    assert _derive(db, root, tmp_path / "set", "--workers", "1") == 75
    assert "stopped by a signal" in capsys.readouterr().err
    ((stage, outcome, message, counts),) = _runs(db)
    assert (stage, outcome, message) == ("derive", "interrupted", "stopped by a signal")
    assert counts["images"] == 2 and counts["derived"] == 2
