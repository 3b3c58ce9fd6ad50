"""Shared machinery of the reliability suite: soak factor, kill campaigns, canonical dumps,
file snapshots, a loop runner for concurrent readers, and a loopback server with a few
extra hostile routes (on top of tests/imageserver.py).

``RELIABILITY_SOAK`` (environment): unset or ``0`` is the CI setting. ``1`` multiplies every
kill-point count and iteration count by 10; an integer ``N > 1`` multiplies them by N. The
seeds stay fixed: a soak run replays the CI kill points first, then continues the same
seeded sequence, so a failure in CI reproduces in a soak and vice versa.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import sqlite3 as stdlib_sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import q
from tests.imageserver import ImageServer, _Handler, _Server, _Server6

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


def soak_factor() -> int:
    raw = os.environ.get("RELIABILITY_SOAK", "").strip()
    if not raw or raw == "0":
        return 1
    try:
        n = int(raw)
    except ValueError:
        return 10
    return 10 if n == 1 else max(1, n)


SOAK = soak_factor()


def scaled(n: int) -> int:
    """n kill points / iterations in CI, n x the soak factor in a soak."""
    return n * SOAK


# --------------------------------------------------------------------------- processes


@dataclass
class Run:
    cmd: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    killed: bool = False  # SIGKILL was sent (the process had not finished by itself)
    delay: float | None = None


def run(cmd: Sequence[str], *, cwd: Path = ROOT, env: dict | None = None,
        timeout: float = 120) -> Run:
    t0 = time.monotonic()
    p = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    return Run(list(cmd), p.returncode, p.stdout, p.stderr, time.monotonic() - t0)


def run_and_kill(cmd: Sequence[str], delay: float, *, cwd: Path = ROOT,
                 env: dict | None = None, scratch: Path) -> Run:
    """Start cmd; SIGKILL it ``delay`` seconds after the start unless it ended before."""
    out_f, err_f = scratch / "kill.out", scratch / "kill.err"
    with open(out_f, "w") as out, open(err_f, "w") as err:  # files: a pipe could fill up
        t0 = time.monotonic()
        p = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=out, stderr=err)
        killed = False
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            killed = True
            p.wait()
        seconds = time.monotonic() - t0
    return Run(list(cmd), p.returncode, out_f.read_text(errors="replace"),
               err_f.read_text(errors="replace"), seconds, killed, delay)


@dataclass
class Campaign:
    """Seeded kill points, spread over a never-killed run's duration.

    Each round starts from a fresh state; within a round, up to ``per_round`` kills are
    chained on the same state (each rerun resumes what the killed one left), then one
    run completes it. Rounds continue until ``kills`` kills have landed. Delays are
    uniform in [lo, hi] x the expected life of the run (start-up, work, wind-down; see
    next_delay), drawn from random.Random(seed) in order, so they reproduce.
    """

    seed: int
    kills: int
    duration: float
    per_round: int = 4
    startup: float = 0.35  # share of the never-killed run spent starting up (imports)
    lo: float = 0.02
    hi: float = 1.0
    landed: int = 0
    history: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rnd = random.Random(self.seed)

    def next_delay(self, left: float = 1.0) -> float:
        """A seeded fraction of the expected life of the next run. ``left`` is the share of
        the work still to do (a resumed run has less): the expected life is the fixed
        start-up share (``startup`` of the never-killed run) plus the rest scaled by it,
        so that chained kills keep landing inside the work instead of after the exit."""
        expected = self.duration * (self.startup + (1 - self.startup) * max(0.0, min(1.0, left)))
        return self.rnd.uniform(self.lo, self.hi) * expected

    def note(self, text: str) -> None:
        self.history.append(text)

    def check_round(self, rnd_no: int) -> None:
        """Fail, rather than loop for ever, if the runs keep ending before their kill."""
        assert rnd_no < 4 * self.kills, f"only {self.landed} of {self.kills} kills landed in " \
            f"{rnd_no} rounds: the runs end before the kill points\n{self.where()}"

    def summary(self, rounds: int) -> str:
        return (f"campaign seed={self.seed}: {self.landed} kills landed in {rounds} rounds; "
                f"never-killed run {self.duration:.2f}s")

    def where(self) -> str:
        """For assertion messages: enough to reproduce the failing kill point."""
        return f"seed={self.seed} duration={self.duration:.2f}s kills so far:\n  " + \
            "\n  ".join(self.history[-12:])


# --------------------------------------------------------------------------- database


def execute(db: Path, sql: str, args: tuple = ()) -> int:
    """One write, committed; returns the row count."""
    c = stdlib_sqlite3.connect(db, timeout=30)
    try:
        n = c.execute(sql, args).rowcount
        c.commit()
        return n
    finally:
        c.close()


def integrity(db: Path) -> str:
    """PRAGMA integrity_check through a read-write connection (which also rolls back a hot
    journal left by a kill, as the next real run would)."""
    c = stdlib_sqlite3.connect(db, timeout=30)
    try:
        rows = c.execute("PRAGMA integrity_check").fetchall()
    finally:
        c.close()
    return "; ".join(r[0] for r in rows)


def images_dump(db: Path) -> list[tuple]:
    return q(db, "SELECT gbif_id, image_no, status, error_type, file_path, sha256 FROM images "
                 "ORDER BY gbif_id, image_no")


def gbif_dump(db: Path) -> list[tuple]:
    # completed_at is a wall-clock stamp: only whether it is set is comparable
    return q(db, "SELECT gbif_id, n_images, n_success, status, completed_at IS NOT NULL "
                 "FROM gbif_ids ORDER BY gbif_id")


def copy_db(src: Path, dst: Path) -> Path:
    for suffix in ("", "-wal", "-shm", "-journal"):
        s = Path(f"{src}{suffix}")
        d = Path(f"{dst}{suffix}")
        if d.exists():
            d.unlink()
        if s.exists():
            d.write_bytes(s.read_bytes())
    return dst


# --------------------------------------------------------------------------- files


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def final_files(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every final (non-hidden) file under the image root."""
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): sha(p.read_bytes()) for p in root.rglob("*")
            if p.is_file() and not p.name.startswith(".")}


