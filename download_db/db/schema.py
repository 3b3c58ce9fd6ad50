"""The database's shape: tables, indexes, the schema version and additive migrations."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import DatabaseError
from ..states import RESCUE_WHERE, TODO_WHERE
from . import array_plans, canvases, occurrences, placeholders
from .connection import PAGE_SIZE, transaction
from .meta import get_meta
from .sqlite import sqlite3
from .tallies import TALLY_TABLES, install_tallies

# Also the shape of an array task's own meta and runs (a verify task's verdicts DB).
META_DDL = """CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
)"""
RUNS_DDL = """CREATE TABLE IF NOT EXISTS runs (
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
    shard        TEXT,
    depends_on   TEXT
)"""

# The readable form of images for ad hoc SQL (docs/database.md): host name and
# attribution joined in. The columns up to creator are the view's first shape (v1..v15),
# in their order, so SQL written against it keeps working; later ones follow (v16).
IMAGES_V = """images_v AS
        SELECT i.image_id, i.gbif_id, i.image_no, i.status, i.attempts,
               i.next_attempt_at, h.host, i.http_status, i.error_type, i.error_detail,
               i.file_path, i.file_size, i.sha256, i.width, i.height,
               i.last_attempt_at, i.image_key, i.urls,
               a.license, a.rights_holder, a.creator,
               a.publisher, i.fetched_url, i.from_gbif_cache, i.phash, i.dhash,
               i.dup_group, i.near_group, i.url_group, i.last_checked, i.prev_error
          FROM images i
          JOIN hosts h ON h.host_id = i.host_id
          LEFT JOIN attributions a ON a.attribution_id = i.attribution_id"""

# Timestamps are epoch seconds (REAL): cheap to compare on hot paths; read them
# with datetime(col, 'unixepoch').
_TABLES = [
    META_DDL,
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
        error_detail    TEXT,
        phash           INTEGER,
        dhash           INTEGER,
        dup_group       INTEGER,
        near_group      INTEGER,
        last_checked    REAL,
        prev_error      TEXT,
        from_gbif_cache INTEGER,
        fetched_url     TEXT,
        url_group       INTEGER,
        edge_hashes     BLOB
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
        updated_at        REAL,
        concurrency_limit INTEGER
    )""",
    # license / rightsHolder / creator / publisher of an image's best multimedia
    # row, stored once per distinct combination; the id is a content hash.
    """CREATE TABLE IF NOT EXISTS attributions (
        attribution_id INTEGER PRIMARY KEY,
        license        TEXT NOT NULL,
        rights_holder  TEXT NOT NULL,
        creator        TEXT NOT NULL,
        publisher      TEXT
    )""",
    # One row per stage run: what ran where, and how it ended.
    RUNS_DDL,
    # The readable form of images for ad hoc SQL: host name and attribution.
    f"CREATE VIEW IF NOT EXISTS {IMAGES_V}",
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
# verify's walk (upkeep/verify.py): saved images, never checked (NULL) first, then
# oldest check first. Partial on success: it holds only saved images, and a fresh
# load (all pending) pays nothing for it.
INDEX_CHECKED = ("CREATE INDEX IF NOT EXISTS images_checked ON images(last_checked) "
                 "WHERE status = 'success'")
# revisiting old permanent failures (upkeep/revisit.py): per host, oldest attempt
# first. Partial: permanent failures are a few percent of the images.
INDEX_FAILED = ("CREATE INDEX IF NOT EXISTS images_failed ON images(host_id, last_attempt_at) "
                "WHERE status = 'failed_permanent'")
# the rescue from GBIF's image cache (download --rescue-from-gbif-cache): its work list,
# due first (a permanent failure's next_attempt_at is 0 until the cache fails it
# transiently); partial on states.RESCUE_WHERE, so it holds only permanent failures the
# cache may cure and was not asked about yet
INDEX_RESCUE = ("CREATE INDEX IF NOT EXISTS images_rescue ON images(next_attempt_at) "
                f"WHERE {RESCUE_WHERE}")
# images whose first candidate URL other images share (ingest/url_groups.py): a claim
# takes a claimed row's group-mates with it (db/claims.py). Partial: most URLs are
# their one image's, so it holds a few percent of the rows, and none during the load
# (made with the tables: built after the load, its scan cost a 2M-row build 0.2 s)
INDEX_URL_GROUP = ("CREATE INDEX IF NOT EXISTS images_url_group ON images(url_group) "
                   "WHERE url_group IS NOT NULL")
# the report's counts of images from the cache and of those it had no copy of: only
# rows the rescue touched
INDEX_GBIF_CACHE = ("CREATE INDEX IF NOT EXISTS images_gbif_cache ON images(from_gbif_cache, "
                    "status) WHERE from_gbif_cache IS NOT NULL")


def _migrate_v2(conn: sqlite3.Connection) -> None:
    """v2: counters for the report. A database still loading gets them at the end
    of its load; a built one is recounted once (one scan of images)."""
    for ddl in TALLY_TABLES:
        conn.execute(ddl)
    if "shard" not in {r[1] for r in conn.execute("PRAGMA table_info(runs)")}:
        conn.execute("ALTER TABLE runs ADD COLUMN shard TEXT")  # K/N of an array task
    if get_meta(conn, "ingest_phase") == "done":
        install_tallies(conn, fresh_load=False)


