"""The adaptive limit wired in: shared through the gate's state files, fed by the worker, held
end to end by the downloader against loopback hosts."""

from __future__ import annotations

import json
import sqlite3 as stdlib_sqlite3
import threading

from download_db.cli.main import main
from download_db.config import DownloadConfig
from download_db.db.claims import Item
from download_db.db.connection import connect
from download_db.db.schema import SCHEMA_VERSION, apply_migration, migrate
from download_db.download.stage import run_download
from download_db.download.worker import Worker, WorkerConfig
from download_db.web import fetch
from download_db.web.adaptive import OK, OVERLOAD
from download_db.web.policy import HostLimits, HostPolicy
from download_db.web.politeness import HostGate, Politeness, Slot
from tests.helpers import row, write_multimedia
from tests.imageserver import ImageServer


def adaptive_policy(start: int = 2, most: int = 8) -> HostPolicy:
    return HostPolicy(HostLimits(4, 0.0), {"a.org": {"adaptive": True, "start": start,
                                                      "max_at_once": most}})


def test_the_limit_is_shared_by_every_gate_on_the_lock_dir(tmp_path):
    one = HostGate(tmp_path / "locks", Politeness(), hosts=adaptive_policy())
    two = HostGate(tmp_path / "locks", Politeness(), hosts=adaptive_policy())  # a 2nd process
    try:
        assert (one.concurrency("a.org"), one.concurrency("b.org")) == (2, 4)
        for _ in range(40):
            one.adapt("a.org", OK, 0.05, None)
        grown = one.concurrency("a.org")
        assert grown > 2
        slot = two.acquire("a.org", 0.0)  # reading the state file shows the other's limit
        assert isinstance(slot, Slot)
        assert two.concurrency("a.org") == grown
        two.adapt("a.org", OVERLOAD, None, None)
        slot.release()
        one.acquire("a.org", 0.0).release()  # type: ignore[union-attr]
        assert one.concurrency("a.org") == max(1, grown // 2)
        assert (one.state("a.org")["limit"], one.in_flight("a.org")) == (grown / 2, 0)
    finally:
        one.close()
        two.close()


def test_the_worker_halves_a_host_that_answers_503(tmp_path):
    with ImageServer("127.0.0.16") as srv:
        policy = HostPolicy(HostLimits(4, 0.0), {srv.host: {"adaptive": True, "start": 6}})
        gate = HostGate(tmp_path / "locks", Politeness(), hosts=policy)
        limits = fetch.Limits(connect_timeout=2.0, read_timeout=5.0, deadline=10.0)
        session = fetch.new_session(limits)

        class NoWriter:
            def host_state(self, host: str, **fields) -> None:
                pass

        worker = Worker(WorkerConfig(root=tmp_path / "images", limits=limits), gate,
                        NoWriter(), threading.Event(), session)
        try:
            assert gate.concurrency(srv.host) == 4  # start 6, but never above max_at_once
            item = Item(image_id=1, gbif_id=1234567890, image_no=0, status="pending",
                        attempts=0, error_type=None, host_id=1, urls=[srv.url("/status/503")])
            slot = gate.acquire(srv.host)
            assert isinstance(slot, Slot)
            worker.process(item, slot)
            assert gate.concurrency(srv.host) == 2
        finally:
            session.close()
            gate.close()


def test_an_adaptive_host_never_has_more_at_once_than_its_max_and_its_limit_is_reported(
        tmp_path, capsys):
    with ImageServer("127.0.0.17") as srv:
        urls = [srv.url(f"/slow/a{i}.jpg?delay=0.2&w=64&h=64") for i in range(40)]
        mm = write_multimedia(tmp_path / "m.txt", [row(1001 + i, u) for i, u in enumerate(urls)])
        db = tmp_path / "d.db"
        assert main(["ingest", "--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
        policy = tmp_path / "limits.toml"
        policy.write_text(f'[hosts."{srv.host}"]\nmax_at_once = 3\nstart = 1\n',
                          encoding="utf-8")
        cfg = DownloadConfig(db=db, install_path=tmp_path / "images", threads=12,
                             connect_timeout=2, read_timeout=3, deadline=6, lease=30,
                             wait_for_retries=0, lock_dir=tmp_path / "locks",
                             progress_every=1000, bar=False, user_agent="tests",
                             host_policy=policy, adaptive=True)
        run_download(cfg)
        assert srv.stats()["max_concurrent"] <= 3
    c = stdlib_sqlite3.connect(db)
    try:
        assert c.execute("SELECT count(*) FROM images WHERE status = 'success'").fetchone()[0] \
            == len(urls)
        (limit,) = c.execute("SELECT concurrency_limit FROM hosts WHERE host = ?",
                             (srv.host,)).fetchone()
    finally:
        c.close()
    assert 1 <= limit <= 3  # recorded for the report
    capsys.readouterr()
    assert main(["report", "--db", str(db), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["host_limits"]
    assert [(h["host"], h["limit"]) for h in shown] == [(srv.host, limit)]
    assert main(["report", "--db", str(db)]) == 0
    assert f"{srv.host}" in capsys.readouterr().out.split("ADAPTIVE LIMITS")[1]


def test_migration_10_adds_the_hosts_limit_column(tmp_path):
    """Its own step on a database without the column (other migrations have their tests)."""
    mm = write_multimedia(tmp_path / "m.txt", [row(1001, "https://a.org/x.jpg")])
    db = tmp_path / "d.db"
    assert main(["ingest", "--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
    conn = stdlib_sqlite3.connect(db, isolation_level=None)
    conn.execute("ALTER TABLE hosts DROP COLUMN concurrency_limit")
    apply_migration(conn, 9)
    assert "concurrency_limit" in {r[1] for r in conn.execute("PRAGMA table_info(hosts)")}
    conn.close()
    c = connect(db)
    try:
        assert migrate(c) == SCHEMA_VERSION  # a current database: nothing to do
    finally:
        c.close()
