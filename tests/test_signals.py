"""Stop signals: the handler only hands the flag over, never blocks, and a late signal
during shutdown does not kill the process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from download_db.signals import stop_on_signals


def test_a_signal_during_event_set_does_not_deadlock() -> None:
    with stop_on_signals() as stop:
        handler = signal.getsignal(signal.SIGTERM)
        with stop._cond:  # the main thread is "inside" Event.set when the signal lands
            t = time.monotonic()
            handler(signal.SIGTERM, None)
            assert time.monotonic() - t < 0.5
        assert stop.wait(2.0)


def test_a_second_signal_is_harmless_and_late_ones_are_ignored() -> None:
    code = textwrap.dedent("""
        import os, signal, sys, time
        sys.path.insert(0, sys.argv[1])
        from download_db.signals import stop_on_signals
        with stop_on_signals() as stop:
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.wait(2.0)
        os.kill(os.getpid(), signal.SIGUSR1)  # while winding down: ignored, not fatal
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
        print("clean exit")
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code, root], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0 and "clean exit" in r.stdout, r.stderr
