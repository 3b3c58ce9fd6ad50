"""Adopting a file already on disk: its check, and the manifest still to read for its canvases."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..db.claims import Item, Result
from ..files import images, store
from ..files.layout import image_dir
from ..states import FAILED_TRANSIENT, FLAG_RAW, SUCCESS
from ..web import fetch, keys
from .docs import DocCache

DETAIL = "adopted existing file"


def existing(root: Path, item: Item, new_dirs: set[str], ext: str | None,
             max_pixels: int) -> Result | None:
    """An existing valid final file (an earlier run's, a copied tree) as the image's
    success, not fetched again; None when there is none or it is invalid (then it is
    fetched over). ext: the only extension a file may have (None: any, originals)."""
    where = image_dir(item.gbif_id)
    if where in new_dirs:  # missing when this run first looked: no earlier file in it
        return None
    if not (root / where).is_dir():
        new_dirs.add(where)
        return None
    path = store.existing_final(root, item.gbif_id, item.image_no, ext)
    if path is None:
        return None
    try:
        data = path.read_bytes()
        out = images.verify_saved(data, max_pixels=max_pixels)
    except (OSError, images.ImageError):
        return None
    return Result(item, SUCCESS, attempted=False, http_status=None,
                  error_type=FLAG_RAW if out.raw_unprocessed else None,
                  error_detail=DETAIL, file_path=path.relative_to(root).as_posix(),
                  file_size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                  width=out.width or None, height=out.height or None)


def manifest_url(urls: list[str], docs: DocCache) -> str | None:
    """The manifest an adopted image's other canvases are read from: the first
    candidate that names one (…/manifest, …/manifest.json), or whose document this
    process read already as a manifest. A manifest behind a URL that does not say so
    cannot be told from the image itself without fetching it, so it is not read."""
    for url in urls:
        c = keys.parse_identifier(url)
        if isinstance(c, keys.Candidate) and c.kind == keys.KIND_MANIFEST:
            return url
        if is_manifest(docs.get(url)):
            return url
    return None


def is_manifest(doc) -> bool:
    """A parsed JSON document is a Presentation manifest (v2 sequences, v3 items)."""
    return isinstance(doc, dict) and ("sequences" in doc or "items" in doc)


def unread(result: Result, url: str, error_type: str, detail: str,
           http_status: int | None) -> Result:
    """The adoption when the publisher did not give its manifest: a transient failure
    waits (counted like a fetch's, the file stays under its final name and is adopted
    again on the next try, so a kill loses nothing); a final answer (gone, not a
    manifest) adopts the file without other canvases, saying why, as a fetch through
    that manifest would have failed over to the image's other candidates."""
    note = f"manifest {url}: {detail}"[:300]
    if fetch.is_transient(error_type):
        return Result(result.item, FAILED_TRANSIENT, http_status=http_status,
                      error_type=error_type, error_detail=f"{DETAIL} waits for its {note}")
    result.error_detail = f"{DETAIL}; other canvases unknown, {note}"
    return result
