"""CLI behaviour: one clear line and a non-zero exit for every user error, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from download_db.cli.main import init_main
from tests.helpers import PSILOCYBE, q, row, write_multimedia

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "init_download_db.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
    )


def one_line_error(p: subprocess.CompletedProcess) -> str:
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    return lines[0]


def test_missing_multimedia_file(tmp_path) -> None:
    p = run_cli("--db", str(tmp_path / "x.db"), "--multimedia", str(tmp_path / "nope.txt"))
    assert "multimedia file not found" in one_line_error(p)
    assert p.returncode == 2
    assert not (tmp_path / "x.db").exists()


def test_existing_database_needs_reset(tmp_path) -> None:
    db = tmp_path / "x.db"
    assert run_cli("--db", str(db), "--multimedia", str(PSILOCYBE)).returncode == 0
    p = run_cli("--db", str(db), "--multimedia", str(PSILOCYBE))
    assert "already exists" in one_line_error(p) and "--reset" in p.stderr
    assert run_cli("--db", str(db), "--multimedia", str(PSILOCYBE), "--reset").returncode == 0


@pytest.mark.parametrize("content", [b"this is not a zip", b"PK\x03\x04garbage" * 10, b""])
def test_unreadable_zip(tmp_path, content: bytes) -> None:
    z = tmp_path / "download.zip"
    z.write_bytes(content)
    p = run_cli("--db", str(tmp_path / "x.db"), "--multimedia", str(z))
    msg = one_line_error(p)
    assert "zip" in msg or "empty" in msg


def test_truncated_gzip_is_one_line(tmp_path) -> None:
    import gzip

    data = gzip.compress(PSILOCYBE.read_bytes())
    gz = tmp_path / "multimedia.txt.gz"
    gz.write_bytes(data[: len(data) // 2])
    p = run_cli("--db", str(tmp_path / "x.db"), "--multimedia", str(gz))
    assert "cannot read" in one_line_error(p)


def test_not_a_multimedia_file(tmp_path) -> None:
    f = write_multimedia(tmp_path / "occurrence.txt", [], header=["gbifID", "scientificName"])
    assert "identifier" in one_line_error(
        run_cli("--db", str(tmp_path / "x.db"), "--multimedia", str(f))
    )


def test_modes_need_their_inputs(tmp_path) -> None:
    assert "--multimedia" in one_line_error(run_cli("--db", str(tmp_path / "x.db")))
    p = run_cli("--db", str(tmp_path / "x.db"), "--finalize-only")
    assert "database not found" in one_line_error(p)
    p = run_cli("--db", str(tmp_path / "x.db"), "--legacy-only")
    assert "--processed-file" in one_line_error(p)
    p = run_cli("--db", str(tmp_path / "nodir" / "x.db"), "--multimedia", str(PSILOCYBE))
    assert "does not exist" in one_line_error(p)


def test_modes_are_mutually_exclusive(tmp_path) -> None:
    p = run_cli("--reset", "--finalize-only")
    assert p.returncode == 2 and "not allowed with" in p.stderr


def test_database_that_is_not_ours(tmp_path) -> None:
    db = tmp_path / "x.db"
    db.write_bytes(b"not sqlite at all" * 100)
    msg = one_line_error(run_cli("--db", str(db), "--finalize-only"))
    assert "database" in msg


def test_other_ingest_in_progress_is_refused(tmp_path, build) -> None:
    a = write_multimedia(tmp_path / "a.txt", [row(1, "https://x.example.org/1.jpg")])
    b = write_multimedia(tmp_path / "b.txt", [row(2, "https://x.example.org/2.jpg")])
    code, db = build(a)
    assert code == 0
    from download_db.db.sqlite import sqlite3

    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value='loading' WHERE key='ingest_phase'")  # as if killed
    conn.execute("DELETE FROM meta WHERE key='build_complete'")
    conn.commit()
    conn.close()
    p = run_cli("--db", str(db), "--multimedia", str(b))
    assert "unfinished ingest" in one_line_error(p)


def test_help_lists_every_mode() -> None:
    p = run_cli("--help")
    assert p.returncode == 0
    for flag in (
        "--db",
        "--multimedia",
        "--install-path",
        "--processed-file",
        "--failed-file",
        "--reset",
        "--legacy-only",
        "--finalize-only",
    ):
        assert flag in p.stdout


def test_in_process_entry_point_returns_code(tmp_path, capsys) -> None:
    code = init_main(["--db", str(tmp_path / "x.db"), "--multimedia", str(tmp_path / "no.txt")])
    assert code == 2
    assert "not found" in capsys.readouterr().err


def test_reset_refuses_a_file_that_is_not_ours(tmp_path) -> None:
    precious = tmp_path / "thesis.db"
    import sqlite3 as stdlib_sqlite3

    c = stdlib_sqlite3.connect(precious)
    c.execute("CREATE TABLE chapters (n)")
    c.commit()
    c.close()
    p = run_cli("--db", str(precious), "--multimedia", str(PSILOCYBE), "--reset")
    assert "not a download database" in one_line_error(p)
    assert precious.exists()


def test_unfinished_build_refuses_legacy_and_finalize(tmp_path, build) -> None:
    code, db = build(PSILOCYBE)
    assert code == 0
    import sqlite3 as stdlib_sqlite3

    c = stdlib_sqlite3.connect(db)
    c.execute("UPDATE meta SET value='loading' WHERE key='ingest_phase'")
    c.execute("DELETE FROM meta WHERE key='build_complete'")
    c.commit()
    c.close()
    assert "has not finished" in one_line_error(run_cli("--db", str(db), "--finalize-only"))


def test_second_build_on_the_same_database_is_refused(tmp_path) -> None:
    from download_db.db.stagelock import stage_lock

    db = tmp_path / "x.db"
    with stage_lock(db, exclusive=True, what="init_download_db.py"):
        p = run_cli("--db", str(db), "--multimedia", str(PSILOCYBE))
    msg = one_line_error(p)
    assert "in use by init_download_db.py" in msg and "pid" in msg
    assert run_cli("--db", str(db), "--multimedia", str(PSILOCYBE)).returncode == 0


def test_sigterm_stops_at_a_chunk_boundary_and_the_rerun_finishes(tmp_path) -> None:
    import signal
    import sqlite3 as stdlib_sqlite3

    from tests.helpers import dump, generate

    mm = generate(tmp_path / "m.txt", 40_000, seed=11)  # ~11 chunks of 1 MB
    db = tmp_path / "x.db"
    args = [sys.executable, str(ROOT / "init_download_db.py"), "--db", str(db), "--multimedia",
            str(mm), "--chunk-mb", "1", "--no-bar"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    # "ingest: ..." is printed (flushed) once the run row is committed, before the load.
    out = ""
    while not out.startswith("ingest: "):
        out = proc.stdout.readline()  # type: ignore[union-attr]
        assert out, proc.communicate()[1]
    # Holding the write lock, the ingest cannot commit a chunk: the signal is certain to
    # land while chunks are left, and the ingest stops after the one it is loading.
    lock = stdlib_sqlite3.connect(db, timeout=60, isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")
        meta = dict(lock.execute("SELECT key, value FROM meta"))
        assert meta.get("ingest_phase", "loading") == "loading"
        assert int(meta.get("ingest_offset", 0)) < mm.stat().st_size
        proc.send_signal(signal.SIGTERM)
    finally:
        lock.close()  # rolls back: nothing was written
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    assert "run the same command again" in err and "Traceback" not in err
    assert q(db, "SELECT outcome FROM runs") == [("interrupted",)]
    stopped_at = int(q(db, "SELECT value FROM meta WHERE key = 'ingest_offset'")[0][0])
    assert 0 < stopped_at < mm.stat().st_size
    assert subprocess.run(args, cwd=ROOT, capture_output=True).returncode == 0
    clean = tmp_path / "clean.db"
    subprocess.run([*args[:3], str(clean), *args[4:]], cwd=ROOT, check=True, capture_output=True)
    assert dump(db) == dump(clean)
