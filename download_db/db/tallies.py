"""Counter tables the report reads instead of scanning images, and every rule that keeps them.

A GROUP BY status over 52M rows takes 16-48 s; these tables hold a few thousand
rows. Each counter is described once (a `Tally`: key and sum columns as
expressions over one row); the triggers, the full recount and the merge's
temp trigger are all generated from that description, so they cannot disagree. Triggers
keep the counters exact in the same transaction as every change, whoever writes:
the downloader, the legacy import, a merge or a user's ad hoc UPDATE. They are
installed after the bulk load, so the load itself pays nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..states import FLAG_LEGACY, PARKED, TODO_WHERE, WORK_LEFT_SQL
from .sqlite import sqlite3


@dataclass(frozen=True)
class Tally:
    """One counter table: rows of ``source`` grouped by ``key``, adding up ``sums``.

    Expressions are written over a row ``{r}`` (new/old in a trigger, an alias in
    bulk SQL). ``signed``: rows enter and leave the counter (inserts, deletes,
    changes of a key); unsigned counters count events and only grow.
    """

    table: str
    ddl: str
    source: str
    trigger: str  # trigger name prefix
    key: tuple[tuple[str, str], ...]
    sums: tuple[tuple[str, str], ...]
    where: str = ""  # which rows count (over {r}); empty: all (a signed tally's must be)
    signed: bool = True
    on_update_of: str = ""  # unsigned: the column whose change is the event

    def keys(self, r: str) -> list[str]:
        return [e.format(r=r) for _, e in self.key]

    def values(self, r: str) -> list[str]:
        return [e.format(r=r) for _, e in self.sums]

    def columns(self) -> list[str]:
        return [c for c, _ in self.key + self.sums]

    def upsert(self) -> str:
        sets = ", ".join(f"{c} = {c} + excluded.{c}" for c, _ in self.sums)
        return f" ON CONFLICT DO UPDATE SET {sets}"


IMAGE_TALLY = Tally(
    # images per (host, status, error_type, attempts, parked): the source of
    # every status, error, retry-histogram and per-host figure. parked = 1 for a
    # transient failure whose attempts budget is spent (next_attempt_at parked).
    table="image_tally",
    ddl="""CREATE TABLE IF NOT EXISTS image_tally (
        host_id    INTEGER NOT NULL,
        status     TEXT    NOT NULL,
        error_type TEXT    NOT NULL,
        attempts   INTEGER NOT NULL,
        parked     INTEGER NOT NULL,
        n          INTEGER NOT NULL,
        bytes      INTEGER NOT NULL,
        PRIMARY KEY (host_id, status, error_type, attempts, parked)
    ) WITHOUT ROWID""",
    source="images",
    trigger="images_tally",
    key=(("host_id", "{r}.host_id"), ("status", "{r}.status"),
         ("error_type", "coalesce({r}.error_type, '')"), ("attempts", "{r}.attempts"),
         ("parked", "({r}." + PARKED + ")")),
    sums=(("n", "1"), ("bytes", "coalesce({r}.file_size, 0)")),
)
ACTIVITY = Tally(
    # Finished attempts per minute (by last_attempt_at): throughput, ETA and the
    # progress-over-time chart. Legacy adoptions are not downloads.
    table="activity",
    ddl="""CREATE TABLE IF NOT EXISTS activity (
        minute    INTEGER PRIMARY KEY,
        attempts  INTEGER NOT NULL,
        successes INTEGER NOT NULL,
        failures  INTEGER NOT NULL,
        bytes     INTEGER NOT NULL
    )""",
    source="images",
    trigger="images_activity",
    key=(("minute", "CAST({r}.last_attempt_at / 60 AS INTEGER)"),),
    sums=(("attempts", "1"), ("successes", "{r}.status = 'success'"),
          ("failures", "{r}.status LIKE 'failed%'"),
          ("bytes", "CASE WHEN {r}.status = 'success' THEN coalesce({r}.file_size, 0) ELSE 0 END")),
    where=f"{{r}}.last_attempt_at IS NOT NULL AND {{r}}.error_type IS NOT '{FLAG_LEGACY}'",
    signed=False,
    on_update_of="last_attempt_at",
)
GBIF_TALLY = Tally(
    table="gbif_tally",
    ddl="""CREATE TABLE IF NOT EXISTS gbif_tally (
        status TEXT PRIMARY KEY,
        n      INTEGER NOT NULL
    ) WITHOUT ROWID""",
    source="gbif_ids",
    trigger="gbif_tally",
    key=(("status", "{r}.status"),),
    sums=(("n", "1"),),
)
TALLIES = (IMAGE_TALLY, GBIF_TALLY, ACTIVITY)
TALLY_TABLES = [t.ddl for t in TALLIES]


def _add(t: Tally, r: str, sign: str) -> str:
    values = t.keys(r) + [f"{sign}({v})" for v in t.values(r)]
    return (f"INSERT INTO {t.table}({', '.join(t.columns())}) "
            f"VALUES ({', '.join(values)}){t.upsert()};")


def _columns_read(exprs: list[str]) -> list[str]:
    """Columns of the row that the expressions read, in order of appearance."""
    return list(dict.fromkeys(c for e in exprs for c in re.findall(r"\{r\}\.(\w+)", e)))


def triggers(t: Tally) -> list[tuple[str, str]]:
    """(name, DDL) of the triggers that keep ``t`` exact."""
    if not t.signed:
        col = t.on_update_of
        when = " AND ".join([f"new.{col} IS NOT old.{col}", *filter(None, [
            t.where.format(r="new")])])
        return [(t.trigger, f"""CREATE TRIGGER IF NOT EXISTS {t.trigger}
        AFTER UPDATE OF {col} ON {t.source}
        WHEN {when} BEGIN
        {_add(t, "new", "+")} END""")]
    exprs = [e for _, e in t.key + t.sums if "{r}" in e]
    # WHEN keeps the many updates that change no counted value (claims, leases) cheap.
    changed = " OR ".join(f"{e.format(r='old')} IS NOT {e.format(r='new')}" for e in exprs)
    return [
        (f"{t.trigger}_ins", f"""CREATE TRIGGER IF NOT EXISTS {t.trigger}_ins
        AFTER INSERT ON {t.source} BEGIN
        {_add(t, "new", "+")} END"""),
        (f"{t.trigger}_del", f"""CREATE TRIGGER IF NOT EXISTS {t.trigger}_del
        AFTER DELETE ON {t.source} BEGIN
        {_add(t, "old", "-")} END"""),
        (f"{t.trigger}_upd", f"""CREATE TRIGGER IF NOT EXISTS {t.trigger}_upd
        AFTER UPDATE OF {', '.join(_columns_read(exprs))} ON {t.source}
        WHEN {changed} BEGIN
        {_add(t, "old", "-")}
        {_add(t, "new", "+")} END"""),
    ]


TRIGGERS = [ddl for t in TALLIES for _, ddl in triggers(t)]
IMAGE_TRIGGERS = [nd for t in TALLIES if t.source == "images" for nd in triggers(t)]


def _aggregate(e: str) -> str:
    return "count(*)" if e == "1" else f"sum({e})"


def select_sql(t: Tally, r: str, from_where: str, sign: str = "",
               columns_from: Mapping[str, str] | None = None) -> str:
    """The counter's rows (key, sums) for the rows ``from_where`` selects (a
    FROM ... WHERE ... over alias ``r``); ``sign`` "-" negates the sums.
    ``columns_from``: column -> another alias to read that column from."""
    def expr(e: str) -> str:
        e = e.format(r=r)
        for col, alias in (columns_from or {}).items():
            e = re.sub(rf"\b{r}\.{col}\b", f"{alias}.{col}", e)
        return e
    keys = [expr(e) for _, e in t.key]
    group = ", ".join(str(i + 1) for i in range(len(keys)))
    aggs = [f"{sign}{_aggregate(expr(e))}" for _, e in t.sums]
    cond = f" AND {expr(t.where)}" if t.where else ""
    return f"SELECT {', '.join(keys + aggs)} {from_where}{cond} GROUP BY {group}"


def recount_sql(t: Tally) -> str:
    """The counter's rows recounted from scratch (one scan of its source)."""
    # WHERE 1: an INSERT ... SELECT followed by an upsert needs a WHERE to parse
    return select_sql(t, "r", f"FROM {t.source} AS r WHERE 1")


