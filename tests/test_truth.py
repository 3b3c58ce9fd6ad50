"""Telling the truth on screen: how a run ended, a run that saved nothing, throughput and ETA
from saved images, the first hour's chart and full host names, no stray lock files."""

from __future__ import annotations

import io
import os
import re
import signal
import threading

import pytest

from download_db.cli.main import download_main, init_main
from download_db.download.stage import run_download
from download_db.progress import Progress
from download_db.report import collect, rates
from download_db.report.html import _hbars, _timeline, render_html
from download_db.report.text import render_text
from tests.helpers import HEADER, config, make_db
from tests.imageserver import ImageServer


@pytest.fixture(scope="module")
def srv():
    with ImageServer("127.0.0.57") as s:
        yield s


def last_line(out: io.StringIO) -> str:
    return out.getvalue().strip().splitlines()[-1]


# --------------------------------------------------------------------------- how it ended


def test_a_signal_ends_with_interrupted_resumable_not_finished(tmp_path, srv) -> None:
    db = make_db(tmp_path, [srv.url(f"/slow/sig{i}.jpg?delay=0.5&w=64&h=64")
                            for i in range(40)])
    out = io.StringIO()
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()  # the stage's handlers run in this (the main) thread
    try:
        run_download(config(tmp_path, db, threads=1, per_host_rate=0), out)
    finally:
        timer.cancel()
    line = last_line(out)
    assert line.startswith("download: interrupted (resumable) after "), line
    assert "finished" not in line


def test_a_limit_says_which(tmp_path, srv) -> None:
    db = make_db(tmp_path, [srv.url(f"/img/lim{i}.jpg?w=64&h=64") for i in range(6)])
    out = io.StringIO()
    run_download(config(tmp_path, db, max_images=2, per_host_rate=0), out)
    assert last_line(out).startswith("download: stopped at --max-images after ")


def test_a_run_that_saved_nothing_says_so_on_screen_and_in_the_report(tmp_path, srv) -> None:
    db = make_db(tmp_path, [srv.url(f"/status/404?n={i}") for i in range(5)])
    out = io.StringIO()
    run_download(config(tmp_path, db, per_host_rate=0), out)
    line = last_line(out)
    assert line.startswith("download: finished after ")
    assert "NOTHING SAVED: all 5 attempts failed; the network or the hosts look down" in line
    conn = collect.open_readonly(db)
    try:
        d = collect.collect(conn, db=db)
    finally:
        conn.close()
    assert d["pipeline"]["state"] == "nothing saved"
    assert "the network or the hosts look down" in d["pipeline"]["headline"]
    assert "finished ok" not in render_text(d)
    page = render_html(d)
    assert "<div class='banner bad' id=pipeline>NOTHING SAVED" in page


# --------------------------------------------------------------------------- rates and ETA


def test_the_eta_counts_saved_images_and_a_short_day_is_not_divided_by_24() -> None:
    now = 1_000_000 * 60.0
    minute = int(now // 60)
    # two hours of work: 100 saved and 100 failed an hour, the last hour as well
    activity = {minute - m: [2, 1, 1, 1000] for m in range(120)}
    t = rates.throughput(activity, now, work_left=1000)
    assert t["last_hour"]["successes_per_hour"] == pytest.approx(60, rel=0.05)
    day = t["last_day"]
    assert day["covered_seconds"] == pytest.approx(7200, abs=61)
    assert day["successes_per_hour"] == pytest.approx(60, rel=0.05)  # not 120 / 24 = 5
    assert t["eta_seconds"] == pytest.approx(1000 / 60 * 3600, rel=0.05)  # saved, not attempts
    failing = {minute - m: [2, 0, 2, 0] for m in range(120)}
    t = rates.throughput(failing, now, work_left=1000)
    assert (t["eta_seconds"], t["eta_basis"]) == (None, None)  # no "ETA 32h" beside 0/hour


def test_the_progress_line_counts_saved_images() -> None:
    clock = iter(float(x) for x in range(0, 1000, 10))
    buf = io.StringIO()
    p = Progress("download", 100, counting=True, word="saved", every=0, stream=buf, bar=False,
                 clock=lambda: next(clock))
    p.update(0, 0, "0 ok, 50 failed")
    assert buf.getvalue().splitlines()[-1] == "download: 0/100 saved; 0 ok, 50 failed"
    p.update(10, 10, "10 ok, 50 failed")
    assert re.fullmatch(r"download: 10/100 saved; 10 ok, 50 failed, ETA \S+",
                        buf.getvalue().splitlines()[-1])


# --------------------------------------------------------------------------- the HTML page


def test_the_first_hour_is_not_the_whole_chart_and_its_labels_differ() -> None:
    hour = 1_800_000_000 // 3600 * 3600
    svg = _timeline([{"hour": hour, "attempts": 7, "successes": 5, "failures": 2, "bytes": 0}])
    widths = {float(w) for w in re.findall(r'<rect x="[^"]+" y="[^"]+" width="([^"]+)"', svg)}
    assert [round(w, 1) for w in widths] == [round(1000 / 12, 1)]  # one hour of twelve
    labels = re.findall(r'font-size="11"(?: text-anchor="end")?>([^<]+)</text>', svg)
    assert len(labels) == 3 and labels[0] != labels[1], labels


def test_host_names_are_not_cut() -> None:
    host = "images.very-long-institutional-hostname.herbarium.example.org"
    svg = _hbars("top failing hosts", [(host, 5, 1), ("short.example", 1, 1)])
    assert f">{host}</text>" in svg
    x0 = float(re.search(r'<rect x="([\d.]+)"', svg).group(1))
    assert x0 >= len(host) * 6  # the bars start after the label, not on top of it


# --------------------------------------------------------------------------- lock files


def test_no_stray_lock_files_after_a_failed_command(tmp_path, capsys) -> None:
    missing = tmp_path / "missing.db"
    assert download_main(["--db", str(missing), "--install-path", str(tmp_path / "i"),
                          "--lock-dir", str(tmp_path / "locks"), "--no-bar",
                          "--shard", "none", "--contact", "t@example.org"]) == 3
    header_only = tmp_path / "m.txt"
    header_only.write_text("\t".join(HEADER) + "\n\n")
    db = tmp_path / "d.db"
    assert init_main(["--db", str(db), "--multimedia", str(header_only), "--no-bar"]) == 2
    assert "has a header line but no data lines" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".lock")) == []
    assert not db.exists() and not missing.exists()


def test_the_lock_of_an_existing_database_stays(tmp_path, srv) -> None:
    db = make_db(tmp_path, [srv.url("/img/keep.jpg?w=64&h=64")])
    run_download(config(tmp_path, db))
    assert (tmp_path / "d.db.lock").exists()  # the lock of a live database is its lock
