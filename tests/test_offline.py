"""A node without network: the detector on its own (failures in, verdict out), then whole runs
whose every host fails DNS, and whose loopback servers vanish and come back."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from download_db.cli.main import download_main
from download_db.download.offline import HOST, OFFLINE, UNSURE, OfflineDetector
from download_db.download.stage import run_download
from download_db.errors import NetworkDown
from tests.helpers import config, make_db, q
from tests.imageserver import ImageServer

U = "http://h{}.example.org/img/{}.jpg"


def off(d: OfflineDetector, url: str, now: float) -> bool:
    return d.failure(url, now) == OFFLINE


# --------------------------------------------------------------------------- the detector


def test_three_hosts_failing_at_once_is_offline_two_are_not() -> None:
    d = OfflineDetector(hosts_in_run=50)
    assert not off(d, U.format(1, "a"), 100.0)
    assert not off(d, U.format(1, "b"), 100.5)  # the same host again: still one
    assert not off(d, U.format(2, "a"), 101.0)
    assert off(d, U.format(3, "a"), 102.0)
    assert d.offline and d.failing_hosts() == ["h1.example.org", "h2.example.org",
                                               "h3.example.org"]


def test_an_answer_in_between_says_the_network_works() -> None:
    d = OfflineDetector(hosts_in_run=50)
    off(d, U.format(1, "a"), 100.0)
    off(d, U.format(2, "a"), 100.0)
    d.answer(U.format(9, "ok"), 0.0)
    assert not off(d, U.format(3, "a"), 101.0)
    assert not off(d, U.format(4, "a"), 101.0)
    assert off(d, U.format(5, "a"), 101.0)


def test_before_any_answer_a_failure_is_not_the_hosts_after_one_it_is() -> None:
    d = OfflineDetector(hosts_in_run=50, window=60.0)
    assert d.failure(U.format(1, "a"), 0.0) == UNSURE  # maybe a node without network
    d.answer(U.format(9, "ok"), 1.0)
    assert d.failure(U.format(1, "b"), 2.0) == HOST  # servers answer: this one does not
    assert d.failure(U.format(1, "c"), 100.0) == UNSURE  # no answer for a while


def test_old_failures_say_nothing_about_now() -> None:
    d = OfflineDetector(hosts_in_run=50, window=60.0)
    off(d, U.format(1, "a"), 0.0)
    off(d, U.format(2, "a"), 10.0)
    assert not off(d, U.format(3, "a"), 65.0)
    assert off(d, U.format(4, "a"), 66.0)


def test_a_run_of_one_host_cannot_tell_and_two_hosts_need_both() -> None:
    one = OfflineDetector(hosts_in_run=1)
    assert not any(off(one, U.format(1, i), float(i)) for i in range(20))
    two = OfflineDetector(hosts_in_run=2)
    assert not off(two, U.format(1, "a"), 0.0)
    assert off(two, U.format(2, "a"), 0.0)


def test_back_online_hosts_that_still_fail_are_dead_publishers() -> None:
    d = OfflineDetector(hosts_in_run=50)
    for h in (1, 2, 3):
        off(d, U.format(h, "a"), 0.0)
    assert d.back_online({"h2.example.org"}) == ["h1.example.org", "h3.example.org"]
    assert not d.offline
    # the dead ones no longer count; a fresh outage needs three others
    assert not off(d, U.format(1, "b"), 1.0)
    assert not off(d, U.format(3, "b"), 1.0)
    assert not off(d, U.format(4, "b"), 1.0)
    assert not off(d, U.format(5, "b"), 1.0)
    assert off(d, U.format(6, "b"), 1.0)


def test_probe_asks_what_answered_then_busy_hosts_then_the_failing() -> None:
    d = OfflineDetector(hosts_in_run=50)
    d.answer(U.format(7, "old"), 0.0)
    d.answer(U.format(8, "new"), 0.0)
    for h in (1, 2, 3):
        off(d, U.format(h, "a"), 0.0)
    urls = d.probe_urls(["h1.example.org", "h8.example.org", "big.example.org",
                         "b2.example.org"], n_busiest=2)
    assert urls == [U.format(8, "new"), U.format(7, "old"), "https://big.example.org/",
                    "https://b2.example.org/", U.format(1, "a"), U.format(2, "a"),
                    U.format(3, "a")]


EVENTS = st.lists(st.tuples(st.sampled_from(["fail", "answer"]), st.integers(0, 5),
                            st.floats(0, 30)), max_size=40)


@given(EVENTS)
def test_the_verdict_is_the_rule(events) -> None:
    """Offline exactly when, since the last answer before the verdict, three distinct hosts
    failed within the window (then it stays so until back_online); otherwise unsure while
    no server answered within the window, else the host's own failure."""
    d = OfflineDetector(hosts_in_run=6, window=10.0)
    now, failing, offline, answered = 0.0, {}, False, None
    for kind, host, dt in events:
        now += dt
        url = U.format(host, "x")
        if kind == "answer":
            d.answer(url, now)
            answered = now
            if not offline:
                failing = {}
            continue
        failing[host] = now
        offline = offline or sum(now - t <= 10.0 for t in failing.values()) >= 3
        expected = OFFLINE if offline else UNSURE if answered is None or \
            now - answered > 10.0 else HOST
        assert d.failure(url, now) == expected