def bulk_sql(t: Tally, r: str, from_where: str, sign: str = "",
             columns_from: Mapping[str, str] | None = None) -> str:
    """Add select_sql's rows to the counter in one statement."""
    return (f"INSERT INTO {t.table}({', '.join(t.columns())}) "
            f"{select_sql(t, r, from_where, sign, columns_from)}{t.upsert()}")


@dataclass(frozen=True)
class MergeCounters:
    """The counters' change while a merge updates images rows: ``begin`` before the
    updates and ``finish`` after them, all in one transaction, with the per-row
    triggers dropped meanwhile (a merge applies this instead).

    A temp trigger (this connection's only, gone with it) sees each updated row
    once, old and new, inside the update's own pass: a signed counter accumulates
    per (old key, new key) into a temp table of a few thousand rows, which
    ``finish`` applies (the old side off, the new side on); an unsigned counter is
    added per row. No second walk over the rows, no sort of millions of them."""

    begin: tuple[str, ...]
    finish: tuple[str, ...]


MERGE_TRIGGER = "merge_counters"


def merge_counters(unchanged: tuple[str, ...] = ()) -> MergeCounters:
    """MergeCounters for updates of images; the ``unchanged`` columns are not set by
    the update (the new side reads them from the old row)."""
    keep = dict.fromkeys(unchanged, "old")
    begin: list[str] = []
    body: list[str] = []
    finish: list[str] = []
    for t in TALLIES:
        if t.source != "images":
            continue
        if t.signed:
            b, a, f = _both_sides(t, keep)
            begin += b
            body.append(a)
            finish += f
        else:  # added per row straight to the counter
            _, _, values, cond = _accumulator(t, keep)
            body.append(f"INSERT INTO {t.table}({', '.join(t.columns())}) "
                        f"SELECT {', '.join(values)} WHERE 1{cond}{t.upsert()}")
    begin.append(f"DROP TRIGGER IF EXISTS temp.{MERGE_TRIGGER}")
    begin.append(f"CREATE TEMP TRIGGER {MERGE_TRIGGER} AFTER UPDATE ON main.images BEGIN "
                 + "; ".join(body) + "; END")
    return MergeCounters(tuple(begin), (f"DROP TRIGGER temp.{MERGE_TRIGGER}", *finish))


