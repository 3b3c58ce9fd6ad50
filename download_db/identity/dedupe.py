"""Dedupe: exact groups by sha256 and near groups by pHash distance, written in bounded chunks."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from ..arrays.plan import freeze
from ..db import identity, runs
from ..db.connection import retry_locked, transaction
from ..db.meta import get_meta, set_meta
from ..db.sqlite import sqlite3
from ..errors import UsageError
from ..progress import RunContext
from ..stages import open_stage
from ..states import DEFAULT_MAX_ATTEMPTS
from . import crops, groups, placeholders

# pHash distance that makes two saved images near copies. Chosen by
# tests/test_dedupe.py on the shipped herbarium sheets: the same sheet re-encoded or
# halved is 0-1 bits away, two different sheets 26. A crop of the colour bar
# moves pHash by 12-14 bits there, which no k that scales can cover: at 50M
# hashes, k = 14 would put ~165 random neighbours next to every image (and its
# keys would be a few bits wide); k = 3 keeps keys of 16 to 26 bits, which
# bench/dedupe.py measures at 50M. A smaller collection may pass a larger k.
DEFAULT_NEAR_DISTANCE = 3
META_NEAR_DISTANCE = "near_distance"  # the last --near-distance: finalize keeps using it
CHUNK = 20_000  # group changes per transaction


@dataclass(frozen=True)
class DedupeConfig:
    db: Path
    near_distance: int | None = None  # None: the last dedupe's, else the default
    install_path: Path | None = None  # where placeholder files are removed; None: kept
    max_shared: int = placeholders.DEFAULT_MAX_SHARED
    max_attempts: int = DEFAULT_MAX_ATTEMPTS  # for the gbifID roll-up of placeholders
    workers: int = 1  # processes for the bands of the near-duplicate index
    force: bool = False
    bar: bool | None = None
    progress_every: float = 10.0

    def validate(self) -> DedupeConfig:
        if not self.db.is_file():
            raise UsageError(f"--db {self.db}: no such database")
        if self.near_distance is not None and not 0 <= self.near_distance <= 32:
            raise UsageError("--near-distance must be between 0 and 32")
        if not 1 <= self.workers <= 64:
            raise UsageError("--workers must be between 1 and 64")
        if self.max_shared < 1:
            raise UsageError("--placeholder-urls must be at least 1")
        if self.install_path is not None and not self.install_path.is_dir():
            raise UsageError(f"--install-path {self.install_path}: no such directory")
        return self


@dataclass
class DedupeStats:
    exact_groups: int = 0
    exact_images: int = 0
    near_groups: int = 0
    near_images: int = 0
    near_distance: int = DEFAULT_NEAR_DISTANCE
    crop_links: int = 0  # pairs linked by an edge (crops.py) and not by their pHash
    placeholders: int = 0  # groups found by this run
    placeholder_images: int = 0
    files_removed: int = 0
    changed: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["seconds"] = round(self.seconds, 2)
        return d


def dedupe(conn: sqlite3.Connection, ctx: RunContext | None = None, *,
           near_distance: int | None = None, root: Path | None = None,
           max_shared: int = placeholders.DEFAULT_MAX_SHARED,
           max_attempts: int = DEFAULT_MAX_ATTEMPTS, chunk: int = CHUNK,
           workers: int = 1) -> DedupeStats:
    """Flag placeholders (their files removed under ``root`` but one example), then
    recompute dup_group and near_group of every saved image and write only the
    rows that change, a transaction per chunk: safe to kill and re-run (a re-run
    computes the same groups and finishes the writes). ``near_distance`` None: the
    distance the last dedupe used (remembered in meta), else the default."""
    ctx = ctx or RunContext(every=0.0)
    t0 = time.monotonic()
    k = near_distance
    if k is None:
        k = int(get_meta(conn, META_NEAR_DISTANCE) or DEFAULT_NEAR_DISTANCE)
    st = DedupeStats(near_distance=k)
    dup_rows = identity.duplicates(conn)
    ids, hashes, hosts = identity.hashed(conn)
    a, b = groups.near_links(hashes, k, workers=workers)
    # placeholders are judged by whole pictures: the same margin or label template on
    # many sheets must never make their images one placeholder
    near = groups.group_ids(ids, a, b)
    found = placeholders.find(dup_rows, ids, hosts, near, max_shared)
    st.placeholders = len(found)
    phash_of = {int(i): int(h) for i, h in zip(ids[np.isin(ids, [g.ids[0] for g in found])],
                                               hashes[np.isin(ids, [g.ids[0] for g in found])],
                                               strict=True)}
    st.placeholder_images, st.files_removed = placeholders.flag_all(
        conn, found, root, phash_of, max_attempts)
    ctx.check_stop()
    ca, cb = _crop_links(conn, ids, workers, ctx)
    st.crop_links = int(np.count_nonzero(_near_of(ids[ca], near) != _near_of(ids[cb], near)))
    a, b = np.concatenate([a, ca]), np.concatenate([b, cb])
    gone = np.array(sorted({i for g in found for i in g.ids}), np.int64)
    if found:  # the flagged images leave the groups; the rest are regrouped without them
        dup_rows = [r for r in dup_rows if r[0] not in set(gone.tolist())]
    keep = ~(np.isin(ids[a], gone) | np.isin(ids[b], gone))
    near = groups.group_ids(ids, a[keep], b[keep])
    dup = _exact_groups(dup_rows)
    st.exact_images, st.exact_groups = len(dup), len(set(dup.values()))
    st.near_images, st.near_groups = len(near), len(set(near.values()))
    old = identity.grouped(conn)
    changes = sorted(
        (dup.get(i), near.get(i), i) for i in set(dup) | set(near) | set(old)
        if old.get(i, (None, None)) != (dup.get(i), near.get(i)))
    progress = ctx.progress("dedupe", len(changes), item="images", counting=True)
    try:
        for lo in range(0, len(changes), chunk):
            part = changes[lo:lo + chunk]

            def txn(part=part) -> None:
                with transaction(conn):
                    identity.save_groups(conn, part)

            retry_locked(txn)
            st.changed += len(part)
            progress.update(st.changed, len(part))
            ctx.check_stop()
    finally:
        progress.close()
    st.seconds = time.monotonic() - t0
    with transaction(conn):
        set_meta(conn, META_NEAR_DISTANCE, str(k))
        set_meta(conn, placeholders.META_MAX_SHARED, str(max_shared))
        set_meta(conn, identity.DEDUPE_STATS,
                 json.dumps({**st.as_dict(), "finished_at": time.time()}, sort_keys=True))
    return st


def _crop_links(conn: sqlite3.Connection, ids: np.ndarray, workers: int,
                ctx: RunContext) -> tuple[np.ndarray, np.ndarray]:
    """Crop links (crops.py) as index pairs into ids (the pHashed images). A stop is
    seen between edges (about a minute each at 50M), not only in the writes."""
    eids, edges = identity.edge_hashed(conn)
    ea, eb = crops.crop_links(edges, workers=workers, after_edge=ctx.check_stop)
    del edges
    pos = np.searchsorted(ids, eids)  # both in image_id order; every eid is in ids
    return pos[ea], pos[eb]


def _near_of(image_ids: np.ndarray, near: dict[int, int]) -> np.ndarray:
    """Each image's near group in ``near``, or -1 - its id when it has none."""
    return np.array([near.get(i, -1 - i) for i in image_ids.tolist()], np.int64)


