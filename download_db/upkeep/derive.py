"""Re-derive: another JPEG size from the saved files (kept originals), no network, resumable."""

from __future__ import annotations

import io
import json
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

from PIL import Image, ImageOps

from ..db import upkeep
from ..db.connection import open_readonly
from ..db.sqlite import sqlite3
from ..errors import DatabaseError, Interrupted, UsageError
from ..files import images
from ..files.layout import image_relpath
from ..progress import RunContext
from ..signals import stop_on_signals
from ..stages import recorded_run, require_db_and_root

CHUNK = 512  # images per step of the cursor: a kill redoes at most this many
STATE = ".derive-state.json"  # in --out: the cursor and what it was made with


def shrink(data: bytes, *, max_size: int, quality: int,
           max_pixels: int = images.DEFAULT_MAX_PIXELS) -> tuple[bytes, int, int]:
    """Image bytes in, a JPEG of at most ``max_size`` long edge out (pure; never
    upscales). JPEGs decode in draft mode: the DCT scales to 1/2..1/8 on the way in,
    the main saving (bench/derive.py). No perceptual hashes: the set is a copy."""
    im = Image.open(io.BytesIO(data))
    try:
        w, h = im.size
        if w * h > max_pixels:
            raise images.ImageError("too_large", f"{w}x{h} is above --max-pixels")
        if im.format == "JPEG":
            s = images._draft_scale(max(w, h), max_size)
            if s > 1:
                im.draft(im.mode if im.mode in ("RGB", "L") else "RGB", (w // s, h // s))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im.load()
        out = images._fit(images._to_rgb(ImageOps.exif_transpose(im)), max_size)
        return images._encode(out, quality), out.width, out.height
    finally:
        im.close()


@dataclass(frozen=True)
class DeriveConfig:
    db: Path
    install_path: Path
    out: Path
    max_size: int = 512
    quality: int = 85
    workers: int = 1
    limit: int | None = None
    bar: bool | None = None
    progress_every: float = 10.0

    def validate(self) -> DeriveConfig:
        require_db_and_root(self.db, self.install_path)
        if self.out.resolve() == self.install_path.resolve():
            raise UsageError("--out must not be the image root (it would overwrite the "
                             "saved files)")
        for ok, msg in [(16 <= self.max_size <= 20_000, "--max-size must be 16..20000"),
                        (1 <= self.quality <= 95, "--jpeg-quality must be 1..95"),
                        (1 <= self.workers <= 256, "--workers must be between 1 and 256"),
                        (self.limit is None or self.limit >= 1, "--limit must be at least 1")]:
            if not ok:
                raise UsageError(msg)
        return self


@dataclass
class DeriveStats:
    derived: int = 0
    already: int = 0  # written by an earlier pass with the same settings
    skipped_raw: int = 0  # camera raws kept as is: convert them first
    missing: int = 0
    unreadable: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)


def derive_file(job: tuple[str, str, int, int]) -> int | str:
    """One file: bytes written, or why not (runs in worker processes: never raises).
    Written under a temp name and renamed: a kill leaves no half file."""
    src, dst, max_size, quality = job
    try:
        data = Path(src).read_bytes()
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "unreadable"
    try:
        jpeg, _, _ = shrink(data, max_size=max_size, quality=quality)
    except Exception:  # noqa: BLE001 - whatever Pillow raises, this file gives no JPEG
        return "unreadable"
    tmp = f"{dst}.part"  # one name per image: a run after a kill writes over its leftover
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with open(tmp, "wb") as f:
        f.write(jpeg)
    os.replace(tmp, dst)
    return len(jpeg)


def run_derive(cfg: DeriveConfig, out: TextIO | None = None) -> DeriveStats:
    """Write a JPEG of every saved image under cfg.out (same layout, <gbifID>-NN.jpg),
    walking images by image_id; the cursor is kept in cfg.out, so the same command
    continues after a kill. The database is only read; the run is recorded in runs as
    'derive' (stages.recorded_run), with what this run did (the cursor's stats are the
    whole pass's)."""
    cfg.validate()
    with stop_on_signals() as stop:
        ctx = RunContext(out=out, bar=cfg.bar, every=cfg.progress_every, stop=stop)
        try:
            conn = open_readonly(cfg.db)
        except sqlite3.Error as e:
            raise DatabaseError(f"cannot open {cfg.db}: {e}") from None
        try:
            cfg.out.mkdir(parents=True, exist_ok=True)  # an unusable --out is no run
            with recorded_run(cfg.db, "derive", ctx.say) as counts:
                return _run(conn, cfg, ctx, counts)
        finally:
            conn.close()


def _state(cfg: DeriveConfig) -> dict:
    return {"db": str(cfg.db.resolve()), "install_path": str(cfg.install_path.resolve()),
            "max_size": cfg.max_size, "quality": cfg.quality}


def _load_cursor(cfg: DeriveConfig) -> tuple[int, DeriveStats, bool]:
    """(cursor, stats so far, whether files in --out were made with these settings)."""
    path = cfg.out / STATE
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return -1, DeriveStats(), False
    if saved.get("made_with") != _state(cfg):  # other settings: start over, overwrite
        return -1, DeriveStats(), False
    if saved["after"] < 0:  # a finished pass: a new one writes what is new since
        return -1, DeriveStats(), True
    return int(saved["after"]), DeriveStats(**saved["stats"]), True


def _save_cursor(cfg: DeriveConfig, after: int, st: DeriveStats) -> None:
    path = cfg.out / STATE
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps({"made_with": _state(cfg), "after": after, "stats": asdict(st)}))
    os.replace(tmp, path)


