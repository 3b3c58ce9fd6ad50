"""IIIF documents fetched for an image, kept for its next try: one manifest fetch per image."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any


class DocCache:
    """Parsed manifests and info.json by URL, for a while (shared by a process's workers).

    An image whose manifest is on one host and whose pixels are on another is given back
    when the image host is busy; its next try reads the manifest from here instead of
    asking for it again. Bounded in entries and in age: a document is kept for the
    minutes a deferral lasts, not for the run.
    """

    def __init__(self, size: int = 512, ttl: float = 600.0) -> None:
        self.size, self.ttl = size, ttl
        self._docs: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, url: str, now: float | None = None) -> Any | None:
        now = time.monotonic() if now is None else now
        with self._lock:
            got = self._docs.get(url)
            if got is None:
                return None
            if now - got[0] > self.ttl:
                del self._docs[url]
                return None
            self._docs.move_to_end(url)
            return got[1]

    def put(self, url: str, doc: Any, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._docs[url] = (now, doc)
            self._docs.move_to_end(url)
            while len(self._docs) > self.size:
                self._docs.popitem(last=False)
