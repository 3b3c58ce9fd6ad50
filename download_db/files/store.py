"""Image files on disk: temp-then-rename writes, adoption of existing files, orphan clean-up."""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import StorageError
from .layout import image_relpath, prefix_dirs

PART = ".part"


class StoreError(StorageError):
    """The image root cannot be written (full, read-only, quota): stop the run."""


@dataclass(frozen=True)
class Written:
    relpath: str  # final path relative to the image root
    temp: str  # absolute temp path holding the bytes until the row is committed
    size: int
    sha256: str


def temp_path(root: Path, gbif_id: int, image_no: int) -> Path:
    """A temp name next to the final file; unique per process and thread."""
    p1, p2 = prefix_dirs(gbif_id)
    return root / p1 / p2 / (f".{int(gbif_id)}-{int(image_no):02d}."
                             f"{os.getpid()}-{threading.get_ident()}{PART}")


def write_temp(root: Path, gbif_id: int, image_no: int, ext: str, data: bytes) -> Written:
    """Write bytes under a temp name in the final directory (rename comes later,
    after the database row is committed, so a final file always has its row)."""
    rel = image_relpath(gbif_id, image_no, ext)
    tmp = temp_path(root, gbif_id, image_no)
    try:
        try:
            f = open(tmp, "wb")
        except FileNotFoundError:  # the directory's first image: make it (rare after a while)
            tmp.parent.mkdir(parents=True, exist_ok=True)
            f = open(tmp, "wb")
        with f:
            f.write(data)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise StoreError(f"cannot write under {root}: {e.strerror or e}") from None
    return Written(rel, str(tmp), len(data), hashlib.sha256(data).hexdigest())


def link_temp(root: Path, gbif_id: int, image_no: int, src: str | Path) -> str:
    """Give an image the bytes of another image's file (one fetch for a shared URL): a
    hard link under this image's temp name, a copy where the filesystem has no hard
    links. Returns the temp path; FileNotFoundError if ``src`` is gone."""
    tmp = temp_path(root, gbif_id, image_no)
    try:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, tmp)
        except FileNotFoundError:
            raise
        except OSError:  # EXDEV, EPERM, EMLINK: a filesystem without (more) links
            shutil.copyfile(src, tmp)
    except FileNotFoundError:
        raise
    except OSError as e:
        discard(str(tmp))
        raise StoreError(f"cannot write under {root}: {e.strerror or e}") from None
    return str(tmp)


def place(root: Path, temp: str, relpath: str) -> None:
    """Rename ``temp`` to ``root/relpath`` (same directory, so atomic)."""
    os.replace(temp, root / relpath)


def discard(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def clean_temps(root: Path, gbif_id: int, image_no: int) -> int:
    """Remove temp files any process left for one image; returns how many."""
    found = temp_candidates(root, gbif_id, image_no)
    for path in found:
        discard(path)
    return len(found)


def temp_candidates(root: Path, gbif_id: int, image_no: int) -> list[str]:
    """Temp files any process left for one image."""
    p1, p2 = prefix_dirs(gbif_id)
    prefix = glob.escape(str(root / p1 / p2 / f".{int(gbif_id)}-{int(image_no):02d}"))
    return glob.glob(prefix + f".*{PART}")


def existing_final(root: Path, gbif_id: int, image_no: int,
                   ext: str | None) -> Path | None:
    """The image's final file if present; ext None: any extension we store under
    (a stat per extension, most likely first: listing a directory of thousands of
    files per image would cost far more)."""
    for e in (ext,) if ext is not None else _STORED_EXTS:
        p = root / image_relpath(gbif_id, image_no, e)
        if p.is_file():
            return p
    return None


_STORED_EXTS = ("jpg", "png", "tif", "jp2", "gif", "webp", "bmp", "heic", "dng", "cr2", "cr3",
                "nef", "arw", "orf", "rw2", "raf", "pef", "raw", "img")
