"""Shared data for the identity tests: the shipped sheets, their transformations, saved DBs."""

from __future__ import annotations

import hashlib
import io
import sqlite3 as stdlib_sqlite3
from pathlib import Path

from PIL import Image

from download_db.cli.main import init_main
from download_db.files import images
from download_db.files.layout import image_relpath
from tests.helpers import row, write_multimedia
from tests.imageserver import image_bytes

SHEETS = sorted((Path(__file__).parent / "data" / "images").glob("herbarium_sheet_*.jpg"))
# the colour chart and ruler strip across the top of both sheets ends 120 px down (of 2100)
COLOUR_BAR_PX = 120


def _jpeg(im: Image.Image, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def transformations(sheet: Path) -> dict[str, bytes]:
    """The same sheet as a publisher might serve it again."""
    im = Image.open(sheet).convert("RGB")
    w, h = im.size
    return {
        "re-encoded": _jpeg(im, 60),
        "halved": _jpeg(im.resize((w // 2, h // 2), Image.Resampling.LANCZOS)),
        "colour bar cropped": _jpeg(im.crop((0, COLOUR_BAR_PX, w, h))),
    }


def saved_db(tmp_path: Path, contents: list[bytes], *, convert: bool = True) -> tuple[Path, Path]:
    """A built database whose images are saved: one file per content (converted the
    way the downloader does, or kept as is), rows marked success with
    their sha256 but without perceptual hashes."""
    base = 3_100_000_000
    mm = write_multimedia(tmp_path / "m.txt", [row(base + i, f"http://127.0.0.9/img/{i}.jpg")
                                               for i in range(len(contents))])
    db = tmp_path / "d.db"
    assert init_main(["--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
    root = tmp_path / "images"
    conn = stdlib_sqlite3.connect(db)
    with conn:
        for i, data in enumerate(contents):
            out = images.convert(data) if convert else images.verify_original(data)
            rel = image_relpath(base + i, 0, out.ext)
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(out.data)
            conn.execute("UPDATE images SET status = 'success', file_path = ?, width = ?, "
                         "height = ?, sha256 = ? WHERE gbif_id = ?",
                         (rel, out.width, out.height, hashlib.sha256(out.data).hexdigest(),
                          base + i))
    conn.close()
    return db, root


def synthetic(n: int, size: int = 400) -> list[bytes]:
    """n distinct test pictures (the loopback server's renderer)."""
    return [image_bytes(f"id{i}", size, size * 4 // 3) for i in range(n)]
