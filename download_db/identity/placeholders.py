"""Placeholders: one host's same picture behind many URLs, found, flagged and its files removed."""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..db import gbif_ids, identity
from ..db import placeholders as table
from ..db.connection import retry_locked, transaction
from ..db.sqlite import sqlite3
from ..errors import UsageError
from ..files import phash
from ..states import PLACEHOLDER_MAX_SHARED

DEFAULT_MAX_SHARED = PLACEHOLDER_MAX_SHARED
META_MAX_SHARED = "placeholder_urls"  # the last dedupe's --placeholder-urls: downloads use it
CHUNK = 5_000  # paths cleared per transaction


@dataclass(frozen=True)
class Group:
    """A placeholder found on one host: its images, smallest image_id first."""

    host_id: int
    ids: tuple[int, ...]
    phash: int | None  # the example's


def find(dups: list[tuple[int, int, str, int]], ids: np.ndarray, hosts: np.ndarray,
         near: dict[int, int], max_shared: int) -> list[Group]:
    """Placeholder groups from the duplicate rows (image_id, host_id, sha256, n on
    host) and the near groups: more than max_shared images of one host with equal
    bytes, or in one near group (pHash within the near distance). Pure."""
    found: list[Group] = []
    taken: set[int] = set()
    host_of = dict(zip(ids.tolist(), hosts.tolist(), strict=True))
    by_near: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, g in near.items():
        by_near[(g, host_of[i])].append(i)
    by_sha: dict[tuple[int, str], list[int]] = defaultdict(list)
    for image_id, host_id, sha, n_host in dups:
        if n_host > max_shared:
            by_sha[(host_id, sha)].append(image_id)
    for (_g, host), members in sorted(by_near.items()):
        if len(members) > max_shared:
            found.append(Group(host, tuple(sorted(members)), None))
            taken.update(members)
    for (host, _sha), members in sorted(by_sha.items()):
        rest = sorted(set(members) - taken)
        if len(rest) > max_shared:
            found.append(Group(host, tuple(rest), None))
            taken.update(rest)
    return found


def flag_all(conn: sqlite3.Connection, found: list[Group], root: Path | None,
             phash_of: dict[int, int], max_attempts: int) -> tuple[int, int]:
    """Flag every group's images as placeholder failures, keep the first image's file
    as the example and remove the others' (when the image root is known); then finish
    removals a killed run left. Returns (images flagged, files removed)."""
    flagged = 0
    for g in found:
        example = g.ids[0]
        sha = identity.sha256_of(conn, example) or ""
        ph = phash_of.get(example)
        detail = (f"placeholder: the same picture as {len(g.ids):,} images of this host "
                  f"(sha256 {sha}" + (f", pHash {phash.to_hex(ph)}" if ph is not None else "")
                  + f"); the example kept is image {example}")
        _flag_group(conn, g, sha, ph, detail, max_attempts)
        flagged += len(g.ids)
    return flagged, remove_files(conn, root)


def _flag_group(conn: sqlite3.Connection, g: Group, sha: str, ph: int | None, detail: str,
                max_attempts: int) -> None:
    """One group in one transaction with its placeholders row: a kill never leaves a
    group half flagged (whose rest would then be too few to be found again)."""
    def txn() -> None:
        with transaction(conn):
            gids = table.flag(conn, list(g.ids), detail)
            table.save(conn, g.host_id, sha, ph, len(g.ids), g.ids[0])
            gbif_ids.rollup(conn, gids, max_attempts=max_attempts)

    retry_locked(txn)


def remove_files(conn: sqlite3.Connection, root: Path | None) -> int:
    """Delete the files of flagged images other than the examples, then clear their
    paths (a kill in between leaves the path, and the next run deletes it)."""
    if root is None:
        return 0
    left = table.files_left(conn)
    removed = 0
    for _image_id, rel in left:
        try:
            os.unlink(root / rel)
            removed += 1
        except FileNotFoundError:
            pass
    for lo in range(0, len(left), CHUNK):
        ids = [i for i, _ in left[lo:lo + CHUNK]]
        retry_locked(lambda ids=ids: _clear(conn, ids))
    return removed


def _clear(conn: sqlite3.Connection, ids: list[int]) -> None:
    with transaction(conn):
        table.clear_files(conn, ids)


# -- the download's blocklist -------------------------------------------------------------

@dataclass(frozen=True)
class Blocklist:
    """Pictures not to save: sha256 of the saved bytes, or pHash within ``distance``."""

    sha256: frozenset[str] = frozenset()
    phashes: tuple[int, ...] = ()
    distance: int = 3
    # sha256s found to be placeholders during this run (identity/live.py, the writer
    # thread adds; workers read: set membership needs no lock)
    found: set[str] = field(default_factory=set, compare=False)

    def __bool__(self) -> bool:
        return bool(self.sha256 or self.phashes or self.found)

    def match(self, data: bytes, ph: int | None) -> str | None:
        """Why these saved bytes are a known placeholder, or None."""
        if not self:
            return None
        sha = hashlib.sha256(data).hexdigest()
        if sha in self.sha256 or sha in self.found:
            return f"placeholder: a known placeholder picture (sha256 {sha})"
        if ph is not None and self.phashes:
            d = np.bitwise_xor(np.array(self.phashes, np.int64), np.int64(ph)).view(np.uint64)
            near = [p for p, bits in zip(self.phashes, _popcount(d), strict=True)
                    if bits <= self.distance]
            if near:
                return (f"placeholder: pHash {phash.to_hex(ph)} within {self.distance} bits of "
                        f"the known placeholder {phash.to_hex(near[0])} (sha256 {sha})")
        return None


def _popcount(x: np.ndarray) -> list[int]:
    from .groups import popcount

    return popcount(x).tolist()


def read_hashes_file(path: Path) -> tuple[set[str], list[int]]:
    """--placeholder-hashes: one hash per line, a sha256 (64 hex digits) of a saved file
    or an imagehash pHash (16 hex digits); '#' starts a comment."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--placeholder-hashes {path}: cannot read it ({e})") from None
    shas, phs = set(), []
    for n, line in enumerate(text.splitlines(), start=1):
        tok = line.split("#", 1)[0].strip().lower()
        if not tok:
            continue
        if len(tok) == 64 and all(c in "0123456789abcdef" for c in tok):
            shas.add(tok)
        elif len(tok) == 16 and all(c in "0123456789abcdef" for c in tok):
            v = int(tok, 16)
            phs.append(v - (1 << 64) if v >= 1 << 63 else v)
        else:
            raise UsageError(f"--placeholder-hashes {path}, line {n}: {tok[:70]!r} is neither "
                             "a sha256 (64 hex digits) nor a pHash (16 hex digits)")
    return shas, phs


def blocklist(conn: sqlite3.Connection | None, path: Path | None, distance: int) -> Blocklist:
    """What the downloader refuses: placeholders found before in this database and
    the user's list."""
    shas, phs = table.known(conn) if conn is not None else (set(), [])
    if path is not None:
        more_s, more_p = read_hashes_file(path)
        shas |= more_s
        phs += more_p
    return Blocklist(frozenset(shas), tuple(phs), distance)


def load_blocklist(db: Path, path: Path | None, distance: int = 3) -> Blocklist:
    """The download's blocklist: placeholders ``db`` knows (the main database of an
    array task, frozen, read without locks) and the user's file."""
    from ..db.connection import open_readonly

    conn = open_readonly(db)
    try:
        return blocklist(conn, path, distance)
    finally:
        conn.close()