def _swap(e: str, r: str, keep: Mapping[str, str]) -> str:
    """Expression ``e`` over alias ``r``, the ``keep`` columns read from their alias."""
    e = e.format(r=r)
    for col, alias in keep.items():
        e = re.sub(rf"\b{r}\.{col}\b", f"{alias}.{col}", e)
    return e


def _accumulator(t: Tally, keep: Mapping[str, str]) -> tuple[list[str], list[str], list[str],
                                                               str]:
    """A temp table summing a counter's change per key over updated rows (aliases old
    and new): (key columns, sum columns, the expressions filling them, the condition a
    row must meet). Signed: per (old key, new key), old and new sums; unsigned: the new
    row's key and sums, for the rows its ``where`` counts."""
    if not t.signed:
        cond = f" AND {_swap(t.where, 'new', keep)}" if t.where else ""
        return ([f"k{i}" for i in range(len(t.key))], [f"s{i}" for i in range(len(t.sums))],
                [_swap(e, "new", keep) for _, e in t.key + t.sums], cond)
    keys = [f"{side}k{i}" for side in "on" for i in range(len(t.key))]
    sums = [f"{side}s{i}" for side in "on" for i in range(len(t.sums))]
    exprs = ([e.format(r="old") for _, e in t.key] + [_swap(e, "new", keep) for _, e in t.key]
             + [e.format(r="old") for _, e in t.sums]
             + [_swap(e, "new", keep) for _, e in t.sums])
    return keys, sums, exprs, ""


def _accumulate(temp: str, keys: list[str], sums: list[str], exprs: list[str],
                rest: str) -> tuple[str, str]:
    """(the temp table's DDL, the upsert adding ``exprs`` to it; ``rest`` follows the
    SELECT list: a FROM ... WHERE or a bare WHERE, as an upsert needs one)."""
    sets = ", ".join(f"{c} = {c} + excluded.{c}" for c in sums)
    return (f"CREATE TEMP TABLE {temp}({', '.join(keys + sums)}, "
            f"PRIMARY KEY ({', '.join(keys)})) WITHOUT ROWID",
            f"INSERT INTO {temp}({', '.join(keys + sums)}) SELECT {', '.join(exprs)} "
            f"{rest} ON CONFLICT DO UPDATE SET {sets}")


def _both_sides(t: Tally, keep: Mapping[str, str]) -> tuple[list[str], str, list[str]]:
    """A signed counter's change: (begin statements, the trigger's upsert, finish
    statements) of MergeCounters."""
    k, m = len(t.key), len(t.sums)
    temp = f"merge_{t.table}"  # unqualified inside a trigger; temp comes first
    keys, sums, exprs, _ = _accumulator(t, keep)
    create, add = _accumulate(temp, keys, sums, exprs, "WHERE 1")
    cols = ", ".join(t.columns())

    def side(s: str, sign: str) -> str:
        ks = ", ".join(f"{s}k{i}" for i in range(k))
        vs = ", ".join(f"{sign}sum({s}s{i})" for i in range(m))
        return (f"INSERT INTO {t.table}({cols}) SELECT {ks}, {vs} FROM temp.{temp} WHERE 1 "
                f"GROUP BY {', '.join(str(i + 1) for i in range(k))}{t.upsert()}")
    return ([f"DROP TABLE IF EXISTS temp.{temp}", create], add,
            [side("o", "-"), side("n", ""), f"DROP TABLE temp.{temp}"])


