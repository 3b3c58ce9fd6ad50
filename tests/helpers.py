"""Plain test helpers (fixtures stay in conftest.py): inputs, DNGs, databases, reads, a webhook."""

from __future__ import annotations

import contextlib
import http.server
import json
import random
import sqlite3 as stdlib_sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from download_db import states
from download_db.cli.main import init_main
from download_db.config import DownloadConfig
from download_db.db import connection

HEADER = [
    "gbifID",
    "type",
    "format",
    "identifier",
    "references",
    "title",
    "description",
    "source",
    "audience",
    "created",
    "creator",
    "contributor",
    "publisher",
    "license",
    "rightsHolder",
]
DATA = Path(__file__).parent / "data"
MULTIMEDIA = DATA / "multimedia"
GHANA = MULTIMEDIA / "gbif_2017_oldcolumnorder_ghana_herbaria_multimedia.txt"
NORWAY = MULTIMEDIA / "gbif_2021_norway_birds_multimedia.txt"
PSILOCYBE = MULTIMEDIA / "gbif_2023_psilocybe_mixed_hosts_iiif_multimedia.txt"


def row(
    gbif_id: object,
    identifier: str,
    *,
    type_: str = "StillImage",
    fmt: str = "image/jpeg",
    license_: str = "CC BY 4.0",
    rights: str = "",
    creator: str = "",
) -> list[str]:
    r = [""] * len(HEADER)
    r[0], r[1], r[2], r[3] = str(gbif_id), type_, fmt, identifier
    r[10], r[13], r[14] = creator, license_, rights
    return r


