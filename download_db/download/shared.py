"""One fetch per URL: a URL several images share is fetched once; the others link its file."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..db.claims import Item, Result
from ..files import store
from ..files.layout import image_relpath
from ..states import SUCCESS
from ..web import keys

CAPACITY = 100_000  # URLs remembered per process (~30 MB): shared URLs sit close in the queue


@dataclass(frozen=True)
class Saved:
    """A fetched URL's saved file, for the other images with the same URL."""

    image_id: int
    temp: str  # until the writer renames it
    final: Path  # after
    ext: str
    size: int
    sha256: str
    width: int | None
    height: int | None
    phash: int | None
    dhash: int | None
    edge_hashes: bytes | None
    error_type: str | None  # a flag such as raw_unprocessed
    fetched_url: str | None  # what the fetch asked for: the followers got the same bytes
    # the manifest's other canvases (web/iiif.CanvasImage): every image sharing the URL
    # gets rows for them
    canvases: tuple = ()


class SharedFetches:
    """Thread-safe: who fetches a URL right now, and what recent fetches saved.

    claim(url) answers the Saved file of an earlier fetch, or an Event to wait on
    while another worker fetches it, or None: the caller fetches and must settle().
    """

    def __init__(self, capacity: int = CAPACITY) -> None:
        self._lock = threading.Lock()
        self._done: OrderedDict[str, Saved] = OrderedDict()
        self._flight: dict[str, threading.Event] = {}
        self.capacity = capacity

    def claim(self, url: str) -> Saved | threading.Event | None:
        with self._lock:
            saved = self._done.get(url)
            if saved is not None:
                self._done.move_to_end(url)
                return saved
            ev = self._flight.get(url)
            if ev is not None:
                return ev
            self._flight[url] = threading.Event()
            return None

    def settle(self, url: str, saved: Saved | None) -> None:
        """The claimed fetch ended: saved, or not (waiters then fetch it themselves)."""
        with self._lock:
            ev = self._flight.pop(url, None)
            if saved is not None:
                self._done[url] = saved
                while len(self._done) > self.capacity:
                    self._done.popitem(last=False)
        if ev is not None:
            ev.set()

    def remember(self, url: str, saved: Saved) -> None:
        """A file saved earlier (another run's) for this URL, unless one is known or
        being fetched here."""
        with self._lock:
            if url not in self._done and url not in self._flight:
                self._done[url] = saved

    def forget(self, url: str) -> None:
        """The file is gone (flagged, removed): the next image fetches the URL again."""
        with self._lock:
            self._done.pop(url, None)

    def fetch_once(self, url: str, item: Item, root: Path, fetch: Callable[[], Result],
                   stop: threading.Event, wait_max: float) -> Result:
        """``fetch()`` (this URL for this image) unless another image already fetched
        the URL: then this image links that file. A fetch in flight is waited for (up
        to ``wait_max`` seconds); a failed one leaves each waiter to fetch for itself."""
        waited = 0.0
        if item.saved is not None and url == item.urls[0]:
            earlier = saved_in_db(root, item.saved, url)
            if earlier is not None:
                self.remember(url, earlier)
        while True:
            got = self.claim(url)
            if got is None:
                break
            if isinstance(got, Saved):
                linked = link(root, item, got)
                if linked is not None:
                    return linked
                self.forget(url)
                continue
            while not got.wait(1.0) and not stop.is_set() and waited < wait_max:
                waited += 1.0
            if stop.is_set() or waited >= wait_max:
                return fetch()  # the other fetch is stuck: not ours to settle
        saved = None
        try:
            result = fetch()
            saved = saved_from(result, root)
            return result
        finally:
            self.settle(url, saved)


def saved_from(r: Result, root: Path) -> Saved | None:
    """What other images need of a successful fetch's file, or None."""
    if r.status != SUCCESS or not r.temp or not r.file_path or not r.sha256:
        return None
    return Saved(r.item.image_id, r.temp, root / r.file_path, r.file_path.rsplit(".", 1)[-1],
                 r.file_size or 0, r.sha256, r.width, r.height, r.phash, r.dhash, r.edge_hashes,
                 r.error_type, r.fetched_url, tuple(r.extra.get("canvases") or ()))


def saved_in_db(root: Path, row: tuple, url: str) -> Saved | None:
    """A group-mate's saved file as the database has it (db/claims._SAVED_MATES), or
    None for a manifest: its other canvases, which each image of the URL gets rows
    for, are known only to the fetch that read it."""
    c = keys.parse_identifier(url)
    if not isinstance(c, keys.Candidate) or c.kind == keys.KIND_MANIFEST:
        return None
    image_id, rel, size, sha, width, height, phash, dhash, edges, error_type, fetched_url = row
    final = root / rel
    return Saved(image_id, str(final), final, rel.rsplit(".", 1)[-1], size or 0, sha, width,
                 height, phash, dhash, edges, error_type, fetched_url)


def link(root: Path, item: Item, saved: Saved) -> Result | None:
    """This image's own file with the bytes of ``saved`` (hard link, else copy), as a
    success; None if that file is gone (renamed between the two tries, or removed)."""
    if item.taken_over:
        store.clean_temps(root, item.gbif_id, item.image_no)
    for src in (saved.temp, saved.final):  # the writer may rename it in between
        try:
            tmp = store.link_temp(root, item.gbif_id, item.image_no, src)
            break
        except FileNotFoundError:
            continue
    else:
        return None
    return Result(item, SUCCESS, http_status=200, error_type=saved.error_type,
                  error_detail=f"one fetch for a shared URL: same file as image {saved.image_id}",
                  file_path=image_relpath(item.gbif_id, item.image_no, saved.ext),
                  file_size=saved.size, sha256=saved.sha256, width=saved.width,
                  height=saved.height, phash=saved.phash, dhash=saved.dhash,
                  edge_hashes=saved.edge_hashes, temp=tmp,
                  fetched_url=saved.fetched_url,
                  extra={"shared": True, **({"canvases": list(saved.canvases)}
                                             if saved.canvases else {})})
