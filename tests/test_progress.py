"""The one progress loop: throttled log lines, the three line shapes, the bar, the run context."""

from __future__ import annotations

import io
import threading

import pytest

from download_db.errors import Interrupted
from download_db.progress import Progress, RunContext, human_bytes


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def test_log_lines_are_throttled_to_one_per_interval() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress("ingest", 10_000, item="rows", every=10.0, stream=out, bar=False, clock=clock)
    for k in range(1, 31):  # one update a second for 30 s
        clock.t += 1.0
        p.update(k * 100, 5)
    p.close()
    got = lines(out)
    assert len(got) == 3  # at 10 s, 20 s and 30 s
    assert got[0] == "ingest: 1.0 kB / 10.0 kB (10.0%) read, 50 rows, 5 rows/s, ETA 1m30s"
    assert got[-1].startswith("ingest: 3.0 kB / 10.0 kB (30.0%) read, 150 rows")


def test_every_zero_logs_each_update_and_counting_lines_count_items() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress("finalize", 4, item="gbifIDs", every=0.0, stream=out, bar=False,
                 counting=True, clock=clock)
    for done in (2, 4):
        clock.t += 2.0
        p.update(done, 2)
    assert lines(out) == ["finalize: 2 / 4 gbifIDs (50.0%), 1 gbifIDs/s, ETA 2s",
                          "finalize: 4 / 4 gbifIDs (100.0%), 1 gbifIDs/s"]  # no ETA once done


def test_a_resumed_position_counts_only_this_runs_pace_for_the_eta() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress("ingest", 1000, start_bytes=500, every=0.0, stream=out, bar=False, clock=clock)
    clock.t += 10.0
    p.update(600, 10)  # 100 bytes in 10 s, 400 left
    assert lines(out)[-1].endswith("ETA 40s")


def test_the_callers_own_figures_make_the_download_line() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress("download", 10, item="img", every=5.0, stream=out, bar=False, counting=True,
                 clock=clock)
    clock.t += 5.0
    p.update(5, 5, "4 ok, 1 failed, 0 deferred, 0.8 img/s, 0.1 MB/s")
    clock.t += 5.0
    p.update(10, 5, "9 ok, 1 failed, 0 deferred, 0.9 img/s, 0.1 MB/s")
    assert lines(out) == [
        "download: 5/10 done; 4 ok, 1 failed, 0 deferred, 0.8 img/s, 0.1 MB/s, ETA 5s",
        "download: 10/10 done; 9 ok, 1 failed, 0 deferred, 0.9 img/s, 0.1 MB/s"]


def test_a_bar_replaces_the_log_lines_and_shows_the_figures() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress("download", 10, item="img", every=0.0, stream=out, bar=True, counting=True,
                 clock=clock)
    clock.t += 1.0
    p.update(3, 3, "3 ok, 0 failed")
    p.close()
    text = out.getvalue()
    assert "download: 3/10 done" not in text  # no log line beside the bar
    assert "3/10" in text and "3 ok, 0 failed" in text


def test_run_context_hands_its_settings_to_progress_and_stops_at_safe_points() -> None:
    out, stop = io.StringIO(), threading.Event()
    ctx = RunContext(out=out, bar=False, every=0.0, stop=stop)
    p = ctx.progress("legacy", 100, item="IDs")
    p.update(50, 7)
    ctx.say("legacy: done")
    assert lines(out)[0].startswith("legacy: 50 B / 100 B (50.0%) read, 7 IDs")
    assert lines(out)[1] == "legacy: done"
    ctx.check_stop()  # not stopped: returns
    stop.set()
    with pytest.raises(Interrupted):
        ctx.check_stop()
    assert not RunContext().stop.is_set()  # each context gets its own flag


@pytest.mark.parametrize(("n", "text"), [
    (0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (1_534_000, "1.5 MB"),
    (2.5e12, "2.5 TB"), (5e15, "5,000.0 TB"),
])
def test_human_bytes_uses_decimal_units(n: float, text: str) -> None:
    assert human_bytes(n) == text
