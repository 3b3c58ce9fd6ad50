"""Every stage says what happened: Slack start/end/failure of ingest, merge and finalize,
their runs rows (outcome, message, depends_on), and prerequisite_failed."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from download_db.arrays import plan
from download_db.cli.main import main
from download_db.db import connection, runs
from tests.helpers import SECRET, Webhook, make_db, q, row, write_multimedia

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def hook(monkeypatch):
    w = Webhook()
    monkeypatch.setenv("SLACK_WEBHOOK_URL", w.url)
    yield w
    w.close()


@pytest.fixture
def db(tmp_path) -> Path:
    return make_db(tmp_path, [f"http://127.0.0.9/img/{i}.jpg" for i in range(6)])


def _runs(db: Path) -> list[tuple]:
    return q(db, "SELECT stage, outcome, message, depends_on FROM runs ORDER BY run_id")


def _failed_task(db: Path, k: int = 2, n: int = 2) -> None:
    """An array task whose download ended failed, as a full disk leaves it."""
    shard = plan.Shard(k, n)
    path = plan.task_db_path(plan.tasks_dir_for(db), shard)
    plan.create_task_db(db, path, shard, max_parts=2)
    conn = connection.connect(path, wal=False)
    run_id = runs.start_run(conn, "download")
    runs.finish_run(conn, run_id, runs.FAILED, None, "StorageError: /data: disk full")
    conn.close()


def test_ingest_posts_start_and_end_and_records_its_run(tmp_path, hook, capfd) -> None:
    mm = write_multimedia(tmp_path / "m.txt", [row(5001 + i, f"http://127.0.0.9/{i}.jpg")
                                               for i in range(4)])
    db = tmp_path / "n.db"
    assert main(["ingest", "--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
    start, end = hook.wait_for(2)
    assert "ingest started: m.txt into n.db" in start
    assert "ingest finished after" in end and "4 distinct images from 4 lines" in end
    assert _runs(db) == [("ingest", "ok", None, None)]
    out, err = capfd.readouterr()
    assert "SECRET" not in out + err and "SLACK_WEBHOOK_URL" not in err


def test_ingest_of_a_missing_file_posts_the_one_line_error(tmp_path, hook, capsys) -> None:
    missing = tmp_path / "nowhere" / "multimedia.txt"
    assert main(["ingest", "--db", str(tmp_path / "n.db"), "--multimedia", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    start, failed = hook.wait_for(2)
    assert "ingest started" in start
    line = err.split("error: ", 1)[1]  # the line the user sees, after the program name
    assert failed.split("] ", 1)[1].startswith(":x: ingest failed after")
    assert failed.endswith(f"InputError: {line}"), (failed, err)
    assert not (tmp_path / "n.db").exists()


def test_merge_and_finalize_post_start_and_end_with_depends_on(db, hook) -> None:
    assert main(["merge", "--db", str(db)]) == 0
    assert main(["finalize", "--db", str(db), "--no-bar"]) == 0
    texts = hook.wait_for(4)
    assert [t.split("] ", 1)[1].split(" after")[0].split(":")[1] for t in texts] == [
        "arrow_forward", "checkered_flag", "arrow_forward", "checkered_flag"]
    assert "merge started" in texts[0] and "merged 0 task databases" in texts[1]
    assert "finalize started" in texts[2] and "6 gbifIDs rolled up" in texts[3]
    assert _runs(db)[1:] == [("merge", "ok", None, "download"),
                             ("finalize", "ok", None, "download")]
    assert all(SECRET not in str(r) for r in _runs(db))


def test_no_webhook_no_posts_and_no_error(db, tmp_path, monkeypatch, capsys) -> None:
    def no_network(*a, **k):
        raise AssertionError("no webhook: nothing may be sent")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.chdir(tmp_path)  # no .env up from here
    assert main(["finalize", "--db", str(db), "--no-bar"]) == 0
    assert main(["merge", "--db", str(db)]) == 0
    assert main(["ingest", "--db", str(tmp_path / "x.db"), "--multimedia", "nope.txt"]) == 2
    assert "warning" not in capsys.readouterr().err


def test_finalize_after_a_failed_array_task_is_not_run_and_says_which(db, hook,
                                                                      capsys) -> None:
    _failed_task(db)
    assert main(["finalize", "--db", str(db), "--no-bar"]) == 3
    err = capsys.readouterr().err
    assert "finalize not run: array task task-0002-of-0002.db" in err and "--force" in err
    stage, outcome, message, depends_on = _runs(db)[-1]
    assert (stage, outcome, depends_on) == ("finalize", "prerequisite_failed", "download")
    assert message.startswith("array task task-0002-of-0002.db: download run 1 on ")
    assert message.endswith(" failed: StorageError: /data: disk full")
    start, not_run = hook.wait_for(2)
    assert "finalize started" in start and ":no_entry_sign: finalize not run" in not_run
    assert "disk full" in not_run
    # the same for merge; --force merges anyway, and the task's failed run comes along
    assert main(["merge", "--db", str(db)]) == 3
    assert _runs(db)[-1][:2] == ("merge", "prerequisite_failed")
    assert main(["finalize", "--db", str(db), "--no-bar", "--force"]) == 0
    assert ("download", "failed", "StorageError: /data: disk full", "ingest") in _runs(db)
    assert [r[1] for r in _runs(db) if r[0] == "finalize"] == ["prerequisite_failed", "ok"]
    assert main(["finalize", "--db", str(db), "--no-bar"]) == 0  # merged: history now


def test_download_on_an_unfinished_build_is_not_run_and_names_the_ingest(tmp_path,
                                                                         capsys) -> None:
    db = make_db(tmp_path, ["http://127.0.0.9/a.jpg"])
    conn = connection.connect(db)
    with connection.transaction(conn):  # the state a killed or failed build leaves
        conn.execute("UPDATE meta SET value = 'loading' WHERE key = 'ingest_phase'")
        conn.execute("DELETE FROM meta WHERE key = 'build_complete'")
        conn.execute("UPDATE runs SET outcome = 'failed', message = 'InputError: bad row' "
                     "WHERE stage = 'ingest'")
    conn.close()
    assert main(["download", "--db", str(db), "--install-path", str(tmp_path / "i"),
                 "--no-bar", "--contact", "t@example.org"]) == 3
    assert "download not run: the build of" in capsys.readouterr().err
    stage, outcome, message, depends_on = _runs(db)[-1]
    assert (stage, outcome, depends_on) == ("download", "prerequisite_failed", "ingest")
    assert "(last ingest run 1 on " in message and "failed: InputError: bad row" in message
    assert main(["finalize", "--db", str(db), "--no-bar"]) == 3
    assert _runs(db)[-1][:2] == ("finalize", "prerequisite_failed")


def test_event_without_a_database_warns_and_exits_0(tmp_path, hook, capsys) -> None:
    assert main(["event", "--db", str(tmp_path / "none.db"), "--event", "skipped",
                 "--stage", "download.3", "--message", "ingest FAILED: exit 2"]) == 0
    assert "no database at" in capsys.readouterr().err
    (text,) = hook.wait_for(1)
    assert "download.3 not run" in text and "ingest FAILED: exit 2" in text
    assert not (tmp_path / "none.db").exists() and not (tmp_path / "none.db.lock").exists()
