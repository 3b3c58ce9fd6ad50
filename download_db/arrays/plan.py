"""Job arrays: which task owns which hosts, the frozen main database, and per-task result DBs."""

from __future__ import annotations

import math
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..db import array_plans, hosts, url_groups
from ..db.connection import connect, open_readonly, readonly_uri, remove_database, transaction
from ..db.meta import get_meta, set_meta
from ..db.schema import POST_LOAD_INDEXES, create_schema
from ..db.sqlite import sqlite3
from ..db.tallies import install_tallies
from ..errors import DatabaseError, UsageError
from ..states import TODO_WHERE, WORK_LEFT_SQL

# Task databases are written by one process on one node and read from others
# (report, merge): a rollback journal, never WAL (WAL needs all on one host).
TASK_JOURNAL = "TRUNCATE"


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based, K of N
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not 1 <= int(m[1]) <= int(m[2]):
        raise UsageError(f"--shard must be K/N with 1 <= K <= N, not {text!r}")
    return Shard(int(m[1]), int(m[2]))


def shard_from_env(env: Mapping[str, str] = os.environ) -> Shard | None:
    """The array task this process is, from SGE's or Slurm's variables (None: not an array).

    SGE numbers tasks FIRST, FIRST+STEP, ... LAST; Slurm MIN ... MIN+COUNT-1 (an
    array with a step or a list is refused: its tasks could not tell their rank).
    """
    sge = env.get("SGE_TASK_ID", "")
    if sge and sge != "undefined":
        try:
            tid, first = int(sge), int(env.get("SGE_TASK_FIRST", "1"))
            last, step = int(env.get("SGE_TASK_LAST", sge)), int(env.get("SGE_TASK_STEPSIZE", "1"))
        except ValueError:
            raise UsageError("SGE_TASK_* variables are not numbers; pass --shard K/N") from None
        return Shard((tid - first) // step + 1, (last - first) // step + 1)
    slurm = env.get("SLURM_ARRAY_TASK_ID", "")
    if slurm:
        try:
            tid = int(slurm)
            first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
            count = int(env["SLURM_ARRAY_TASK_COUNT"])
        except (KeyError, ValueError):
            raise UsageError("SLURM_ARRAY_TASK_* variables are incomplete; pass --shard K/N") \
                from None
        if int(env.get("SLURM_ARRAY_TASK_MAX", first + count - 1)) != first + count - 1:
            raise UsageError("a Slurm array with gaps or a step (e.g. --array=1-9:2) cannot "
                             "be numbered; use --array=1-N or pass --shard K/N")
        return Shard(tid - first + 1, count)
    return None


def tasks_dir_for(db: Path) -> Path:
    return db.with_name(db.name + ".tasks")


def task_db_path(tasks_dir: Path, shard: Shard) -> Path:
    return tasks_dir / f"task-{shard.index:04d}-of-{shard.count:04d}.db"


def task_dbs(tasks_dir: Path) -> list[Path]:
    """Finished-building task databases (a .building file is a task killed while
    creating its database: it has no results and is rebuilt)."""
    if not tasks_dir.is_dir():
        return []
    return sorted(p for p in tasks_dir.glob("task-*-of-*.db") if p.is_file())


# -- the frozen main database ---------------------------------------------------------

def freeze(conn: sqlite3.Connection) -> bool:
    """Leave the main database self-contained for readers on other hosts: a new
    epoch, the WAL checkpointed into the file, rollback journal mode. Call last,
    when the stage is done writing. False if a reader kept it in WAL mode."""
    with transaction(conn):
        set_meta(conn, "array_epoch", uuid.uuid4().hex)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    try:
        mode = conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
    except sqlite3.OperationalError:  # a reader holds it (busy timeout passed)
        return False
    return str(mode).lower() == "delete"


def is_frozen(db: Path) -> bool:
    """Rollback mode in the header (bytes 18/19 = 1) and no WAL content beside it."""
    with open(db, "rb") as f:
        header = f.read(20)
    wal = Path(f"{db}-wal")
    return header[18:20] == b"\x01\x01" and (not wal.exists() or wal.stat().st_size == 0)


def open_frozen(db: Path) -> sqlite3.Connection:
    """Read the frozen main database from any host: immutable (no locks, no -shm),
    which is safe because no stage writes it while an array may run."""
    if not db.is_file():
        raise DatabaseError(f"database not found: {db}")
    if not is_frozen(db):
        raise DatabaseError(
            f"{db} is in WAL mode (written since its last freeze), so array tasks on other "
            "hosts cannot read it safely; run `init_download_db.py --merge-only` on one "
            "machine first (it merges finished tasks and freezes the database)")
    return open_readonly(db, immutable=True)


# -- the plan: hosts to tasks ---------------------------------------------------------

@dataclass(frozen=True)
class Piece:
    host_id: int
    part: int  # 0-based part of a split host (its plan's split_by % parts == part)
    parts: int
    work: int


def plan(work: Mapping[int, int], n: int, max_parts: int) -> list[list[Piece]]:
    """Hosts to N tasks, host-affine: a host stays in one task (its limits stay
    exact), unless it alone holds more than a task's share, then it is split into
    at most ``max_parts`` parts (its per-host concurrency, so each part keeps one
    connection) by image_id or url_group (fixed_plan). Longest piece first to the
    least loaded task.
    Deterministic: every task computes the same plan from the same frozen DB."""
    share = max(1, math.ceil(sum(work.values()) / n))
    pieces = []
    for host_id, w in work.items():
        if w <= 0:
            continue
        k = max(1, min(math.ceil(w / share), max_parts, n))
        pieces += [Piece(host_id, j, k, w // k + (1 if j < w % k else 0)) for j in range(k)]
    pieces.sort(key=lambda p: (-p.work, p.host_id, p.part))
    tasks: list[list[Piece]] = [[] for _ in range(n)]
    load = [0] * n
    for p in pieces:
        # parts of one host go to different tasks, so that they run side by side
        taken = {i for i in range(n) if any(q.host_id == p.host_id for q in tasks[i])}
        i = min((i for i in range(n) if i not in taken), key=lambda i: (load[i], i),
                default=min(range(n), key=lambda i: (load[i], i)))
        tasks[i].append(p)
        load[i] += p.work
    return tasks


def work_by_host(conn: sqlite3.Connection, max_attempts: int) -> dict[int, int]:
    """Images with work left per host, from the counters (no scan). Parked retries
    count when this array's --max-attempts gives them attempts again."""
    return dict(conn.execute(
        f"SELECT host_id, sum(n) FROM image_tally WHERE {WORK_LEFT_SQL} "
        "GROUP BY host_id HAVING sum(n) > 0", {"max_attempts": max_attempts}))


PlanRow = tuple[int, int, int, int, int]  # (host_id, part, parts, task, work), task 1-based


def fixed_plan(main: sqlite3.Connection, tasks_dir: Path, n: int, max_parts: int,
               max_attempts: int, epoch: str | None) -> tuple[str, list[PlanRow], str]:
    """The array's plan, made once and then only read: from the main DB (where a
    merge carried it), else from a sibling task's database (the first task made it),
    else made now from the work left. Re-planning after a merge would hand hosts
    to tasks that already ran, and their images to nobody. Returns (array_id, rows,
    split_by): a new plan splits a big host by url_group when the main DB has its
    groups (the images of one shared URL then share a task), else by image_id; a
    stored plan keeps the rule it was made with."""
    stored = array_plans.load(main, n)
    for path in task_dbs(tasks_dir) if stored is None else []:
        if not path.name.endswith(f"-of-{n:04d}.db"):
            continue
        try:
            conn = open_readonly(path)
            try:
                stored = array_plans.load(conn, n)
            finally:
                conn.close()
        except sqlite3.Error:  # being merged and deleted right now
            continue
        if stored is not None:
            break
    if stored is not None:
        return stored
    tasks = plan(work_by_host(main, max_attempts), n, max_parts)
    array_id = f"{n}x{(epoch or uuid.uuid4().hex)[:12]}"  # the same in every task
    # groups are computed once and never change after, so every task of this plan
    # divides the host by the same values
    by = (array_plans.BY_URL_GROUP if url_groups.has_column(main) and url_groups.done(main)
          else array_plans.BY_IMAGE)
    return array_id, [(p.host_id, p.part, p.parts, i + 1, p.work)
                      for i, t in enumerate(tasks) for p in t], by


def pieces_of(main: sqlite3.Connection, rows: list[PlanRow], shard: Shard,
              max_attempts: int) -> list[Piece]:
    """Task K's pieces of the plan, plus the hosts with work that the plan does not
    know (work re-opened since it was made, by a larger --max-attempts): each goes
    whole to one task chosen by its id alone, so every task agrees without asking."""
    mine = [Piece(h, j, k, w) for h, j, k, t, w in rows if t == shard.index]
    planned = {r[0] for r in rows}
    mine += [Piece(h, 0, 1, w) for h, w in sorted(work_by_host(main, max_attempts).items())
             if h not in planned and h % shard.count == shard.index - 1]
    return mine


# -- task databases -------------------------------------------------------------------

def create_task_db(main_db: Path, path: Path, shard: Shard, max_parts: int,
                   max_attempts: int = 4) -> int:
    """Build task K's database: its share of the work, copied from the frozen main DB.
    Built under a temporary name and renamed: a kill leaves no half task. Returns
    the number of images copied."""
    main = open_frozen(main_db)
    try:
        epoch = get_meta(main, "array_epoch")
        array_id, rows, split_by = fixed_plan(main, path.parent, shard.count, max_parts,
                                              max_attempts, epoch)
        pieces = pieces_of(main, rows, shard, max_attempts)
    finally:
        main.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".building")
    remove_database(tmp)
    conn = connect(tmp, bulk=True)
    create_schema(conn)
    conn.execute("ATTACH DATABASE ? AS main_db", (readonly_uri(main_db, immutable=True),))
    with transaction(conn):
        hosts.copy_from(conn, "main_db")
        attrs = _shared_columns(conn, "attributions")
        conn.execute(f"INSERT INTO attributions({attrs}) SELECT {attrs} FROM main_db.attributions")
        cols = _shared_columns(conn, "images")
        for p in pieces:
            conn.execute(
                f"INSERT INTO images({cols}) SELECT {cols} FROM main_db.images "
                "INDEXED BY images_todo "
                f"WHERE host_id = :host_id AND {TODO_WHERE} AND {WORK_LEFT_SQL} "
                f"AND {array_plans.SPLIT_SQL[split_by]} % :parts = :part",
                {"host_id": p.host_id, "max_attempts": max_attempts, "parts": p.parts,
                 "part": p.part})
        for key in ("ingest_source", "ingest_stats", "build_id"):
            value = _main_meta(conn, key)
            if value is not None:
                set_meta(conn, key, value)
        set_meta(conn, "ingest_phase", "done")
        set_meta(conn, "task_shard", str(shard))
        set_meta(conn, "task_main_db", str(main_db.resolve()))
        set_meta(conn, "task_epoch", epoch or "")
        set_meta(conn, "task_split", ",".join(f"{p.host_id}:{p.part}:{p.parts}" for p in pieces
                                              if p.parts > 1))
        # a merge carries it to main
        array_plans.save(conn, array_id, shard.count, rows, split_by)
        set_meta(conn, "array_id", array_id)
    conn.execute("DETACH DATABASE main_db")
    for ddl in POST_LOAD_INDEXES:
        conn.execute(ddl)
    with transaction(conn):
        install_tallies(conn, fresh_load=False)
        # What the task started from: the report adds (now - base) to the main DB.
        conn.execute("CREATE TABLE image_tally_base AS SELECT * FROM image_tally")
    n = conn.execute("SELECT count(*) FROM images").fetchone()[0]
    conn.execute(f"PRAGMA journal_mode = {TASK_JOURNAL}")
    conn.close()
    os.replace(tmp, path)
    return n


def _shared_columns(conn: sqlite3.Connection, table: str) -> str:
    """The columns of ``table`` both the task and the main DB have, by name: a main DB
    not yet migrated lacks the newest, and a column's position depends on when its
    migration ran, so ``SELECT *`` could shift values into the wrong columns."""
    main = {r[1] for r in conn.execute(f"PRAGMA main_db.table_info({table})")}
    return ", ".join(r[1] for r in conn.execute(f"PRAGMA main.table_info({table})")
                     if r[1] in main)


def _main_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM main_db.meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def task_split(conn: sqlite3.Connection) -> dict[int, tuple[int, int]]:
    """host_id -> (part, parts) for the hosts this task shares with others."""
    text = get_meta(conn, "task_split") or ""
    out = {}
    for item in filter(None, text.split(",")):
        h, j, k = (int(x) for x in item.split(":"))
        out[h] = (j, k)
    return out


def other_counts(paths: list[Path], shard: Shard) -> list[int]:
    """The task counts N of these unmerged array databases (``...-of-NNNN.db``) other
    than ``shard``'s, smallest first."""
    return sorted({int(p.name.split("-of-")[1].split(".")[0]) for p in paths} - {shard.count})


def refuse_other_arrays(tasks_dir: Path, shard: Shard) -> None:
    """Changing N is allowed only after a merge: unmerged results of an N-task array
    belong to its plan, and another N's plan would hand those hosts to other tasks."""
    others = other_counts(task_dbs(tasks_dir), shard)
    if others:
        raise UsageError(
            f"{tasks_dir} holds unmerged results of a {others[0]}-task array; run "
            f"init_download_db.py --merge-only before running it with {shard.count} tasks "
            f"(or resubmit with {others[0]} tasks)")


def check_task_db(conn: sqlite3.Connection, main_db: Path, shard: Shard) -> None:
    """Refuse a task database that belongs to another array or another main DB state."""
    have = get_meta(conn, "task_shard")
    if have != str(shard):
        raise UsageError(f"task database is for task {have}, not {shard}")
    main = open_frozen(main_db)
    try:
        epoch = get_meta(main, "array_epoch") or ""
    finally:
        main.close()
    if (get_meta(conn, "task_epoch") or "") != epoch:
        raise DatabaseError(
            f"{main_db} changed since this task's database was made (it was written with "
            "--force while tasks had unmerged results?); run init_download_db.py --merge-only")
