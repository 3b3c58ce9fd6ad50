"""Slack notifications: payloads, a slow or broken Slack never blocks, the URL stays secret."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from download_db import notify
from download_db.cli.main import download_main, init_main
from download_db.config import DownloadConfig
from download_db.db.claims import Item, Result
from download_db.errors import UsageError
from download_db.web.politeness import HostGate, Politeness
from tests.helpers import SECRET, Webhook, row, write_multimedia
from tests.imageserver import ImageServer

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(60)

PROXY_VARS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
              "ALL_PROXY")


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for v in PROXY_VARS:  # a proxy must not take the loopback webhook's traffic
        monkeypatch.delenv(v, raising=False)


@pytest.fixture
def hook():
    w = Webhook()
    yield w
    w.close()


@pytest.fixture(scope="module")
def images():
    with ImageServer("127.0.0.7") as s:
        yield s


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _result(host_id: int, status: str) -> Result:
    return Result(Item(1, 1, 0, "pending", 0, None, ["u"], host_id), status)


def test_payloads_of_every_event(hook) -> None:
    clock = Clock()
    notes = notify.RunNotes(notify.Notifier(hook.url, "node7 d.db"), every=10,
                            stall_minutes=30, clock=clock)
    notes.set_hosts([(1, "slow.example.org", 0), (2, "good.example.org", 0)])
    notes.start(1615, 19, 1)
    clock.t += 60
    notes.tick({"success": 9, "failed_transient": 1})  # under the first milestone
    notes.tick({"success": 25, "failed_transient": 5})  # crosses 10 and 20: one message
    clock.t += 31 * 60
    notes.tick({"success": 25, "failed_transient": 5})  # 31 minutes without progress
    clock.t += 60
    notes.tick({"success": 25, "failed_transient": 5})  # still stalled: said once
    notes.tick({"success": 26, "failed_transient": 5})
    notes.committed([_result(1, "failed_transient")] * 9 + [_result(1, "success"),
                                                             _result(1, "pending")])
    notes.quarantined("slow.example.org", 5)
    notes.finish({"success": 26, "failed_transient": 5, "failed_permanent": 2, "deferred": 1,
                  "bytes_fetched": 3_500_000}, "finished")
    notes.crash(RuntimeError(f"boom at {hook.url} and https://x.example.org/a?sig=abc"))
    notes.close()
    texts = hook.wait_for(7)
    assert len(texts) == 7, texts
    assert all(set(p) == {"text"} for p in hook.payloads)
    assert all(t.startswith("[node7 d.db] ") for t in texts)  # tells runs apart
    start, milestone, stall, resumed, quarantine, end, crash = texts[:7]
    assert "download started: 1,615 images with work left on 19 hosts" in start
    assert "25 images saved" in milestone and "30/1,615 done" in milestone
    assert "stalled: no image finished for 31m00s" in stall
    assert "progress resumed after 32m00s" in resumed
    assert "host slow.example.org quarantined" in quarantine
    assert "opened 5 times" in quarantine and "9 of its 10 images failed" in quarantine
    assert "(90%)" in quarantine
    assert "download finished after 33m00s: 26 saved, 5 failed (will retry), " \
           "2 failed permanently, 1 deferred" in end and "3.5 MB fetched" in end
    assert "RuntimeError: boom at &lt;url&gt; and &lt;url&gt;" in crash
    assert "SECRET" not in crash and "sig=" not in crash


def test_a_child_process_reports_only_its_crash_and_quarantines(hook) -> None:
    notes = notify.RunNotes(notify.Notifier(hook.url, "n d.db"), every=1, child=True)
    notes.start(10, 1, 2)
    notes.tick({"success": 5})
    notes.finish({"success": 5}, "finished")
    notes.quarantined("h.example.org", 5)
    notes.crash(OSError("disk gone"))
    notes.close()
    texts = hook.wait_for(2)
    assert len(texts) == 2
    assert "host h.example.org quarantined" in texts[0]
    assert "a --processes copy failed: OSError: disk gone" in texts[1]


def test_slack_text_is_escaped(hook) -> None:
    n = notify.Notifier(hook.url, "n d.db")
    n.send("host <a&b> quarantined")
    n.close()
    assert hook.wait_for(1) == ["[n d.db] host &lt;a&amp;b&gt; quarantined"]


def test_a_hanging_slack_never_blocks_the_caller(caplog) -> None:
    w = Webhook("hang")
    try:
        n = notify.Notifier(w.url, "n d.db", timeout=0.3, maxsize=3)
        for i in range(10):
            t = time.perf_counter()
            n.send(f"message {i}")
            assert time.perf_counter() - t < 0.05
        t = time.perf_counter()
        assert n.close(wait=0.2) is False  # bounded: gives up, does not wait for Slack
        assert time.perf_counter() - t < 0.5
        assert n.dropped >= 6  # the queue is bounded: the oldest went first
        n.send("after close")  # a no-op, not an error
        end = time.monotonic() + 3
        while n.failed < 1 and time.monotonic() < end:
            time.sleep(0.02)
        assert n.failed == 1
    finally:
        w.close()
    records = [r for r in caplog.records if r.name == "download_db.notify"]
    assert len(records) == 1 and "TimeoutError" in records[0].getMessage()


def test_a_failing_slack_is_logged_once(caplog) -> None:
    w = Webhook("500")
    try:
        n = notify.Notifier(w.url, "n d.db")
        for i in range(5):
            n.send(f"message {i}")
        assert n.close() is True
    finally:
        w.close()
    assert n.failed == 5 and n.sent == 0
    records = [r for r in caplog.records if r.name == "download_db.notify"]
    assert len(records) == 1 and "HTTP 500" in records[0].getMessage()


def test_the_url_never_appears_in_output(capfd, caplog, tmp_path) -> None:
    caplog.set_level(logging.DEBUG)  # also what urllib3 or others would say at debug level
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/services/{SECRET}"
    failing = Webhook("500")
    try:
        for url in (dead, failing.url):
            n = notify.Notifier(url, "n d.db", timeout=0.5)
            notes = notify.RunNotes(n)
            notes.start(1, 1, 1)
            notes.crash(ValueError(f"bad {url}"))
            notes.crash(ValueError(f"bad hooks.example.com/services/{SECRET}"))
            n.close()
            print(repr(n), repr(notes.n))
    finally:
        failing.close()
    cfg = DownloadConfig(slack_webhook_url=dead)
    print(repr(cfg))
    with pytest.raises(UsageError) as e:
        DownloadConfig(slack_webhook_url=f"ftp://x/{SECRET}").validate()
    print(e.value)
    out, err = capfd.readouterr()
    for text in (out, err, caplog.text):
        assert "SECRET" not in text, text
    assert "HTTP 500" in caplog.text and "URLError" in caplog.text


def test_without_a_url_everything_is_a_silent_no_op(monkeypatch) -> None:
    def no_network(*a, **k):
        raise AssertionError("no URL: nothing may be sent")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    n = notify.Notifier(None, "n d.db")
    notes = notify.RunNotes(n, every=1, stall_minutes=0.0001)
    notes.start(3, 1, 1)
    notes.tick({"success": 3})
    notes.quarantined("h", 5)
    notes.crash(RuntimeError("x"))
    notes.finish({"success": 3}, "finished")
    assert n.close() is True and not n.enabled and n._thread is None


def _db(tmp_path: Path, urls: list[str]) -> Path:
    mm = write_multimedia(tmp_path / "m.txt", [row(3001 + i, u) for i, u in enumerate(urls)])
    db = tmp_path / "d.db"
    assert init_main(["--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
    return db


def _args(tmp_path: Path, db: Path, *extra: str) -> list[str]:
    return ["--db", str(db), "--install-path", str(tmp_path / "images"), "--lock-dir",
            str(tmp_path / "locks"), "--no-bar", "--threads", "4", "--per-host-rate", "0",
            "--timeout", "2,2", "--deadline", "5", "--lease", "30", "--wait-for-retries", "0",
            "--progress-every", "1000", "--contact", "tests@example.org", *extra]


def test_no_url_gives_one_warning_and_no_network(tmp_path, images, monkeypatch, capsys) -> None:
    def no_network(*a, **k):
        raise AssertionError("no URL: nothing may be sent")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.delenv(notify.ENV_URL, raising=False)
    monkeypatch.delenv(notify.ENV_CHILD, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env up from here
    db = _db(tmp_path, [images.url(f"/img/nourl{i}.jpg?w=64&h=64") for i in range(3)])
    capsys.readouterr()
    assert download_main(_args(tmp_path, db)) == 0
    err = capsys.readouterr().err
    assert [ln for ln in err.splitlines() if "warning" in ln] == [
        "image_install_db.py: warning: no SLACK_WEBHOOK_URL in .env; no Slack notifications"]


def test_a_real_run_reports_start_milestones_stall_and_end(tmp_path, images, hook,
                                                           monkeypatch, capfd) -> None:
    monkeypatch.delenv(notify.ENV_CHILD, raising=False)
    monkeypatch.chdir(tmp_path)
    urls = [images.url(f"/img/e2e{i}.jpg?w=64&h=64") for i in range(6)]
    urls.append(images.url("/slow/e2e-slow.jpg?delay=2.5&w=64&h=64"))  # the run stalls on it
    db = _db(tmp_path, urls)  # before the webhook: the ingest's own notices are not tested here
    monkeypatch.setenv(notify.ENV_URL, hook.url)
    t = time.monotonic()
    assert download_main(_args(tmp_path, db, "--timeout", "5,5", "--deadline", "8",
                               "--notify-every", "3", "--stall-minutes", "0.01")) == 0
    assert time.monotonic() - t < 10
    texts = hook.wait_for(4)
    assert "download started: 7 images with work left on 1 hosts" in texts[0]
    assert any("images saved" in x for x in texts[1:-1]), texts
    assert any("stalled: no image finished" in x for x in texts), texts
    assert any("progress resumed" in x for x in texts), texts
    assert "download finished after" in texts[-1] and "7 saved, 0 failed" in texts[-1]
    assert all(x.startswith(f"[{socket.gethostname()} d.db] ") for x in texts)
    out, err = capfd.readouterr()
    assert "SECRET" not in out + err and "SLACK_WEBHOOK_URL" not in err


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in PROXY_VARS and k not in (notify.ENV_CHILD, notify.ENV_URL)}
    return {**env, **extra}


def test_the_setup_check_sends_a_test_message(tmp_path, hook) -> None:
    cmd = [sys.executable, "-m", "download_db.notify"]
    r = subprocess.run(cmd, cwd=tmp_path, env=_env(SLACK_WEBHOOK_URL=hook.url),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "test message sent" in r.stdout, r.stderr
    assert "test message from gbif-download-db" in hook.wait_for(1)[0]
    broken = Webhook("500")
    try:
        r = subprocess.run(cmd, cwd=tmp_path, env=_env(SLACK_WEBHOOK_URL=broken.url),
                           capture_output=True, text=True, timeout=30)
    finally:
        broken.close()
    assert r.returncode == 1 and r.stderr.count("HTTP 500") == 1
    assert "SECRET" not in r.stdout + r.stderr
    r = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1 and "no SLACK_WEBHOOK_URL" in r.stderr


def test_processes_send_one_start_and_one_end_for_all(tmp_path, images, hook) -> None:
    n = 12
    db = _db(tmp_path, [images.url(f"/slow/proc{i}.jpg?delay=0.05&w=64&h=64")
                        for i in range(n)])
    r = subprocess.run([sys.executable, str(ROOT / "image_install_db.py"),
                        *_args(tmp_path, db, "--processes", "2")], cwd=tmp_path,
                       env=_env(SLACK_WEBHOOK_URL=hook.url),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    texts = hook.wait_for(2)
    assert [("started" in x, "finished" in x) for x in texts] == [(True, False), (False, True)]
    assert "in 2 processes" in texts[0]
    assert f"{n} saved" in texts[1]  # the first process counts the copy's images too
    assert "SECRET" not in r.stdout + r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "image_install_db.py"),
                        *_args(tmp_path, db, "--processes", "2")], cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr.count("SLACK_WEBHOOK_URL") == 1, r.stderr


def test_quarantine_is_reported_once_when_the_breaker_reaches_it(tmp_path, hook) -> None:
    policy = Politeness(concurrency=2, min_requests=2, open_seconds=10, quarantine_after=2)
    notes = notify.RunNotes(notify.Notifier(hook.url, "n d.db"))
    gate = HostGate(tmp_path / "locks", policy, on_quarantine=notes.quarantined)
    host, t = "dead.example.org", 1000.0
    slot = gate.acquire(host, now=t)
    changes = [gate.record(slot, True, now=t), gate.record(slot, True, now=t)]  # opens = 1
    slot.release()
    for _ in range(3):  # failed probes: opens 2 (quarantine), 3, 4 (still quarantine)
        t = gate.state(host)["open_until"] + 1
        probe = gate.acquire(host, now=t)
        changes.append(gate.record(probe, True, now=t))
        probe.release()
    gate.cool_down(host, 30, now=t)  # other state changes say nothing
    gate.close()
    notes.close()
    assert changes == [None, "opened", "quarantine", "quarantine", "quarantine"]
    texts = hook.wait_for(1)
    assert len(texts) == 1 and "host dead.example.org quarantined" in texts[0]
    assert "opened 2 times" in texts[0]