def temp_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.part")) if root.exists() else []


def tree(top: Path, skip: Sequence[Path] = ()) -> dict[str, tuple]:
    """Every entry under ``top`` (except the ``skip`` subtrees) with type, size and a hash:
    a before/after snapshot to prove nothing outside a directory was written."""
    out: dict[str, tuple] = {}
    skip_r = [s.resolve() for s in skip]
    for dirpath, dirnames, filenames in os.walk(top):
        d = Path(dirpath)
        dirnames[:] = [n for n in dirnames if (d / n).resolve() not in skip_r]
        for n in dirnames:
            out[(d / n).relative_to(top).as_posix() + "/"] = ("dir",)
        for n in filenames:
            p = d / n
            if p.resolve() in skip_r:
                continue
            st = p.lstat()
            out[p.relative_to(top).as_posix()] = ("file", st.st_size, st.st_mtime_ns,
                                                  sha(p.read_bytes()) if p.is_file() else "")
    return out


# --------------------------------------------------------------------------- loops


class Loop:
    """Run an arbitrary command over and over in a background thread until stop();
    keeps every run's exit code and output. Used for concurrent readers (ad hoc SQL
    today; the status report can be added as one more Loop)."""

    def __init__(self, cmd: Sequence[str], *, cwd: Path = ROOT, env: dict | None = None,
                 pause: float = 0.05, timeout: float = 60) -> None:
        self.cmd, self.cwd, self.env, self.pause, self.timeout = list(cmd), cwd, env, pause, \
            timeout
        self.runs: list[Run] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"loop {Path(self.cmd[1]).name}")

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.runs.append(run(self.cmd, cwd=self.cwd, env=self.env, timeout=self.timeout))
            self._stop.wait(self.pause)

    def __enter__(self) -> Loop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[Run]:
        self._stop.set()
        self._thread.join(self.timeout + 5)
        return self.runs

    def failures(self) -> list[Run]:
        """Runs that failed, printed a traceback, or met a locked database."""
        return [r for r in self.runs if r.returncode != 0 or "Traceback" in r.stderr
                or "locked" in r.stderr.lower()]


# --------------------------------------------------------------------------- commands


def download_cmd(db: Path, root: Path, locks: Path, *extra: str) -> list[str]:
    return [PY, str(ROOT / "image_install_db.py"), "--db", str(db), "--install-path", str(root),
            "--lock-dir", str(locks), "--no-bar", "--per-host-rate", "0", "--timeout", "2,2",
            "--deadline", "5", "--lease", "10", "--wait-for-retries", "0",
            "--progress-every", "1000", "--contact", "tests@example.org", *extra]


