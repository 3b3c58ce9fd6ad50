"""Raw conversion: camera raws kept as is become JPEGs (embedded preview or full demosaic)."""

from __future__ import annotations

import io
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from PIL import Image, ImageOps, ImageStat

from ..db import gbif_ids, runs, upkeep
from ..db.connection import retry_locked, transaction
from ..db.sqlite import sqlite3
from ..errors import UsageError
from ..files import images, store
from ..files.layout import image_relpath
from ..progress import RunContext
from ..stages import open_stage, require_db_and_root
from ..states import DEFAULT_MAX_ATTEMPTS, RAW_UNUSABLE

CHUNK = 64  # raws per transaction (each is megabytes of decoding)
# A converted image whose grey levels spread less than this (standard deviation, 0-255)
# is a blank, not a specimen: a zeroed or saturated sensor block, a lost white balance.
UNIFORM_STDDEV = 2.0
# LibRaw's flip -> the rotation that stands the preview up (the demosaic applies it itself)
# A raw file this many bytes per sensor pixel or less cannot hold its sensor data (lossy
# DNGs keep ~0.3, lossless raws 1-2): it was cut short or stripped, and LibRaw would
# demosaic whatever its buffer held (zeros, or on a bad day leftover memory).
MIN_BYTES_PER_PIXEL = 0.01
_FLIP = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90,
         6: Image.Transpose.ROTATE_270}


@dataclass(frozen=True)
class Converted:
    """A raw turned into a JPEG: the downloader's Output and which way it was made."""

    out: images.Output
    how: str  # 'preview' (the embedded JPEG) or 'demosaic'


def convert_raw(data: bytes, *, max_size: int = 1024, quality: int = 85,
                max_pixels: int = images.DEFAULT_MAX_PIXELS) -> Converted:
    """Raw bytes in, a JPEG of at most ``max_size`` long edge out (pure). The embedded
    JPEG preview when its long edge reaches ``max_size`` (or the sensor's, whichever is
    smaller), else a demosaic of the sensor data (half size when that is enough).
    ImageError('raw_unusable') when neither decodes or the result is nearly uniform."""
    import rawpy  # lazily: most runs never see a raw

    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            w, h = raw.sizes.width, raw.sizes.height
            if w * h > max_pixels:
                raise images.ImageError("too_large", f"raw is {w}x{h}, above --max-pixels")
            im, how = _preview(raw, min(max_size, max(w, h))), "preview"
            if im is None:
                if len(data) <= MIN_BYTES_PER_PIXEL * raw.sizes.raw_width * raw.sizes.raw_height:
                    raise images.ImageError(RAW_UNUSABLE, (
                        f"camera raw of {len(data):,} bytes cannot hold its {w}x{h} sensor "
                        "data (cut short or stripped)"))
                half = max(w, h) / 2 >= max_size * images.DRAFT_SLACK
                rgb = raw.postprocess(use_camera_wb=True, half_size=half, output_bps=8)
                im, how = Image.fromarray(rgb), "demosaic"
    except images.ImageError:
        raise
    except Exception as e:  # noqa: BLE001 - LibRaw raises many types; any means unusable
        raise images.ImageError(RAW_UNUSABLE, f"camera raw does not decode: "
                                              f"{type(e).__name__}: {e}") from None
    out = images._fit(im.convert("RGB"), max_size)
    spread = ImageStat.Stat(out.convert("L")).stddev[0]
    if spread < UNIFORM_STDDEV:
        raise images.ImageError(RAW_UNUSABLE, f"camera raw converts to a nearly uniform image "
                                              f"(grey spread {spread:.2f} by {how}): a blank "
                                              "or zeroed sensor block, not a specimen")
    return Converted(images._output(out, quality, "raw"), how)


def _preview(raw, need: int) -> Image.Image | None:
    """The embedded JPEG preview, upright, if its long edge is at least ``need``."""
    import rawpy

    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    if thumb.format != rawpy.ThumbFormat.JPEG:
        return None
    try:
        im = Image.open(io.BytesIO(thumb.data))
        if max(im.size) < need:
            return None
        im = ImageOps.exif_transpose(im)
        im.load()
    except (OSError, ValueError, SyntaxError):
        return None
    flip = _FLIP.get(raw.sizes.flip)
    return im.transpose(flip) if flip is not None else im


# --- the stage ------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvertConfig:
    db: Path
    install_path: Path
    max_size: int = 1024
    quality: int = 85
    keep_raw: bool = False  # keep each .dng beside its JPEG
    workers: int = 1
    limit: int | None = None
    force: bool = False
    bar: bool | None = None
    progress_every: float = 10.0

    def validate(self) -> ConvertConfig:
        require_db_and_root(self.db, self.install_path)
        for ok, msg in [(64 <= self.max_size <= 20_000, "--max-size must be 64..20000"),
                        (1 <= self.quality <= 95, "--jpeg-quality must be 1..95"),
                        (1 <= self.workers <= 64, "--workers must be between 1 and 64"),
                        (self.limit is None or self.limit >= 1, "--limit must be at least 1")]:
            if not ok:
                raise UsageError(msg)
        return self


