"""One task of a job array: find its shard, make or check its database, point the run at it."""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol, TextIO

from ..config import DownloadConfig
from ..db import hosts
from ..db.connection import connect
from ..errors import DatabaseError
from ..progress import say
from . import plan


class Sharded(Protocol):
    @property
    def shard(self) -> str: ...  # "K/N", "none" or "" (from the scheduler's variables)


def shard_of(cfg: Sharded) -> plan.Shard | None:
    """The array task a download or verify run is, or None for a plain run."""
    if cfg.shard.strip().lower() == "none":
        return None
    return plan.parse_shard(cfg.shard) if cfg.shard else plan.shard_from_env()


def prepare(cfg: DownloadConfig, shard: plan.Shard, out: TextIO | None = None) -> DownloadConfig:
    """The config of task K's own run: its database (made from the frozen main DB on
    first start, reused on resubmission), rollback journal, and its share of split
    hosts' limits. Nothing here writes the main database."""
    tasks_dir = cfg.tasks_dir or plan.tasks_dir_for(cfg.db)
    plan.refuse_other_arrays(tasks_dir, shard)
    path = plan.task_db_path(tasks_dir, shard)
    if not path.exists():
        say(f"array task {shard}: taking its share of the work from {cfg.db}", out)
        n = plan.create_task_db(cfg.db, path, shard, cfg.per_host_concurrency,
                                 cfg.max_attempts)
        say(f"array task {shard}: {n:,} images -> {path}", out)
    else:
        say(f"array task {shard}: resuming with {path}", out)
    try:
        conn = connect(path, wal=False)
    except Exception as e:  # noqa: BLE001 - any open failure means the same to the user
        raise DatabaseError(f"cannot open task database {path}: {e}") from None
    try:
        plan.check_task_db(conn, cfg.db, shard)
        names = hosts.names(conn)
        split = tuple((names[h], j, k) for h, (j, k) in sorted(plan.task_split(conn).items()))
    finally:
        conn.close()
    return replace(cfg, db=path, wal=False, split=split, main_db=cfg.db, shard="none")
