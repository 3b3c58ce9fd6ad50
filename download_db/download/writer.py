"""The one writer per process: claims and result batches in short transactions."""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from functools import partial
from pathlib import Path

from ..db import canvases, claims, gbif_ids, hosts, runs
from ..db.claims import Item, Result
from ..db.connection import retry_locked, transaction
from ..db.sqlite import sqlite3
from ..files import store
from ..states import FAILED_PERMANENT, SUCCESS

BATCH = 200  # results per transaction
MAX_AGE = 0.5  # seconds a result may wait for its commit

# The touched gbifIDs are recomputed after each batch, so the report's gbifID
# progress is live; it uses the (gbif_id, image_no) index, a few rows per ID.


class Writer(threading.Thread):
    """Serialises every database write of this process.

    Other threads call claim() (blocking, answered before pending results are
    written), put() (fire and forget) and release(); stop() flushes and ends.
    """

    def __init__(self, conn: sqlite3.Connection, *, token: str, run_id: int, root: Path,
                 max_attempts: int, lease: float, on_commit=None,
                 queue_canvases: bool = False) -> None:
        super().__init__(name="db-writer", daemon=True)
        self.conn, self.token, self.run_id, self.root = conn, token, run_id, root
        self.max_attempts, self.lease = max_attempts, lease
        self.on_commit = on_commit  # callback(list[Result]) after each commit
        # callback(results with canvases, [(host_id, host)] of rows added) after each
        # commit: the scheduler waits for those rows and claims them (download/run.py)
        self.on_canvases = None
        # an array task's database queues other canvases for the merge (db/canvases.py)
        self.queue_canvases = queue_canvases
        # placeholders found as results come in (identity/live.py); None: left to dedupe
        self.placeholders = None
        self.q: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.counts: dict[str, int] = {}
        self._pending: list[Result] = []
        self._first_at = 0.0
        self._settle: list[int] = []
        self._host_updates: dict[str, dict] = {}

    # -- API for other threads -------------------------------------------------------
    def claim(self, host_id: int, n: int) -> list[Item]:
        fut: Future = Future()
        self.q.put(("claim", (host_id, n), fut))
        return fut.result()

    def next_due(self, host_id: int) -> float | None:
        fut: Future = Future()
        self.q.put(("next_due", host_id, fut))
        return fut.result()

    def put(self, result: Result) -> None:
        self.q.put(("result", result, None))

    def release(self, items: list[tuple[Item, float]]) -> None:
        fut: Future = Future()
        self.q.put(("release", items, fut))
        fut.result()

    def host_state(self, host: str, **fields) -> None:
        """Persist politeness state (cooldown_until, breaker_state, ...) for a host."""
        self.q.put(("host", (host, fields), None))

    def stop(self) -> None:
        fut: Future = Future()
        self.q.put(("stop", None, fut))
        fut.result()

    # -- the thread --------------------------------------------------------------------
    def run(self) -> None:
        while True:
            timeout = MAX_AGE if self._pending else 1.0
            try:
                kind, arg, fut = self.q.get(timeout=timeout)
            except queue.Empty:
                self._flush_safe()
                continue
            try:
                if kind == "result":
                    if not self._pending:
                        self._first_at = time.monotonic()
                    self._pending.append(arg)
                    if len(self._pending) >= BATCH or time.monotonic() - self._first_at > MAX_AGE:
                        self._flush()
                elif kind == "claim":
                    host_id, n = arg
                    how = (partial(claims.claim_rescue, self.conn, self.token, n)
                           if host_id == claims.RESCUE_QUEUE else
                           partial(claims.claim, self.conn, self.token, host_id, n))
                    fut.set_result(self._commit(partial(how, lease=self.lease)))
                elif kind == "next_due":
                    fut.set_result(claims.next_rescue_due(self.conn)
                                   if arg == claims.RESCUE_QUEUE else
                                   claims.next_due(self.conn, arg))
                elif kind == "release":
                    self._commit(partial(claims.release, self.conn, arg, self.token))
                    fut.set_result(None)
                elif kind == "host":
                    self._host_updates.setdefault(arg[0], {}).update(arg[1])
                elif kind == "stop":
                    self._flush()
                    if self._settle:
                        self._commit(lambda: None)
                    fut.set_result(None)
                    return
            except BaseException as e:  # noqa: BLE001 - surfaced to the main thread
                self.error = e
                if fut is not None and not fut.done():
                    fut.set_exception(e)
                if kind == "stop":
                    return

    def _flush_safe(self) -> None:
        try:
            self._flush()
        except BaseException as e:  # noqa: BLE001
            self.error = e

    def _flush(self) -> None:
        if self._pending or self._settle or self._host_updates:
            self._commit(lambda: None)

    def _commit(self, fn):
        """Write pending results, settle renamed files, save host state, and run fn,
        all in one transaction; then rename the committed files."""
        batch, self._pending = self._pending, []
        settle, self._settle = self._settle, []
        host_updates, self._host_updates = self._host_updates, {}
        out = {}

        def txn():
            with transaction(self.conn):
                kept = claims.record(self.conn, batch, self.token, self.max_attempts)
                claims.settle(self.conn, settle, self.token)
                for host, fields in host_updates.items():
                    hosts.save_state(self.conn, host, fields)
                out["added"] = self._add_canvases(kept)
                if kept:  # after the canvas rows: a gbifID with more to fetch is not done
                    gbif_ids.rollup(self.conn, {r.item.gbif_id for r in kept},
                                    max_attempts=self.max_attempts)
                runs.heartbeat(self.conn, self.run_id, self.counts)
                out["value"] = fn()
                out["kept"] = kept

        retry_locked(txn)
        kept = out["kept"]
        kept_ids = {id(r) for r in kept}
        for r in batch:
            if r.status == SUCCESS:
                if id(r) in kept_ids:
                    if r.temp and r.file_path:
                        store.place(self.root, r.temp, r.file_path)
                    self._settle.append(r.item.image_id)
                elif r.temp:
                    store.discard(r.temp)  # our lease was taken over: the row is not ours
            if r.extra.get("shared") and id(r) in kept_ids:  # linked, not fetched again
                self.counts["requests_saved"] = self.counts.get("requests_saved", 0) + 1
            key = "lost_claim" if id(r) not in kept_ids else (
                "deferred" if r.status == "pending" else r.status)
            if r.item.rescue and key == FAILED_PERMANENT:
                key = "not_in_gbif_cache"  # it was a permanent failure already
            elif r.item.rescue and key == SUCCESS:
                self.counts["from_gbif_cache"] = self.counts.get("from_gbif_cache", 0) + 1
            self.counts[key] = self.counts.get(key, 0) + 1
        if self.placeholders is not None and kept:
            flagged = self.placeholders.committed(kept)
            if flagged:  # saved a moment ago, a placeholder now
                self.counts[SUCCESS] = self.counts.get(SUCCESS, 0) - flagged
                self.counts[FAILED_PERMANENT] = self.counts.get(FAILED_PERMANENT, 0) + flagged
        if self.on_commit is not None and kept:
            self.on_commit(kept)
        added, queued = out["added"]
        for key, n in (("canvases", len(added)), ("canvases_queued", queued)):
            if n:  # counted after the commit: a retried transaction counts once
                self.counts[key] = self.counts.get(key, 0) + n
        found = sum(1 for r in batch if r.extra.get("canvases"))
        if found and self.on_canvases is not None:
            self.on_canvases(found, added)
        return out["value"]

    def _add_canvases(self, kept: list[Result]) -> tuple[list[tuple[int, str]], int]:
        """Rows for the other canvases of the manifests in these results (inside the
        batch's transaction): (host_id, host) of each row added, and how many an
        array task queued for its merge instead."""
        added: list[tuple[int, str]] = []
        queued = 0
        for r in kept:
            found = r.extra.get("canvases")
            if found and self.queue_canvases:
                queued += canvases.queue(self.conn, r.item.image_id, found)
            elif found:
                added += canvases.add(self.conn, r.item.image_id, found)
        return added, queued
