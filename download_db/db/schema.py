"""The database contract: every pragma, table, index and migration in one place."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ..errors import DatabaseError
from ..states import FLAG_LEGACY, PARKED, TODO_WHERE
from .sqlite import sqlite3

SCHEMA_VERSION = 2

# Timestamps are epoch seconds (REAL): cheap to compare on hot paths; read them
# with datetime(col, 'unixepoch').
_TABLES = [
    """CREATE TABLE IF NOT EXISTS meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    # One row per distinct image. Small, hot columns first, big text last
    # (SQLite reads a row's columns in order). image_id is the rowid, assigned
    # in input order, so inserts are appends. Host and attribution are ids:
    # measured here, that halves insert time and the work-list index (see
    # images_v for the readable form).
    """CREATE TABLE IF NOT EXISTS images (
        image_id        INTEGER PRIMARY KEY,
        gbif_id         INTEGER NOT NULL,
        image_no        INTEGER NOT NULL,
        status          TEXT    NOT NULL DEFAULT 'pending',
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL    NOT NULL DEFAULT 0,
        host_id         INTEGER NOT NULL,
        attribution_id  INTEGER,
        claimed_by      TEXT,
        http_status     INTEGER,
        error_type      TEXT,
        file_size       INTEGER,
        width           INTEGER,
        height          INTEGER,
        last_attempt_at REAL,
        file_path       TEXT,
        sha256          TEXT,
        image_key       TEXT    NOT NULL,
        urls            TEXT    NOT NULL,
        error_detail    TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS gbif_ids (
        gbif_id      INTEGER PRIMARY KEY,
        n_images     INTEGER NOT NULL,
        n_success    INTEGER NOT NULL DEFAULT 0,
        status       TEXT    NOT NULL DEFAULT 'pending',
        completed_at REAL
    )""",
    # Per-host politeness and circuit-breaker state; survives restarts.
    """CREATE TABLE IF NOT EXISTS hosts (
        host_id           INTEGER PRIMARY KEY,
        host              TEXT    NOT NULL UNIQUE,
        n_images          INTEGER NOT NULL DEFAULT 0,
        cooldown_until    REAL,
        cooldown_reason   TEXT,
        breaker_state     TEXT    NOT NULL DEFAULT 'closed',
        breaker_opened_at REAL,
        quarantined       INTEGER NOT NULL DEFAULT 0,
        quarantined_at    REAL,
        window_ok         INTEGER NOT NULL DEFAULT 0,
        window_fail       INTEGER NOT NULL DEFAULT 0,
        window_started_at REAL,
        last_error        TEXT,
        sample_detail     TEXT,
        updated_at        REAL
    )""",
    # license / rightsHolder / creator of an image's best multimedia row,
    # stored once per distinct combination; the id is a content hash.
    """CREATE TABLE IF NOT EXISTS attributions (
        attribution_id INTEGER PRIMARY KEY,
        license        TEXT NOT NULL,
        rights_holder  TEXT NOT NULL,
        creator        TEXT NOT NULL
    )""",
    # One row per stage run: what ran where, and how it ended.
    """CREATE TABLE IF NOT EXISTS runs (
        run_id       INTEGER PRIMARY KEY,
        stage        TEXT NOT NULL,
        started_at   REAL NOT NULL,
        finished_at  REAL,
        heartbeat_at REAL,
        hostname     TEXT,
        pid          INTEGER,
        argv         TEXT,
        outcome      TEXT NOT NULL DEFAULT 'running',
        counts       TEXT,
        message      TEXT,
        shard        TEXT
    )""",
    # The readable form of images for ad hoc SQL: host name and attribution.
    """CREATE VIEW IF NOT EXISTS images_v AS
        SELECT i.image_id, i.gbif_id, i.image_no, i.status, i.attempts,
               i.next_attempt_at, h.host, i.http_status, i.error_type, i.error_detail,
               i.file_path, i.file_size, i.sha256, i.width, i.height,
               i.last_attempt_at, i.image_key, i.urls,
               a.license, a.rights_holder, a.creator
          FROM images i
          JOIN hosts h ON h.host_id = i.host_id
          LEFT JOIN attributions a ON a.attribution_id = i.attribution_id""",
]