def _exact_groups(rows: list[tuple[int, int, str, int]]) -> dict[int, int]:
    """{image_id: smallest image_id with the same sha256} for groups of two or more."""
    by_sha: dict[str, list[int]] = {}
    for image_id, _host, sha, _n in rows:
        by_sha.setdefault(sha, []).append(image_id)
    return {i: min(m) for m in by_sha.values() if len(m) > 1 for i in m}


def summary(st: DedupeStats, ctx: RunContext) -> None:
    ctx.say(f"dedupe: {st.exact_groups:,} exact groups ({st.exact_images:,} images), "
            f"{st.near_groups:,} near groups within {st.near_distance} bits "
            f"({st.near_images:,} images; {st.crop_links:,} pairs matched only across a crop); "
            f"{st.changed:,} rows changed in {st.seconds:.1f}s")
    if st.placeholders:
        ctx.say(f"dedupe: {st.placeholders:,} placeholder pictures: {st.placeholder_images:,} "
                f"images flagged 'placeholder', {st.files_removed:,} files removed "
                "(one example kept each)")


def run_dedupe(cfg: DedupeConfig, out: TextIO | None = None) -> DedupeStats:
    """`gbif-download-db dedupe`: the groups on their own, recorded in runs."""
    cfg.validate()
    with open_stage(cfg, "dedupe", out, exclusive=True, refuse_arrays="deduplicating",
                    force=cfg.force) as (conn, ctx):
        run_id = runs.start_run(conn, "dedupe")
        try:
            st = dedupe(conn, ctx, near_distance=cfg.near_distance, root=cfg.install_path,
                        max_shared=cfg.max_shared, max_attempts=cfg.max_attempts,
                        workers=cfg.workers)
        except runs.ENDING_ERRORS as e:
            runs.end_on_error(conn, run_id, None, e)
        runs.finish_run(conn, run_id, runs.OK, st.as_dict())
        summary(st, ctx)
        # readable from other hosts again, as after finalize (arrays read it frozen)
        freeze(conn)
        return st
