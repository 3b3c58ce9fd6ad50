"""status_report.py: counters kept by triggers, read-only access, every section, JSON, HTML,
the integrity check, and query plans that never scan images."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

import pytest

from download_db.cli.main import status_main
from download_db.db import connection, meta, runs, schema, tallies
from download_db.db.sqlite import sqlite3
from download_db.report import collect
from download_db.report.check import check
from download_db.report.html import render_html
from download_db.report.text import render_text
from tests.helpers import generate, mutate_results

NOW = time.time()


@pytest.fixture
def db(build, tmp_path) -> Path:
    code, path = build(generate(tmp_path / "m.txt", 400, seed=3, hosts=6))
    assert code == 0
    return path


def _mutate(path: Path, seed: int, n: int = 300) -> None:
    mutate_results(path, seed, n, now=NOW)  # at the clock _collect reads with


def _collect(path: Path) -> dict:
    conn = collect.open_readonly(path)
    try:
        return collect.collect(conn, db=path, now=NOW)
    finally:
        conn.close()


# -- counters ---------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [1, 2, 3])
def test_counters_follow_every_write(db, seed) -> None:
    _mutate(db, seed)
    _mutate(db, seed + 10)  # changes of already changed rows
    conn = connection.connect(db)
    with connection.transaction(conn):  # deletes and user SQL go through the triggers too
        conn.execute("DELETE FROM images WHERE image_id IN (SELECT image_id FROM images "
                     "ORDER BY image_id DESC LIMIT 3)")
        conn.execute("UPDATE hosts SET n_images = (SELECT count(*) FROM images i "
                     "WHERE i.host_id = hosts.host_id)")
        conn.execute("UPDATE gbif_ids SET n_images = (SELECT count(*) FROM images i "
                     "WHERE i.gbif_id = gbif_ids.gbif_id)")
    conn.close()
    res = check(collect.open_readonly(db), None, files=False)
    assert res.ok, res.problems


def test_counters_match_a_recount(db) -> None:
    _mutate(db, 5)
    d = _collect(db)
    conn = sqlite3.connect(db)
    by = dict(conn.execute("SELECT status, count(*) FROM images GROUP BY status"))
    assert {k: v for k, v in d["images"]["by_status"].items() if v} == by
    assert d["images"]["raw_unprocessed"] == conn.execute(
        "SELECT count(*) FROM images WHERE error_type = 'raw_unprocessed'").fetchone()[0]
    assert d["images"]["budget_exhausted"] == conn.execute(
        "SELECT count(*) FROM images WHERE status = 'failed_transient' AND attempts = 4"
    ).fetchone()[0]
    assert d["images"]["bytes_saved"] == conn.execute(
        "SELECT sum(file_size) FROM images WHERE status = 'success'").fetchone()[0]
    assert d["gbif_ids"]["total"] == conn.execute("SELECT count(*) FROM gbif_ids").fetchone()[0]


def test_migration_from_v1_recounts_once(db) -> None:
    _mutate(db, 7)
    conn = sqlite3.connect(db, isolation_level=None)
    for name in [r[0] for r in conn.execute("SELECT name FROM sqlite_master "
                                             "WHERE type = 'trigger'")]:
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute("DROP TABLE image_tally")
    conn.execute("DROP TABLE gbif_tally")
    conn.execute("DROP TABLE activity")
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(Exception, match="without the report's counters"):
        collect.open_readonly(db)
    conn = connection.connect(db)
    assert schema.migrate(conn) == schema.SCHEMA_VERSION
    conn.close()
    assert check(collect.open_readonly(db), None, files=False).ok
    assert _collect(db)["throughput"]["last_day"]["attempts"] > 0


# -- read-only ---------------------------------------------------------------------------

def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_report_never_writes(db, tmp_path, capsys) -> None:
    _mutate(db, 1)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = DELETE")  # no -wal: every byte is in the main file
    conn.close()
    before = _sha(db)
    mtime = db.stat().st_mtime_ns
    files = sorted(p.name for p in db.parent.iterdir())
    for extra in ([], ["--json"], ["--html", str(tmp_path / "r.html")],
                  ["--check", "--no-files"]):
        assert status_main(["--db", str(db), *extra]) == 0, capsys.readouterr().err
    assert _sha(db) == before and db.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in db.parent.iterdir()) == sorted(files + ["r.html"])


def test_report_reads_while_a_writer_holds_the_lock(db, capsys) -> None:
    writer = connection.connect(db)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE images SET status = 'success' WHERE image_id = 1")
    t = time.monotonic()
    assert status_main(["--db", str(db), "--json"]) == 0
    assert time.monotonic() - t < 5
    assert json.loads(capsys.readouterr().out)["images"]["by_status"]["success"] == 0
    writer.execute("ROLLBACK")


def test_transient_read_errors_are_retried(db, monkeypatch) -> None:
    calls = {"n": 0}
    real = collect._collect

    def flaky(conn, now, tasks):
        calls["n"] += 1
        if calls["n"] < 3:
            raise sqlite3.OperationalError("disk I/O error")
        return real(conn, now, tasks)

    monkeypatch.setattr(collect, "READ_RETRIES", (0.01, 0.01, 0.01))
    monkeypatch.setattr(collect, "_collect", flaky)
    assert _collect(db)["images"]["total"] > 0 and calls["n"] == 3


def test_other_errors_are_not_retried(db, monkeypatch) -> None:
    def broken(conn, now, tasks):
        raise sqlite3.OperationalError("no such table: images")
    monkeypatch.setattr(collect, "_collect", broken)
    with pytest.raises(sqlite3.OperationalError):
        _collect(db)


@pytest.mark.parametrize("content,msg", [(None, "not found"), (b"hello", "database"),
                                          ("empty-sqlite", "not a download database")])
def test_bad_database_one_line_exit_3(tmp_path, capsys, content, msg) -> None:
    path = tmp_path / "x.db"
    if content == "empty-sqlite":
        sqlite3.connect(path).execute("CREATE TABLE t(x)").connection.close()
    elif content is not None:
        path.write_bytes(content * 1000)
    assert status_main(["--db", str(path)]) == 3
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1 and "Traceback" not in err


def test_flag_misuse_is_a_usage_error(db, capsys) -> None:
    assert status_main(["--db", str(db), "--full"]) == 64
    assert status_main(["--db", str(db), "--check", "--json"]) == 64


# -- sections ----------------------------------------------------------------------------

def _run(conn, stage, outcome, pid, hb, message=None):
    conn.execute("INSERT INTO runs(stage, started_at, heartbeat_at, hostname, pid, outcome, "
                 "message) VALUES (?, ?, ?, ?, ?, ?, ?)",
                 (stage, time.time(), hb, os.uname().nodename, pid, outcome, message))


@pytest.mark.parametrize("case,state,words", [
    ("alive", "running", "RUNNING"),
    ("dead_pid", "crashed", "CRASHED"),
    ("failed", "failed", "FAILED"),
    ("ok", "idle", "finished ok"),
])
def test_pipeline_state_is_first_and_loud(db, case, state, words) -> None:
    conn = connection.connect(db)
    with connection.transaction(conn):
        conn.execute("DELETE FROM runs WHERE stage = 'ingest' AND run_id > 1")
        if case == "alive":
            _run(conn, "download", "running", os.getpid(), NOW)
        elif case == "dead_pid":
            _run(conn, "download", "running", 2**22 + 12345, NOW)
        elif case == "failed":
            _run(conn, "finalize", "failed", 1, NOW, "OSError: disk full")
        else:
            _run(conn, "download", "ok", 1, NOW)
    conn.close()
    d = _collect(db)
    assert d["pipeline"]["state"] == state
    assert words in d["pipeline"]["headline"]
    text = render_text(d)
    assert text.index(words) < text.index("GBIFID PROGRESS")


def test_pipeline_shows_each_stage_and_the_ones_not_run_first(db, capsys) -> None:
    conn = connection.connect(db)
    run_id = runs.start_run(conn, "download")
    runs.finish_run(conn, run_id, runs.FAILED, None, "StorageError: /data: disk full")
    runs.record_not_run(conn, "finalize", f"download run {run_id} on n1 failed: StorageError")
    conn.close()
    d = _collect(db)
    p = d["pipeline"]
    assert [s["stage"] for s in p["stages"]] == ["ingest", "download", "finalize"]
    st = {s["stage"]: s for s in p["stages"]}
    assert st["ingest"]["state"] == "ok" and st["ingest"]["depends_on"] is None
    assert st["ingest"]["duration_seconds"] == round(st["ingest"]["finished_at"]
                                                     - st["ingest"]["started_at"], 1)
    assert (st["download"]["state"], st["download"]["depends_on"]) == ("failed", "ingest")
    assert st["download"]["message"] == "StorageError: /data: disk full"
    assert (st["finalize"]["state"], st["finalize"]["depends_on"]) == (
        "prerequisite_failed", "download")
    assert p["prerequisite_failed"] == ["finalize"] and p["state"] == "prerequisite_failed"
    assert p["headline"].startswith("NOT RUN: finalize (run ")
    assert "because a stage it depends on failed: download run" in p["headline"]

    text = render_text(d)
    first = text.index("GBIFID PROGRESS")
    for words in ("!!! NOT RUN: finalize", "StorageError: /data: disk full",
                  "prerequisite_failed", "not run because a stage they depend on failed: "
                  "finalize"):
        assert -1 < text.index(words) < first, words
    assert status_main(["--db", str(db), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert list(data).index("pipeline") < list(data).index("gbif_ids")
    assert data["pipeline"]["prerequisite_failed"] == ["finalize"]
    assert [s["outcome"] for s in data["pipeline"]["stages"]] == [
        "ok", "failed", "prerequisite_failed"]
    page = render_html(d)
    first = page.index("<h2>Progress")
    for words in ("NOT RUN: finalize", "<table id=stages>", "StorageError: /data: disk full",
                  "Not run because a stage they depend on failed: finalize"):
        assert -1 < page.index(words) < first, words


def test_pipeline_state_empty(tmp_path) -> None:
    path = tmp_path / "e.db"
    conn = connection.connect(path)
    schema.create_schema(conn)
    with connection.transaction(conn):
        meta.set_meta(conn, "ingest_phase", "done")
        tallies.install_tallies(conn, fresh_load=True)
    conn.close()
    d = _collect(path)
    assert d["pipeline"]["state"] == "empty" and "nothing ingested yet" in d["pipeline"]["headline"]
    assert d["throughput"]["eta_seconds"] == 0 and d["images"]["total"] == 0
    render_text(d), render_html(d)


def test_sections(db) -> None:
    _mutate(db, 11, n=600)
    d = _collect(db)
    types = {(f["error_type"], f["status"]): f["retryable"] for f in d["failures"]}
    assert types[("http_404", "failed_permanent")] is False
    assert types[("timeout", "failed_transient")] is True
    assert [r["budget_exhausted"] for r in d["retries"]] == [False, False, False, True]
    assert sum(r["count"] for r in d["retries"]) == d["images"]["by_status"]["failed_transient"]
    nonimg = {h["host"]: h for h in d["non_image_by_host"]}
    sampled = [h for h in nonimg.values() if "<script>" in h["sample"]]
    assert sampled and all(h["count"] > 0 for h in nonimg.values())
    top = d["top_failing_hosts"]
    assert top == sorted(top, key=lambda h: (-h["failed"], h["host"]))
    assert all(0 < h["failure_rate"] <= 1 for h in top)
    assert len(d["hosts_cooling_down"]) == 1 and len(d["hosts_quarantined"]) == 1
    assert d["hosts_cooling_down"][0]["reason"] == "HTTP 429 Retry-After"
    assert d["images"]["in_flight"] == 1
    t = d["throughput"]
    assert t["last_day"]["attempts"] >= t["last_hour"]["attempts"] > 0
    assert t["eta_seconds"] > 0 and t["eta_basis"] == "last hour"
    total = sqlite3.connect(db).execute("SELECT sum(attempts) FROM activity").fetchone()[0]
    assert sum(h["attempts"] for h in d["history"]) == total >= t["last_day"]["attempts"]
    text = render_text(d)
    titles = ["PIPELINE", "GBIFID PROGRESS", "DISTINCT-IMAGE PROGRESS", "THROUGHPUT",
              "FAILURES BY TYPE", "RETRY ATTEMPTS", "NON-IMAGE RESPONSES BY HOST",
              "TOP FAILING HOSTS", "HOSTS COOLING DOWN", "QUARANTINED HOSTS", "NOTES"]
    assert [text.index(t) for t in titles] == sorted(text.index(t) for t in titles)
    assert "budget exhausted" in text and "raw files awaiting conversion" in text


def test_json_is_the_documented_object(db, capsys) -> None:
    _mutate(db, 2)
    assert status_main(["--db", str(db), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    doc = (Path(__file__).parent.parent / "docs" / "commands.md").read_text()
    assert doc.count("\n### JSON output\n") == 1, "docs/commands.md lost its JSON output section"
    section = doc.split("\n### JSON output\n", 1)[1].split("\n#", 1)[0]
    for key in data:
        assert f"`{key}`" in section, f"top-level JSON key {key} is not documented"


def test_output_dir_keeps_a_dated_copy(db, tmp_path, capsys) -> None:
    out = tmp_path / "reports"
    assert status_main(["--db", str(db), "--output-dir", str(out)]) == 0
    (f,) = out.iterdir()
    assert re.fullmatch(r"summary_\d{12}\.txt", f.name)
    assert f.read_text() == capsys.readouterr().out


def test_html_escapes_remote_text(db, tmp_path) -> None:
    _mutate(db, 4)
    page = tmp_path / "r.html"
    assert status_main(["--db", str(db), "--html", str(page)]) == 0
    html = page.read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "http://" not in html.replace("http://www.w3.org", "")  # nothing fetched at view time
    assert html.count("<svg") >= 4


# -- query plans -------------------------------------------------------------------------

def test_report_queries_never_scan_images(db) -> None:
    """Every statement the report runs, explained: images and gbif_ids are reached only
    through small partial indexes, never scanned (52M rows in production)."""
    _mutate(db, 3)
    seen: list[str] = []
    conn = collect.open_readonly(db)
    conn.set_trace_callback(seen.append)
    collect.collect(conn, db=db, now=NOW)
    conn.set_trace_callback(None)
    plans = {}
    for sql in {s for s in seen if s.lstrip().upper().startswith("SELECT")}:
        params = sql.count("?")
        plans[sql] = [r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", (0,) * params)]
    touching = {s: p for s, p in plans.items() if re.search(r"\b(images|gbif_ids)\b", s)}
    assert touching, "expected the in-flight count"
    for sql, plan in plans.items():
        for line in plan:
            assert not re.match(r"SCAN (images|gbif_ids)\b(?! USING COVERING INDEX "
                                r"images_claimed)", line), (sql, plan)
    conn.close()


# -- integrity check ---------------------------------------------------------------------

def _files_for_success_rows(db: Path, root: Path) -> None:
    conn = sqlite3.connect(db)
    for path, size in conn.execute("SELECT file_path, file_size FROM images "
                                   "WHERE status = 'success'"):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(b"x" * size)
    conn.close()


def test_check_clean_then_each_disagreement(db, tmp_path, capsys) -> None:
    root = tmp_path / "images"
    conn = connection.connect(db)
    with connection.transaction(conn):
        for i, (gid, no) in enumerate(conn.execute(
                "SELECT gbif_id, image_no FROM images LIMIT 20").fetchall()):
            rel = f"{str(gid)[:3]}/{str(gid)[3:6]}/{gid}-{no:02d}.jpg"
            conn.execute("UPDATE images SET status = 'success', attempts = 1, file_path = ?, "
                         "file_size = ? WHERE gbif_id = ? AND image_no = ?", (rel, 10 + i, gid, no))
    conn.close()
    _files_for_success_rows(db, root)
    args = ["--db", str(db), "--check", "--install-path", str(root)]
    assert status_main(args) == 0
    assert "OK" in capsys.readouterr().out

    victim = next(p for p in root.rglob("*.jpg"))
    temp = victim.with_name(victim.name + ".gid-00.1-2.part")
    temp.write_bytes(b"partial")
    assert status_main(args) == 1
    assert "temporary .part files" in capsys.readouterr().out
    temp.unlink()

    victim.unlink()
    assert status_main(args) == 1
    out = capsys.readouterr()
    assert "success rows have no file" in out.out and "integrity check failed" in out.err
    victim.write_bytes(b"x" * 10)  # wrong size

    conn = sqlite3.connect(db)
    conn.execute("UPDATE image_tally SET n = n + 1 WHERE rowid IN (SELECT rowid FROM "
                 "image_tally LIMIT 1)") if False else conn.execute(
        "UPDATE image_tally SET n = n + 1 WHERE status = 'pending' AND host_id = "
        "(SELECT min(host_id) FROM image_tally WHERE status = 'pending')")
    conn.commit()
    conn.close()
    assert status_main(args + ["--full"]) == 1
    out = capsys.readouterr().out
    assert "image counter" in out and "differ in size" in out and "integrity_check: ok" in out


def test_derive_and_export_runs_show_in_the_pipeline(db) -> None:
    conn = connection.connect(db)
    dl = runs.start_run(conn, "download")
    runs.finish_run(conn, dl, runs.OK, {"success": 0, "failed_transient": 40})
    for stage in ("export", "derive"):
        run_id = runs.start_run(conn, stage)
        runs.finish_run(conn, run_id, runs.OK, {"images": 0})
    conn.close()
    p = _collect(db)["pipeline"]
    assert [s["stage"] for s in p["stages"]] == ["ingest", "download", "derive", "export"]
    # an ok export or derive of what is there says nothing about the download
    assert p["state"] == "nothing saved" and f"run {dl} " in p["headline"]
    text = render_text(_collect(db))
    rows = [ln.split() for ln in text.split("GBIFID PROGRESS")[0].splitlines()]
    assert [r[:3] for r in rows if r and r[0] in ("derive", "export")] == [
        ["derive", str(dl + 2), "ok"], ["export", str(dl + 1), "ok"]]

    conn = connection.connect(db)
    run_id = runs.start_run(conn, "export")
    runs.finish_run(conn, run_id, runs.FAILED, {"images": 3},
                    "OSError: [Errno 28] No space left on device")
    conn.close()
    d = _collect(db)
    assert d["pipeline"]["state"] == "failed"
    assert d["pipeline"]["headline"] == (
        f"FAILED: the last run (export, run {run_id} on {os.uname().nodename}) failed: "
        "OSError: [Errno 28] No space left on device")
    assert "No space left on device" in render_html(d).split("<h2>Progress")[0]