@dataclass
class ConvertStats:
    converted: dict[str, int] = field(default_factory=dict)  # by how: preview / demosaic
    unusable: int = 0  # failed_permanent raw_unusable
    missing: int = 0  # the raw file is gone: left for verify to requeue
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"converted": dict(self.converted), "unusable": self.unusable,
                "missing": self.missing, "seconds": round(self.seconds, 2)}


def convert_file(job: tuple[str, int, int]) -> Converted | tuple[str, str]:
    """One raw file (runs in worker processes: returns its verdict, never raises)."""
    path, max_size, quality = job
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return ("missing", f"raw file not found: {path}")
    except OSError as e:
        return ("missing", f"cannot read the raw file: {e.strerror}")
    try:
        return convert_raw(data, max_size=max_size, quality=quality)
    except images.ImageError as e:
        return (e.error_type, e.detail)


def _pool_context() -> multiprocessing.context.BaseContext:
    """Spawned workers, as rawpy asks: LibRaw's OpenMP thread pool does not survive a
    fork once this process has used it (the child hangs: seen in the tests)."""
    return multiprocessing.get_context("spawn")


def run_convert(cfg: ConvertConfig, out: TextIO | None = None) -> ConvertStats:
    """Convert every raw_unprocessed image; recorded in runs as 'convert'. Each raw's
    JPEG is renamed into place before its row points at it, and the raw removed after
    the commit: a kill at any moment leaves the row true (at worst a stray file)."""
    cfg.validate()
    with open_stage(cfg, "convert", out, refuse_arrays="converting raws",
                    force=cfg.force) as (conn, ctx):
        return _run(conn, cfg, ctx)


def _run(conn: sqlite3.Connection, cfg: ConvertConfig, ctx: RunContext) -> ConvertStats:
    t0 = time.monotonic()
    st = ConvertStats()
    run_id = runs.start_run(conn, "convert")
    total = upkeep.count_raws(conn)
    total = min(total, cfg.limit) if cfg.limit else total
    ctx.say(f"convert: {total:,} camera raws to JPEG (long edge {cfg.max_size} px) under "
            f"{cfg.install_path}{', keeping the raws' if cfg.keep_raw else ''}")
    progress = ctx.progress("convert", total, item="raws", counting=True)
    pool = (ProcessPoolExecutor(cfg.workers, mp_context=_pool_context())
            if cfg.workers > 1 else None)
    after, done = -1, 0
    try:
        while cfg.limit is None or done < cfg.limit:
            n = CHUNK if cfg.limit is None else min(CHUNK, cfg.limit - done)
            rows = upkeep.raws_after(conn, after, n)
            if not rows:
                break
            after = rows[-1][0]
            jobs = [(str(cfg.install_path / r[3]), cfg.max_size, cfg.quality) for r in rows]
            results = list(pool.map(convert_file, jobs)) if pool else \
                [convert_file(j) for j in jobs]
            _record(conn, cfg, run_id, rows, results, st)
            done += len(rows)
            progress.update(done, len(rows))
            ctx.check_stop()
    except runs.ENDING_ERRORS as e:
        runs.end_on_error(conn, run_id, st.as_dict(), e)
    finally:
        progress.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    st.seconds = time.monotonic() - t0
    runs.finish_run(conn, run_id, runs.OK, st.as_dict())
    how = ", ".join(f"{v:,} by {k}" for k, v in sorted(st.converted.items())) or "none"
    ctx.say(f"convert: converted {how}; {st.unusable:,} unusable (failed_permanent "
            f"{RAW_UNUSABLE}), {st.missing:,} raw files missing; {st.seconds:.1f}s")
    return st


def _record(conn: sqlite3.Connection, cfg: ConvertConfig, run_id: int, rows: list[tuple],
            results: list, st: ConvertStats) -> None:
    root = cfg.install_path
    done, failed = [], []
    for (image_id, gid, no, raw_rel), r in zip(rows, results, strict=True):
        if isinstance(r, Converted):
            rel = image_relpath(gid, no, "jpg")
            w = store.write_temp(root, gid, no, "jpg", r.out.data)
            store.place(root, w.temp, rel)  # a new name: the raw stays until the commit
            done.append((image_id, raw_rel, r, w))
        elif r[0] == "missing":
            st.missing += 1
        else:
            failed.append((image_id, raw_rel, r[0], r[1]))

    def txn() -> list[int]:
        with transaction(conn):
            gids = upkeep.record_converted(conn, [
                (i, raw_rel, w.relpath, w.size, w.sha256, c.out.width, c.out.height,
                 c.out.phash, c.out.dhash, c.out.edges, f"converted from a camera raw ({c.how})")
                for i, raw_rel, c, w in done])
            gids += upkeep.record_unconvertible(conn, [(i, raw_rel, e, d)
                                                      for i, raw_rel, e, d in failed])
            gbif_ids.rollup(conn, gids, max_attempts=DEFAULT_MAX_ATTEMPTS)
            runs.heartbeat(conn, run_id, st.as_dict())
            return gids

    retry_locked(txn)
    for _, _, c, _ in done:
        st.converted[c.how] = st.converted.get(c.how, 0) + 1
    st.unusable += len(failed)
    if not cfg.keep_raw:
        for _, raw_rel, *_ in [*done, *failed]:
            (root / raw_rel).unlink(missing_ok=True)