# Built after the bulk load (indexes during a load cost 2-3x insert speed).
INDEX_GBIF_IMAGE = (
    "CREATE UNIQUE INDEX IF NOT EXISTS images_gbif_image ON images(gbif_id, image_no)"
)
# The work list: per host, oldest due first. Partial on states.TODO_WHERE, so it holds
# only rows with work left and shrinks as the download progresses.
INDEX_TODO = (
    "CREATE INDEX IF NOT EXISTS images_todo ON images(host_id, next_attempt_at) "
    f"WHERE {TODO_WHERE}"
)
# Rows a run holds right now (in-flight claims, successes awaiting their
# rename): small, and lets a restart find a dead run's leftovers without a scan.
INDEX_CLAIMED = (
    "CREATE INDEX IF NOT EXISTS images_claimed ON images(claimed_by) "
    "WHERE claimed_by IS NOT NULL"
)
POST_LOAD_INDEXES = (INDEX_GBIF_IMAGE, INDEX_TODO, INDEX_CLAIMED)
INDEX_GBIF_STATUS = "CREATE INDEX IF NOT EXISTS gbif_ids_status ON gbif_ids(status)"

# Counters the report reads instead of scanning images (a GROUP BY status over
# 52M rows takes 16-48 s; these tables hold a few thousand rows). Triggers keep
# them exact in the same transaction as every change, whoever writes: the
# downloader, the legacy import, a merge or a user's ad hoc UPDATE. They are
# installed after the bulk load, so the load itself pays nothing.
_TALLY_TABLES = [
    # images per (host, status, error_type, attempts, parked): the source of
    # every status, error, retry-histogram and per-host figure. parked = 1 for a
    # transient failure whose attempts budget is spent (next_attempt_at parked).
    """CREATE TABLE IF NOT EXISTS image_tally (
        host_id    INTEGER NOT NULL,
        status     TEXT    NOT NULL,
        error_type TEXT    NOT NULL,
        attempts   INTEGER NOT NULL,
        parked     INTEGER NOT NULL,
        n          INTEGER NOT NULL,
        bytes      INTEGER NOT NULL,
        PRIMARY KEY (host_id, status, error_type, attempts, parked)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS gbif_tally (
        status TEXT PRIMARY KEY,
        n      INTEGER NOT NULL
    ) WITHOUT ROWID""",
    # Finished attempts per minute (by last_attempt_at): throughput, ETA and
    # the progress-over-time chart. Legacy adoptions are not downloads.
    """CREATE TABLE IF NOT EXISTS activity (
        minute    INTEGER PRIMARY KEY,
        attempts  INTEGER NOT NULL,
        successes INTEGER NOT NULL,
        failures  INTEGER NOT NULL,
        bytes     INTEGER NOT NULL
    )""",
]


def _tally_add(row: str, sign: str) -> str:
    return (
        "INSERT INTO image_tally(host_id, status, error_type, attempts, parked, n, bytes) "
        f"VALUES ({row}.host_id, {row}.status, coalesce({row}.error_type, ''), {row}.attempts, "
        f"{row}.{PARKED}, {sign}1, {sign}coalesce({row}.file_size, 0)) "
        "ON CONFLICT DO UPDATE SET n = n + excluded.n, bytes = bytes + excluded.bytes;")


_ACTIVITY = (
    "INSERT INTO activity(minute, attempts, successes, failures, bytes) "
    "VALUES (CAST(new.last_attempt_at / 60 AS INTEGER), 1, new.status = 'success', "
    "new.status LIKE 'failed%', CASE WHEN new.status = 'success' "
    "THEN coalesce(new.file_size, 0) ELSE 0 END) "
    "ON CONFLICT DO UPDATE SET attempts = attempts + 1, "
    "successes = successes + excluded.successes, failures = failures + excluded.failures, "
    "bytes = bytes + excluded.bytes;")
_TALLY_KEY_CHANGED = " OR ".join(
    f"old.{c} IS NOT new.{c}" for c in ("host_id", "status", "error_type", "attempts",
                                        "file_size")) + f" OR (old.{PARKED}) <> (new.{PARKED})"