@dataclass(frozen=True)
class ChangeCount:
    """One counter's change over the images rows a merge sets from a task's, counted
    by a reader of the database as the merge found it (arrays/merge_counts.py) in
    place of the temp trigger: ``create`` makes the reader's temp table, ``count``
    fills it from a ``{from_where}`` over aliases new (the task's row) and old (the
    row it replaces), ``read`` returns its rows, a few thousand, and ``apply`` turns
    them into the writer's upserts."""

    tally: Tally
    create: str
    count: str
    read: str

    def apply(self, rows: list[tuple]) -> list[tuple[str, list[tuple]]]:
        """(statement, parameter rows) adding the counted change to the counter."""
        t = self.tally
        k, m = len(t.key), len(t.sums)
        values = ", ".join(["?"] * k + ["{sign}?"] * m)
        add = (f"INSERT INTO {t.table}({', '.join(t.columns())}) VALUES ({values})"
               f"{t.upsert()}")
        if not t.signed:
            return [(add.format(sign=""), rows)]
        return [(add.format(sign="-"), [r[:k] + r[2 * k:2 * k + m] for r in rows]),
                (add.format(sign=""), [r[k:2 * k] + r[2 * k + m:] for r in rows])]


def change_counts(unchanged: tuple[str, ...] = ()) -> tuple[ChangeCount, ...]:
    """ChangeCounts of the images counters; the ``unchanged`` columns are not set by
    the merge (the new side reads them from the old row)."""
    keep = dict.fromkeys(unchanged, "old")
    out = []
    for t in TALLIES:
        if t.source != "images":
            continue
        keys, sums, exprs, cond = _accumulator(t, keep)
        create, count = _accumulate(f"change_{t.table}", keys, sums, exprs,
                                    f"{{from_where}}{cond}")
        out.append(ChangeCount(t, create, count,
                               f"SELECT {', '.join(keys + sums)} FROM temp.change_{t.table}"))
    return tuple(out)


def work_left(conn: sqlite3.Connection) -> int:
    """Images with work left as stored (states.EXHAUSTED_WHERE), from the counters:
    a few thousand rows, where counting the work list walks millions."""
    return conn.execute(f"SELECT coalesce(sum(n), 0) FROM image_tally WHERE {TODO_WHERE} "
                        "AND parked = 0").fetchone()[0]


def budget_hosts(conn: sqlite3.Connection, max_attempts: int) -> tuple[list[int], list[int]]:
    """Hosts whose retries an attempts budget of ``max_attempts`` changes, from the
    counters: (hosts with parked retries it re-opens, hosts with retries it parks).
    Both empty when the budget is the one the rows were written under."""
    reopen, park = [], []
    for host_id, parked in conn.execute(
            f"SELECT DISTINCT host_id, parked FROM image_tally WHERE {TODO_WHERE} AND n > 0 "
            f"AND parked = {WORK_LEFT_SQL}", {"max_attempts": max_attempts}):
        (reopen if parked else park).append(host_id)
    return reopen, park


def tallies_installed(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' "
                        "AND name = 'images_tally_upd'").fetchone()[0] == 1


def install_tallies(conn: sqlite3.Connection, *, fresh_load: bool) -> None:
    """Fill the counters and install their triggers (inside the caller's transaction).

    ``fresh_load``: every image is still as the load left it (pending, never
    tried), so hosts.n_images and a gbif_ids count are exact and nothing needs a
    scan. Otherwise (an upgraded database) one full scan recounts from the rows.
    """
    for t in TALLIES:
        conn.execute(t.ddl)
        conn.execute(f"DELETE FROM {t.table}")
    for t in TALLIES:
        if t.source == "images" and fresh_load:
            continue
        conn.execute(f"INSERT INTO {t.table}({', '.join(t.columns())}) {recount_sql(t)}")
    if fresh_load:
        conn.execute("INSERT INTO image_tally SELECT host_id, 'pending', '', 0, 0, n_images, 0 "
                     "FROM hosts WHERE n_images > 0")
    for ddl in TRIGGERS:
        conn.execute(ddl)