# Additive migrations: version -> steps (SQL or a function of the connection),
# run in one transaction per version; a fresh database gets the same shape from
# _TABLES and is stamped SCHEMA_VERSION. Never rebuild a large table: ALTER TABLE
# ... ADD COLUMN, CREATE INDEX/TABLE/TRIGGER and counting scans only.
# A change adds its entry under the next free number; the version follows.
class AddColumn:
    """ALTER TABLE ... ADD COLUMN, skipped when the column is there already, so a
    database whose stamp is older than its shape (a version step interrupted by hand,
    an old copy patched with SQL) still migrates instead of failing on a duplicate."""

    def __init__(self, table: str, column: str, decl: str) -> None:
        self.table, self.column, self.decl = table, column, decl

    def __call__(self, conn: sqlite3.Connection) -> None:
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({self.table})")}
        if self.column not in have:
            conn.execute(f"ALTER TABLE {self.table} ADD COLUMN {self.column} {self.decl}")


Step = str | Callable[[sqlite3.Connection], None]
MIGRATIONS: dict[int, list[Step]] = {
    2: [_migrate_v2],
    3: [array_plans.DDL],  # each job array's host -> task plan (arrays/plan.py)
    # imagehash pHash/dHash of each saved image (files/phash.py), signed 64-bit
    4: [AddColumn("images", "phash", "INTEGER"), AddColumn("images", "dhash", "INTEGER")],
    5: [occurrences.DDL],  # datasetKey/occurrenceID per gbifID, for citation (export)
    # duplicate groups (identity/dedupe.py): smallest image_id of the group, NULL alone
    6: [AddColumn("images", "dup_group", "INTEGER"),
        AddColumn("images", "near_group", "INTEGER")],
    # when verify last found the file sound (upkeep/verify.py); one scan builds the index
    7: [AddColumn("images", "last_checked", "REAL"), INDEX_CHECKED],
    8: [placeholders.DDL],  # a host's one picture for many URLs (identity/dedupe.py)
    # each host's adaptive limit as its downloader last set it (web/adaptive.py)
    9: [AddColumn("hosts", "concurrency_limit", "INTEGER")],
    # the outcome a revisit replaced (upkeep/revisit.py), and the index it walks
    10: [AddColumn("images", "prev_error", "TEXT"), INDEX_FAILED],
    # an array task's other IIIF canvases, kept for the merge (db/canvases.py)
    11: [canvases.DDL],
    # the stage a run's stage depends on (states.DEPENDS_ON), for prerequisite_failed
    12: [AddColumn("runs", "depends_on", "TEXT")],
    # images saved from GBIF's image cache (download --rescue-from-gbif-cache), the
    # rescue's work list and the report's counts; each index is one scan of images
    13: [AddColumn("images", "from_gbif_cache", "INTEGER"), INDEX_RESCUE, INDEX_GBIF_CACHE],
    # the URL whose response became the saved file (download/worker.py), and the
    # multimedia row's publisher (export's publisher column); NULL on older rows
    14: [AddColumn("images", "fetched_url", "TEXT"),
         AddColumn("attributions", "publisher", "TEXT")],
    # one fetch per shared URL across processes: the smallest image_id with the row's
    # first candidate URL, NULL when no other row has it (filled by
    # ingest/url_groups.py at the next ingest/merge/finalize stage; one scan builds the
    # index), and the rule a job array's plan splits a big host by (arrays/plan.py)
    15: [AddColumn("images", "url_group", "INTEGER"), INDEX_URL_GROUP,
         AddColumn("array_plan", "split_by", "TEXT NOT NULL DEFAULT 'image_id'")],
    # images_v gains publisher, fetched_url and the identity/upkeep columns (a view:
    # replaced whole, no table touched)
    16: ["DROP VIEW IF EXISTS images_v", f"CREATE VIEW {IMAGES_V}"],
    # the edge hashes near groups use to find crops (files/edgehash.py); NULL on rows
    # hashed before, which `gbif-download-db hash` fills in
    17: [AddColumn("images", "edge_hashes", "BLOB")],
}
SCHEMA_VERSION = max(MIGRATIONS)


def create_schema(conn: sqlite3.Connection) -> None:
    """Create all tables (not the post-load indexes) and stamp the version."""
    if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # only before the first table
    with transaction(conn):
        for ddl in [*_TABLES, *TALLY_TABLES, array_plans.DDL, occurrences.DDL,
                    placeholders.DDL, canvases.DDL]:
            conn.execute(ddl)
        conn.execute(INDEX_GBIF_STATUS)
        conn.execute(INDEX_CHECKED)
        conn.execute(INDEX_FAILED)
        conn.execute(INDEX_RESCUE)
        conn.execute(INDEX_GBIF_CACHE)
        conn.execute(INDEX_URL_GROUP)
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


def apply_migration(conn: sqlite3.Connection, version: int) -> None:
    """Run one version's steps (inside the caller's transaction)."""
    for step in MIGRATIONS[version]:
        if callable(step):
            step(conn)
        else:
            conn.execute(step)


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
            apply_migration(conn, v)
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(v),))
    return SCHEMA_VERSION