TRIGGERS = [
    f"""CREATE TRIGGER IF NOT EXISTS images_tally_ins AFTER INSERT ON images BEGIN
        {_tally_add("new", "+")} END""",
    f"""CREATE TRIGGER IF NOT EXISTS images_tally_del AFTER DELETE ON images BEGIN
        {_tally_add("old", "-")} END""",
    # WHEN keeps the many updates that touch only claims and leases cheap.
    f"""CREATE TRIGGER IF NOT EXISTS images_tally_upd
        AFTER UPDATE OF host_id, status, error_type, attempts, file_size, next_attempt_at ON images
        WHEN {_TALLY_KEY_CHANGED} BEGIN
        {_tally_add("old", "-")}
        {_tally_add("new", "+")} END""",
    f"""CREATE TRIGGER IF NOT EXISTS images_activity AFTER UPDATE OF last_attempt_at ON images
        WHEN new.last_attempt_at IS NOT old.last_attempt_at AND new.last_attempt_at IS NOT NULL
         AND new.error_type IS NOT '{FLAG_LEGACY}' BEGIN
        {_ACTIVITY} END""",
    """CREATE TRIGGER IF NOT EXISTS gbif_tally_ins AFTER INSERT ON gbif_ids BEGIN
        INSERT INTO gbif_tally VALUES (new.status, 1)
        ON CONFLICT DO UPDATE SET n = n + 1; END""",
    """CREATE TRIGGER IF NOT EXISTS gbif_tally_del AFTER DELETE ON gbif_ids BEGIN
        UPDATE gbif_tally SET n = n - 1 WHERE status = old.status; END""",
    """CREATE TRIGGER IF NOT EXISTS gbif_tally_upd AFTER UPDATE OF status ON gbif_ids
        WHEN old.status IS NOT new.status BEGIN
        UPDATE gbif_tally SET n = n - 1 WHERE status = old.status;
        INSERT INTO gbif_tally VALUES (new.status, 1)
        ON CONFLICT DO UPDATE SET n = n + 1; END""",
]


def tallies_installed(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' "
                        "AND name = 'images_tally_upd'").fetchone()[0] == 1


def install_tallies(conn: sqlite3.Connection, *, fresh_load: bool) -> None:
    """Fill the counters and install their triggers (inside the caller's transaction).

    ``fresh_load``: every image is still as the load left it (pending, never
    tried), so hosts.n_images and a gbif_ids count are exact and nothing needs a
    scan. Otherwise (an upgraded database) one full scan recounts from the rows.
    """
    for ddl in _TALLY_TABLES:
        conn.execute(ddl)
    for table in ("image_tally", "gbif_tally", "activity"):
        conn.execute(f"DELETE FROM {table}")
    if fresh_load:
        conn.execute("INSERT INTO image_tally SELECT host_id, 'pending', '', 0, 0, n_images, 0 "
                     "FROM hosts WHERE n_images > 0")
    else:
        conn.execute(
            "INSERT INTO image_tally SELECT host_id, status, coalesce(error_type, ''), attempts, "
            f"{PARKED}, count(*), sum(coalesce(file_size, 0)) FROM images "
            "GROUP BY 1, 2, 3, 4, 5")
        conn.execute(
            "INSERT INTO activity SELECT CAST(last_attempt_at / 60 AS INTEGER), count(*), "
            "sum(status = 'success'), sum(status LIKE 'failed%'), "
            "sum(CASE WHEN status = 'success' THEN coalesce(file_size, 0) ELSE 0 END) "
            f"FROM images WHERE last_attempt_at IS NOT NULL AND error_type IS NOT '{FLAG_LEGACY}' "
            "GROUP BY 1")
    conn.execute("INSERT INTO gbif_tally SELECT status, count(*) FROM gbif_ids GROUP BY status")
    for ddl in TRIGGERS:
        conn.execute(ddl)


def _migrate_v2(conn: sqlite3.Connection) -> None:
    """v2: counters for the report. A database still loading gets them at the end
    of its load; a built one is recounted once (one scan of images)."""
    for ddl in _TALLY_TABLES:
        conn.execute(ddl)
    if "shard" not in {r[1] for r in conn.execute("PRAGMA table_info(runs)")}:
        conn.execute("ALTER TABLE runs ADD COLUMN shard TEXT")  # K/N of an array task
    if get_meta(conn, "ingest_phase") == "done":
        install_tallies(conn, fresh_load=False)


# Additive migrations: version -> steps (SQL or a function of the connection),
# run in one transaction per version. Never rebuild a large table: ALTER TABLE
# ... ADD COLUMN, CREATE INDEX/TABLE/TRIGGER and counting scans only.
MIGRATIONS: dict[int, list[str | Callable[[sqlite3.Connection], None]]] = {2: [_migrate_v2]}