# --------------------------------------------------------------------------- whole runs


def fast(tmp_path, db, **kw):
    return config(tmp_path, db, threads=4, offline_probe_every=0.3, **kw)


def test_every_host_failing_dns_pauses_spends_nothing_and_exits_with_its_code(tmp_path) -> None:
    urls = [f"http://img{h}.gbif-test.invalid/{i}.jpg" for h in range(4) for i in range(5)]
    db = make_db(tmp_path, urls)
    out = io.StringIO()
    t0 = time.monotonic()
    with pytest.raises(NetworkDown) as e:
        run_download(fast(tmp_path, db, offline_timeout=2.0), out)
    assert time.monotonic() - t0 < 30
    assert e.value.exit_code == 69
    assert "network has been down" in str(e.value)
    assert "network looks down" in out.getvalue()
    # no server ever answered: no failure was the hosts', none cost an attempt
    assert q(db, "SELECT status, attempts, claimed_by FROM images") == \
        [("pending", 0, None)] * len(urls)
    assert q(db, "SELECT count(*) FROM hosts WHERE breaker_state = 'open' "
                 "OR quarantined = 1")[0][0] == 0
    assert q(db, "SELECT outcome FROM runs WHERE stage = 'download'") == [("failed",)]


def test_the_cli_exits_69_with_one_line(tmp_path, capsys) -> None:
    urls = [f"http://cli{h}.gbif-test.invalid/{i}.jpg" for h in range(3) for i in range(3)]
    db = make_db(tmp_path, urls)
    code = download_main(["--db", str(db), "--install-path", str(tmp_path / "images"),
                          "--lock-dir", str(tmp_path / "locks"), "--no-bar",
                          "--offline-timeout", "1", "--wait-for-retries", "0",
                          "--shard", "none", "--contact", "tests@example.org"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 69
    assert err[-1].startswith("image_install_db.py: error: the network has been down") \
        or "error: the network has been down" in err[-1], err


def test_servers_that_vanish_and_come_back_resume_the_run(tmp_path) -> None:
    servers = [ImageServer(f"127.0.0.{50 + k}").start() for k in range(3)]
    ports = [s.port for s in servers]
    urls = [s.url(f"/img/back{k}-{i}.jpg?w=64&h=64") for k, s in enumerate(servers)
            for i in range(6)]
    for s in servers:
        s.stop()  # the node "loses its network": every connection is refused
    db = make_db(tmp_path, urls)
    out = io.StringIO()
    result: dict = {}

    def run() -> None:
        try:
            result["counts"] = run_download(fast(tmp_path, db, offline_timeout=60.0,
                                                 per_host_rate=0), out)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            result["error"] = e

    t = threading.Thread(target=run)
    t.start()
    try:
        end = time.monotonic() + 30
        while "network looks down" not in out.getvalue() and time.monotonic() < end:
            time.sleep(0.05)
        assert "network looks down" in out.getvalue()
        time.sleep(1.0)  # a few probes fail
        servers = [ImageServer(f"127.0.0.{50 + k}", p).start() for k, p in enumerate(ports)]
        t.join(60)
    finally:
        for s in servers:
            s.stop()
    assert not t.is_alive()
    assert "error" not in result, result
    assert "network back after" in out.getvalue()
    # nothing answered before the outage, so no failure cost an attempt
    assert q(db, "SELECT status, attempts FROM images") == [("success", 1)] * len(urls)
    assert q(db, "SELECT count(*) FROM hosts WHERE breaker_state = 'open'")[0][0] == 0


def test_a_lone_dead_host_among_live_ones_is_its_own_failure(tmp_path) -> None:
    with ImageServer("127.0.0.54") as srv:
        urls = [srv.url(f"/img/live{i}.jpg?w=64&h=64") for i in range(6)] + \
            ["http://gone.gbif-test.invalid/x.jpg"]
        db = make_db(tmp_path, urls)
        out = io.StringIO()
        run_download(replace(fast(tmp_path, db), threads=2), out)
    assert "network looks down" not in out.getvalue()
    assert q(db, "SELECT status, error_type, attempts FROM images WHERE error_type IS NOT NULL"
             ) == [("failed_transient", "dns_error", 1)]


@pytest.mark.parametrize(("script", "env", "hint"), [
    ("sge", {"SGE_TASK_ID": "2", "SGE_TASK_FIRST": "1", "SGE_TASK_LAST": "4",
             "SGE_TASK_STEPSIZE": "1", "JOB_ID": "77"},
     "qsub -t 2 -l 'h=!{host}' scripts/sge/image_install_db.sh --shard 2/4"),
    ("slurm", {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "1",
               "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_JOB_ID": "77"},
     "sbatch --array=2 --exclude={host} scripts/slurm/image_install_db.sh --shard 2/4"),
])
def test_the_job_wrapper_names_the_node_and_how_to_run_elsewhere(tmp_path, script, env,
                                                                 hint) -> None:
    """Run by hand, as a job would run it (no scheduler needed)."""
    root = Path(__file__).resolve().parents[1]
    db = make_db(tmp_path, [f"http://w{h}.gbif-test.invalid/{i}.jpg" for h in range(3)
                            for i in range(2)])
    activate = Path(sys.prefix) / "bin" / "activate"
    (tmp_path / "env.sh").write_text(f"""DOWNLOAD_DB_HOME='{root}'
source '{activate}'
DB='{db}'
INSTALL_PATH='{tmp_path}/images'
LOG_DIR='{tmp_path}/logs'
MULTIMEDIA=
NICE=0
PROGRESS_EVERY=60
INGEST_ARGS=() FINALIZE_ARGS=() REPORT_ARGS=() CHECK_ARGS=()
DOWNLOAD_ARGS=(--shard none --offline-timeout 1 --lock-dir '{tmp_path}/locks'
               --contact t@example.org)
QSUB_ARGS=() SBATCH_ARGS=()
""")
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("SGE_", "SLURM_", "PIPELINE_DIR", "DOWNLOAD_DB_ENV", "JOB_"))}
    r = subprocess.run(["bash", str(root / f"scripts/{script}/image_install_db.sh")],
                       capture_output=True, text=True, timeout=120, cwd=root,
                       env={**clean, **env, "DOWNLOAD_DB_ENV": str(tmp_path / "env.sh")})
    assert r.returncode == 69, r.stderr
    host = socket.gethostname().split(".")[0]
    assert f"node {socket.gethostname()} has no network; to run this task on another node: " \
        f"{hint.format(host=host)}" in r.stderr, r.stderr