def write_multimedia(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("\t".join(header) + "\n")
        for r in rows:
            f.write("\t".join(r) + "\n")
    return path


def generate(path: Path, n_records: int, seed: int = 1, hosts: int = 12) -> Path:
    """A realistic multimedia.txt: 1-4 images per gbifID, IIIF variants and manifests,
    duplicate rows, bad rows, unsorted gbifIDs and a few non-contiguous gbifIDs."""
    rnd = random.Random(seed)
    rows: list[list[str]] = []
    ids = rnd.sample(range(1_000_000_000, 4_000_000_000), n_records)
    img = 0
    for gid in ids:
        h = f"h{rnd.randrange(hosts)}.example.org"
        lic = rnd.choice(["CC BY 4.0", "CC0", "", "All rights reserved"])
        who = rnd.choice(["", "A. Botanist", "B. Curator", "Imaging team"])
        mine = []
        for _ in range(rnd.choice([1, 1, 1, 2, 2, 3, 4])):
            img += 1
            u = rnd.random()
            if u < 0.6:
                mine.append(row(gid, f"https://{h}/img/{img}.jpg", license_=lic, creator=who))
            elif u < 0.75:
                base = f"https://{h}/iiif/{img}"
                mine.append(row(gid, f"{base}/full/!600,600/0/default.jpg", license_=lic))
                mine.append(
                    row(
                        gid,
                        f"{base}/manifest",
                        fmt="application/ld+json",
                        type_="InteractiveResource",
                    )
                )
                mine.append(row(gid, f"{base}/full/max/0/default.jpg", license_=lic))
            elif u < 0.8:
                mine.append(row(gid, f"HTTPS://{h.upper()}:443/img/{img}.JPG#x"))
            elif u < 0.85:
                mine.append(
                    row(
                        gid, rnd.choice(["", "ftp://x/y.jpg", f"https://{h}/None", "not available"])
                    )
                )
            elif u < 0.9:
                mine.append(row(gid, f"https://{h}/snd/{img}.mp3", type_="Sound", fmt="audio/mpeg"))
            else:
                mine.append(row(gid, f"https://{h}/img/{img}.png", fmt="image/png"))
        if rnd.random() < 0.05:
            mine.append(list(mine[0]))  # exact duplicate row
        rows.extend(mine)
    # a few gbifIDs whose rows reappear later in the file
    for _ in range(max(1, n_records // 200)):
        src = rnd.randrange(len(rows))
        rows.append(row(rows[src][0], f"https://late.example.org/extra/{rnd.randrange(10**9)}.jpg"))
        rows.append(list(rows[src]))
    return write_multimedia(path, rows)


def make_dng(tmp_path: Path, w: int = 256, h: int = 192, value: int | None = None) -> bytes:
    """A real, rawpy-decodable DNG (12-bit BGGR CFA, uncompressed) written by pidng."""
    from pidng.core import RAW2DNG, DNGTags, Tag
    from pidng.defs import (
        CalibrationIlluminant,
        CFAPattern,
        DNGVersion,
        Orientation,
        PhotometricInterpretation,
        PreviewColorSpace,
    )

    t = DNGTags()
    t.set(Tag.ImageWidth, w)
    t.set(Tag.ImageLength, h)
    t.set(Tag.TileWidth, w)
    t.set(Tag.TileLength, h)
    t.set(Tag.Orientation, Orientation.Horizontal)
    t.set(Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array)
    t.set(Tag.SamplesPerPixel, 1)
    t.set(Tag.BitsPerSample, 12)
    t.set(Tag.CFARepeatPatternDim, [2, 2])
    t.set(Tag.CFAPattern, CFAPattern.BGGR)
    t.set(Tag.WhiteLevel, 4095)
    t.set(Tag.BlackLevel, 0)
    t.set(Tag.ColorMatrix1, [[1, 1], [0, 1], [0, 1], [0, 1], [1, 1], [0, 1], [0, 1], [0, 1],
                             [1, 1]])
    t.set(Tag.CalibrationIlluminant1, CalibrationIlluminant.D65)
    t.set(Tag.AsShotNeutral, [[1, 1], [1, 1], [1, 1]])
    t.set(Tag.BaselineExposure, [[0, 100]])
    t.set(Tag.Make, "Test")
    t.set(Tag.Model, "Herbarium Cam")
    t.set(Tag.DNGVersion, DNGVersion.V1_4)
    t.set(Tag.DNGBackwardVersion, DNGVersion.V1_2)
    t.set(Tag.PreviewColorSpace, PreviewColorSpace.sRGB)
    if value is None:
        arr = np.random.default_rng(0).integers(500, 3500, (h, w)).astype(np.uint16)
    else:
        arr = np.full((h, w), value, dtype=np.uint16)
    r = RAW2DNG()
    r.options(t, path=str(tmp_path), compress=False)
    r.convert(arr, filename="t")
    return (tmp_path / "t.dng").read_bytes()


# (status, error_type) pairs mutate_results draws from
RESULT_MIX = [("failed_permanent", "http_404"), ("failed_permanent", "invalid_content_type"),
              ("failed_permanent", "not_an_image"), ("failed_transient", "timeout"),
              ("failed_transient", "server_error"), ("success", None),
              ("success", "raw_unprocessed"), ("success", "legacy_unverified_index"),
              ("pending", None)]


def mutate_results(path: Path, seed: int, n: int = 300, *, now: float) -> None:
    """Random result writes the way the downloader and users make them."""
    rnd = random.Random(seed)
    conn = connection.connect(path)
    ids = [r[0] for r in conn.execute("SELECT image_id FROM images")]
    with connection.transaction(conn):
        for image_id in rnd.sample(ids, min(n, len(ids))):
            status, etype = rnd.choice(RESULT_MIX)
            attempts = 0 if status == "pending" else rnd.randint(1, 4)
            nxt = states.EXHAUSTED if status == "failed_transient" and attempts == 4 else now
            conn.execute(
                "UPDATE images SET status = ?, error_type = ?, attempts = ?, next_attempt_at = ?,"
                " file_size = ?, last_attempt_at = ?, file_path = ?, error_detail = ? "
                "WHERE image_id = ?",
                (status, etype, attempts, nxt, rnd.randint(1, 10**6) if status == "success"
                 else None, None if status == "pending" else now - rnd.randint(0, 90000),
                 f"x/{image_id}.jpg" if status == "success" else None,
                 "[text/html] <script>alert('x')</script> not available" if etype else None,
                 image_id))
        conn.execute("UPDATE images SET claimed_by = 'h:1:1' WHERE image_id = ?", (ids[0],))
        conn.execute("UPDATE hosts SET sample_detail = '<script>alert(1)</script> gone', "
                     "quarantined = 1, quarantined_at = ?, cooldown_until = ?, "
                     "cooldown_reason = 'HTTP 429 Retry-After' WHERE host_id = 1",
                     (now - 60, now + 600))
    conn.close()


def dump(db: Path) -> dict[str, list[tuple]]:
    """Everything the ingest decides, in a comparable form (read with the stdlib driver)."""
    conn = stdlib_sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {
            "images": conn.execute(
                "SELECT i.image_id, i.gbif_id, i.image_no, i.status, h.host, i.image_key, i.urls, "
                "a.license, a.rights_holder, a.creator FROM images i "
                "JOIN hosts h USING (host_id) LEFT JOIN attributions a USING (attribution_id) "
                "ORDER BY i.gbif_id, i.image_no"
            ).fetchall(),
            "gbif_ids": conn.execute("SELECT * FROM gbif_ids ORDER BY gbif_id").fetchall(),
            "hosts": conn.execute("SELECT host, n_images FROM hosts ORDER BY host").fetchall(),
        }
    finally:
        conn.close()


def q(db: Path, sql: str, args: tuple = ()) -> list[tuple]:
    """One read-only query with the stdlib driver: a test never writes by accident, and
    waits (rather than fails) while a process under test holds the write lock."""
    try:
        conn = stdlib_sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()
    except stdlib_sqlite3.OperationalError as e:
        if "readonly" not in str(e):
            raise
    # A WAL database left by a killed process may need its -wal/-shm recovered, which a
    # mode=ro connection cannot do: open it read-write, but still refuse writes.
    conn = stdlib_sqlite3.connect(db, timeout=30)
    try:
        conn.execute("PRAGMA query_only = ON")
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def build_finished(returncode: int, stderr: str, db: Path) -> bool:
    """An ingest run completed the build; or a kill came after the build was marked
    complete (only the process exit was left), and the rerun refuses as documented
    ("database already exists", exit 3)."""
    if returncode == 0:
        return True
    return returncode == 3 and "database already exists" in stderr and \
        q(db, "SELECT value FROM meta WHERE key = 'build_complete'") == [("1",)]


# -- a download run on a database of given URLs --------------------------------------

DOWNLOAD_DEADLINE = 2.0  # seconds: short, so hostile servers cost the tests little


def make_db(tmp_path: Path, urls: list[str], first: int = 7_000_000_001) -> Path:
    mm = write_multimedia(tmp_path / "m.txt", [row(first + i, u) for i, u in enumerate(urls)])
    db = tmp_path / "d.db"
    assert init_main(["--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
    return db


def config(tmp_path: Path, db: Path, **kw) -> DownloadConfig:
    base = DownloadConfig(db=db, install_path=tmp_path / "images", threads=2,
                          per_host_concurrency=2, per_host_rate=0, connect_timeout=10,
                          read_timeout=10, deadline=DOWNLOAD_DEADLINE, lease=30, wait_for_retries=0,
                          lock_dir=tmp_path / "locks", progress_every=1000, bar=False,
                          user_agent="gbif-download-db-reliability-tests",
                          max_bytes=8 << 20)
    return replace(base, **kw)


def rows(db: Path) -> list[tuple]:
    return q(db, "SELECT gbif_id, status, error_type, error_detail, http_status, file_path, "
                 "attempts FROM images ORDER BY gbif_id")


# -- a loopback Slack webhook ----------------------------------------------------------

SECRET = "T0SECRET/B0SECRET/xoxSECRETtoken42"  # looks like a webhook path; must never leak


class _Webhook(http.server.ThreadingHTTPServer):
    daemon_threads = True


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        srv: Webhook = self.server.app  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if srv.mode == "hang":
            srv.release.wait(30)  # never answers while the test runs
            return
        if srv.mode == "500":
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with srv.lock:
            srv.paths.append(self.path)
            srv.payloads.append(json.loads(body))
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args) -> None:  # keep the secret path out of test output
        pass


class Webhook:
    """A loopback Slack incoming webhook that records the JSON payloads it gets."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode  # ok | hang | 500
        self.payloads: list[dict] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.httpd = _Webhook(("127.0.0.1", 0), _Handler)
        self.httpd.app = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/services/{SECRET}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    @property
    def texts(self) -> list[str]:
        with self.lock:
            return [p["text"] for p in self.payloads]

    def wait_for(self, n: int, timeout: float = 5.0) -> list[str]:
        end = time.monotonic() + timeout
        while len(self.texts) < n and time.monotonic() < end:
            time.sleep(0.01)
        return self.texts

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def spy_stop_events(monkeypatch, module) -> list[threading.Event]:
    """Wrap ``module.stop_on_signals`` so that a test sees each stop event the stage
    opens (to wait until its SIGTERM has been seen)."""
    stops: list[threading.Event] = []
    real = module.stop_on_signals

    @contextlib.contextmanager
    def spy():
        with real() as ev:
            stops.append(ev)
            yield ev

    monkeypatch.setattr(module, "stop_on_signals", spy)
    return stops