def _this_run(st: DeriveStats, base: dict, images: int) -> dict:
    """The runs row's counts: what this run did, the pass's stats less those it resumed."""
    now = asdict(st)
    return {"images": images, **{k: now[k] - base[k] for k in (
        "derived", "already", "skipped_raw", "missing", "unreadable", "bytes_written")}}


def _run(conn: sqlite3.Connection, cfg: DeriveConfig, ctx: RunContext,
         counts: dict) -> DeriveStats:
    t0 = time.monotonic()
    after, st, same = _load_cursor(cfg)
    base = asdict(st)
    total = upkeep.count_saved(conn)
    ctx.say(f"derive: {total:,} saved images -> {cfg.out} (long edge {cfg.max_size} px, "
            f"{cfg.workers} process(es))" + (f", resuming after image {after:,}"
                                             if after >= 0 else ""))
    progress = ctx.progress("derive", total, item="images", counting=True)
    pool = ProcessPoolExecutor(cfg.workers) if cfg.workers > 1 else None
    done = 0
    try:
        while cfg.limit is None or done < cfg.limit:
            n = CHUNK if cfg.limit is None else min(CHUNK, cfg.limit - done)
            rows = upkeep.saved_after(conn, after, n)
            if not rows:
                break
            jobs, raws = [], 0
            for _, gid, no, rel, etype in rows:
                if etype == "raw_unprocessed":
                    raws += 1
                    continue
                dst = cfg.out / image_relpath(gid, no, "jpg")
                if same and dst.exists():
                    st.already += 1
                    continue
                jobs.append((str(cfg.install_path / rel), str(dst), cfg.max_size,
                             cfg.quality))
            results = (list(pool.map(derive_file, jobs, chunksize=max(1, len(jobs) // 32)))
                       if pool else [derive_file(j) for j in jobs])
            st.skipped_raw += raws
            for r in results:
                if isinstance(r, int):
                    st.derived += 1
                    st.bytes_written += r
                elif r == "missing":
                    st.missing += 1
                else:
                    st.unreadable += 1
            after = rows[-1][0]
            _save_cursor(cfg, after, st)
            done += len(rows)
            counts.update(_this_run(st, base, done))
            progress.update(progress.done_bytes + len(rows), len(rows))
            if ctx.stop.is_set():
                raise Interrupted("stopped by a signal; run the same command again to "
                                  "continue")
    finally:
        progress.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if cfg.limit is None or done < cfg.limit:
        _save_cursor(cfg, -1, st)  # the pass is complete
    st.seconds = time.monotonic() - t0
    counts.update(_this_run(st, base, done), seconds=round(st.seconds, 2))
    ctx.say(f"derive: {st.derived:,} JPEGs written ({st.bytes_written / 1e6:,.1f} MB), "
            f"{st.already:,} already there, "
            f"{st.skipped_raw:,} raws skipped (convert them first), {st.missing:,} files "
            f"missing, {st.unreadable:,} unreadable; {st.seconds:.1f}s")
    return st