def init_cmd(db: Path, *extra: str) -> list[str]:
    return [PY, str(ROOT / "init_download_db.py"), "--db", str(db), "--no-bar",
            "--progress-every", "1000", *extra]


def error_lines(stderr: str) -> list[str]:
    """The lines of stderr that are not warnings (deprecated contact, no webhook, ...)."""
    return [ln for ln in stderr.splitlines() if ln.strip() and ": warning:" not in ln]


def quiesce(server: ImageServer, timeout: float = 5.0) -> None:
    """Wait until the server has no request in flight and its counters stop moving (a
    killed client's last request may still sit in a socket buffer for a moment)."""
    end = time.monotonic() + timeout
    last, calm = -1, 0
    while time.monotonic() < end:
        s = server.stats()
        calm = calm + 1 if s["concurrent_now"] == 0 and s["requests"] == last else 0
        if calm >= 3:
            return
        last = s["requests"]
        time.sleep(0.02)


# --------------------------------------------------------------------------- server


class _HostileHandler(_Handler):
    """The test image server's routes, plus a few that the reliability suite needs."""

    ROUTES = [
        (re.compile(p), m)
        for p, m in [
            # a real JPEG whose headers try to name the file: Content-Disposition and a
            # Content-Type name= parameter with path traversal
            (r"/cd/(?P<name>[^/]+)\.jpg", "r_disposition"),
            # every request to this server answers 429 while the storm lasts
            (r"/storm/(?P<name>[^/]+)\.jpg", "r_storm"),
            # a 302 to whatever ?to= says, verbatim (traversal, other schemes, ...)
            (r"/goto/(?P<name>[^/]+)", "r_goto"),
        ]
    ] + _Handler.ROUTES

    def _dispatch(self) -> None:
        app = self.server.app
        if isinstance(app, HostileServer):
            app.record_headers(self.path, dict(self.headers.items()))
        super()._dispatch()

    def send_response(self, code: int, message: str | None = None) -> None:
        app = self.server.app
        if isinstance(app, HostileServer):
            app._cur.status = code
        super().send_response(code, message)

    def r_disposition(self, name: str) -> None:
        fn = self.query.get("fn", "../../../escaped.jpg")
        fn = re.sub(r"[\r\n]", "", fn)
        self.send_bytes(200, self.jpeg(name), f'image/jpeg; name="{fn}"', (
            ("Content-Disposition", f'attachment; filename="{fn}"; filename*=UTF-8\'\'{fn}'),
            ("Content-Location", fn)))

    def r_storm(self, name: str) -> None:
        app = self.server.app
        if isinstance(app, HostileServer) and app.storm_left() > 0:
            self.send_bytes(429, b"<html><body>Too many requests</body></html>", "text/html",
                            self.retry_after())
        else:
            self.send_bytes(200, self.jpeg(name), "image/jpeg")

    def r_goto(self, name: str) -> None:
        self.redirect(self.query.get("to", "/"))


class HostileServer(ImageServer):
    """ImageServer + /cd/, /storm/, /goto/ routes, request headers, and response end times
    (``ends``: (monotonic time the last byte was written, target, status)); see the
    handler."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.storm = 0  # requests left that the /storm/ route answers with 429
        self.headers_seen: list[tuple[str, dict]] = []
        self.ends: list[tuple[float, str, int]] = []
        self._cur = threading.local()

    def start(self) -> HostileServer:
        if self._httpd is not None:
            raise RuntimeError("already started")
        self._stopping.clear()
        cls = _Server6 if ":" in self.host else _Server
        httpd = cls((self.host, self.port), _HostileHandler)
        httpd.app = self
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name=f"HostileServer {self.host}:{self.port}",
                                        daemon=True)
        self._thread.start()
        return self

    def storm_left(self) -> int:
        with self._lock:
            self.storm -= 1
            return self.storm + 1

    def record_headers(self, target: str, headers: dict) -> None:
        with self._lock:
            self.headers_seen.append((target, headers))

    def _begin(self, method: str, target: str) -> None:
        self._cur.target, self._cur.status = target, 0
        super()._begin(method, target)

    def _end(self) -> None:
        super()._end()
        with self._lock:
            self.ends.append((time.monotonic(), getattr(self._cur, "target", ""),
                              getattr(self._cur, "status", 0)))