def connect(
    path: str | Path,
    *,
    readonly: bool = False,
    bulk: bool = False,
    wal: bool = True,
    busy_timeout_s: float = 60.0,
) -> sqlite3.Connection:
    """Open the database with the project's pragmas.

    ``readonly`` opens with a ``mode=ro`` URI (the file must exist; nothing is
    created or migrated). ``bulk`` is for a single-writer bulk load: large
    cache, no fsync (a killed process loses nothing committed; an OS crash may
    need ``--reset``, which rebuilds in minutes).
    """
    path = Path(path)
    if readonly:
        uri = f"file:{path.resolve().as_posix()}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout_s, isolation_level=None,
                               check_same_thread=False)
    else:
        conn = sqlite3.connect(str(path), timeout=busy_timeout_s, isolation_level=None,
                               check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
    if readonly:
        conn.execute("PRAGMA query_only = ON")
        return conn
    if bulk:
        # A rollback journal records only pre-images of changed pages; bulk
        # appends change few, so it writes about half of what WAL writes (WAL
        # writes every page twice). A killed process leaves a hot journal that
        # the next open rolls back. The finished build switches to WAL.
        conn.execute("PRAGMA journal_mode = TRUNCATE")
        conn.execute("PRAGMA synchronous = OFF")
        # Inserts are appends and need little cache. Index sorts spill to temp
        # files (SQLITE_TMPDIR, else /var/tmp or /tmp), so memory stays flat at
        # any row count.
        conn.execute("PRAGMA cache_size = -32768")
        conn.execute("PRAGMA temp_store = FILE")
        conn.execute("PRAGMA threads = 2")  # helper threads for index sorts
    elif not wal:
        # An array task's own database: one writer on one node, read from other
        # nodes (report, merge), which WAL cannot serve over a network filesystem.
        conn.execute("PRAGMA journal_mode = TRUNCATE")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA cache_size = -65536")
    else:
        # WAL: readers never block the writer and vice versa (all on one host).
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA cache_size = -65536")  # 64 MB: claims and results touch little
    # Keep the -wal file from staying huge after a burst.
    conn.execute("PRAGMA journal_size_limit = 67108864")
    conn.execute("PRAGMA foreign_keys = OFF")
    return conn


PAGE_SIZE = 16384  # measured: 16% faster bulk insert and index builds than 4 KiB


def create_schema(conn: sqlite3.Connection) -> None:
    """Create all tables (not the post-load indexes) and stamp the version."""
    if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # only before the first table
    with transaction(conn):
        for ddl in _TABLES + _TALLY_TABLES:
            conn.execute(ddl)
        conn.execute(INDEX_GBIF_STATUS)
        conn.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
            (str(SCHEMA_VERSION),),
        )


def schema_version(conn: sqlite3.Connection) -> int:
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.OperationalError:
        return 0
    return int(row[0]) if row else 0


def migrate(conn: sqlite3.Connection) -> int:
    """Bring an existing database up to SCHEMA_VERSION; returns the version."""
    version = schema_version(conn)
    if version == 0:
        raise DatabaseError("not a download database (no schema version): was it built "
                            "with init_download_db.py?")
    if version > SCHEMA_VERSION:
        raise DatabaseError(f"database schema v{version} is newer than this program "
                            f"(v{SCHEMA_VERSION}); upgrade the program")
    for v in range(version + 1, SCHEMA_VERSION + 1):
        with transaction(conn):
            for step in MIGRATIONS.get(v, []):
                if callable(step):
                    step(conn)
                else:
                    conn.execute(step)
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(v),))
    return SCHEMA_VERSION


class transaction:
    """``with transaction(conn):`` BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error.

    IMMEDIATE takes the write lock up front, so the busy timeout applies and no
    statement inside can fail with SQLITE_BUSY on a read-to-write upgrade.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")


def get_meta(conn: sqlite3.Connection, key: str, default: str | None = None) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else default


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO meta(key, value) VALUES (?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def retry_locked(fn: Callable[[], object], attempts: int = 5, first_sleep: float = 0.5):
    """Run ``fn``; on 'database is locked'/'busy' retry with backoff (last resort
    behind the busy timeout, for slow shared filesystems)."""
    delay = first_sleep
    for i in range(attempts):
        try:
            return fn()
        except sqlite3.OperationalError as e:
            msg = str(e).lower()
            if i == attempts - 1 or ("locked" not in msg and "busy" not in msg):
                raise
            time.sleep(delay)
            delay *= 2
    return None


def use_wal(conn: sqlite3.Connection) -> None:
    """Switch a finished build to WAL: readers and the writer never block each other."""
    conn.execute("PRAGMA journal_mode = WAL")
