"""One image on a worker thread: candidates best first, IIIF, decode/verify, temp file."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ..db.claims import Item, Result
from ..files import images, store
from ..identity.placeholders import Blocklist
from ..states import FAILED_PERMANENT, FAILED_TRANSIENT, FLAG_RAW, PENDING, PLACEHOLDER, SUCCESS
from ..web import adaptive, fetch, gbif_cache, iiif, iiif_plan, keys, renditions
from ..web.fetch import FetchError
from ..web.politeness import HostGate, Slot
from . import adoption, offline
from .docs import DocCache
from .offline import OfflineDetector
from .shared import SharedFetches

_JSON_ACCEPT = "application/ld+json, application/json;q=0.9, */*;q=0.1"
_MAX_PACE_WAIT = 2.0  # wait this long for a rate token on a held host; defer beyond
_UNSURE_RETRY = 5.0  # a network failure before any server answered: try again this soon


@dataclass(frozen=True)
class WorkerConfig:
    root: Path
    limits: fetch.Limits
    max_size: int = 1024
    quality: int = 85
    keep_original: bool = False
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    # known placeholder pictures (dedupe's finds, --placeholder-hashes): not saved
    blocklist: Blocklist | None = None
    # one fetch per URL for the images that share it (download/shared.py)
    shared: SharedFetches | None = None
    # IIIF documents kept for an image's next try (one manifest fetch per image)
    docs: DocCache = field(default_factory=DocCache)
    # a manifest's first canvas only (--first-canvas-only); else the others become rows
    first_canvas_only: bool = False
    # the base URL of GBIF's image cache, for images claimed for the rescue
    gbif_cache: str = gbif_cache.DEFAULT_BASE


class _Deferred(Exception):
    """Our own host state (cooldown, breaker, slots) says not now."""

    def __init__(self, until: float) -> None:
        super().__init__(until)
        self.until = until


class _Offline(Exception):
    """The node looks offline, or may be: this failure is ours, not the host's."""

    def __init__(self, retry_at: float) -> None:
        super().__init__(retry_at)
        self.retry_at = retry_at


class _Failure(Exception):
    def __init__(self, error_type: str, detail: str, http_status: int | None = None) -> None:
        super().__init__(detail)
        self.error_type, self.detail, self.http_status = error_type, detail, http_status

    @property
    def transient(self) -> bool:
        return fetch.is_transient(self.error_type)


class Worker:
    """Processes claimed images; one per worker thread."""

    def __init__(self, cfg: WorkerConfig, gate: HostGate, writer, stop: threading.Event,
                 session, on_release=None, new_dirs: set[str] | None = None,
                 offline: OfflineDetector | None = None) -> None:
        self.cfg, self.gate, self.writer, self.stop = cfg, gate, writer, stop
        self.offline = offline  # told every network-level failure and every answer
        # directories that did not exist when this run first looked (shared by all
        # workers): they cannot hold files from before, so no adoption check there
        self.new_dirs = new_dirs if new_dirs is not None else set()
        self.session = session  # shared: its per-host pools bound the open connections
        self.on_release = on_release  # wakes workers waiting for a host slot
        self.bytes = 0
        self.requests = 0  # HTTP requests made (the report divides them by saved images)

    def process(self, item: Item, slot: Slot) -> Result:
        held: dict[str, Slot] = {slot.host: slot}
        self._primary = slot
        self._canvases: list[iiif.CanvasImage] = []  # the manifest's other canvases
        try:
            result = self._process(item, held)
            if self._canvases:  # the writer adds their rows with this result
                result.extra["canvases"] = self._canvases
            return result
        finally:
            self._release(held)

    def _with_canvases(self, result: Result) -> Result:
        """The manifest's other canvases on the fetch's result already, so that images
        sharing the URL (download/shared.py) get them too."""
        if self._canvases:
            result.extra["canvases"] = self._canvases
        return result

    def _release(self, held: dict[str, Slot]) -> None:
        for host, s in list(held.items()):
            s.release()
            if self.on_release is not None:
                # the scheduler counts only the slot it handed out with the item
                self.on_release(host, s is self._primary)
        held.clear()

    def _process(self, item: Item, held: dict[str, Slot]) -> Result:
        # a rescue asks the cache for its copy of each candidate URL, best first; a
        # failed image has no file of its own to adopt
        adopted = None if item.rescue else adoption.existing(
            self.cfg.root, item, self.new_dirs, None if self.cfg.keep_original else "jpg",
            self.cfg.max_pixels)
        if adopted is not None:
            return self._adopted(adopted, held)
        failures: list[_Failure] = []
        deferred: float | None = None
        urls = [gbif_cache.cache_url(item.gbif_id, u, self.cfg.gbif_cache)
                for u in item.urls] if item.rescue else item.urls
        for url in urls:
            if self.stop.is_set():
                return Result(item, PENDING, attempted=False)
            try:
                if self.cfg.shared is None:
                    return self._fetch_save(item, url, held)
                return self.cfg.shared.fetch_once(
                    url, item, self.cfg.root,
                    lambda u=url: self._with_canvases(self._fetch_save(item, u, held)),
                    self.stop, self.cfg.limits.deadline)
            except _Deferred as d:
                deferred = d.until if deferred is None else min(deferred, d.until)
            except _Offline as o:
                # our network, not the image: given back untouched, tried again later
                return Result(item, PENDING, attempted=False, retry_at=o.retry_at)
            except _Failure as f:
                failures.append(f)
            except FetchError as e:
                if self.stop.is_set():
                    return Result(item, PENDING, attempted=False)  # aborted by our stop
                failures.append(_Failure(e.error_type, e.detail, e.http_status))
        if deferred is not None:
            # a candidate we did not try because of our own state: never a verdict
            return Result(item, PENDING, attempted=False, retry_at=deferred)
        if not failures:
            return Result(item, FAILED_PERMANENT, error_type="no_url",
                          error_detail="no downloadable URL")
        first = next((f for f in failures if f.transient), failures[0])
        status = FAILED_TRANSIENT if first.transient else FAILED_PERMANENT
        return Result(item, status, http_status=first.http_status, error_type=first.error_type,
                      error_detail=first.detail)

    def _adopted(self, result: Result, held: dict[str, Slot]) -> Result:
        """An adopted file's manifest is read all the same, for its other canvases. The
        adoption waits while it cannot be read: deferred (nothing spent) on our own
        state, a transient failure on the host's (adoption.unread)."""
        item = result.item
        url = None if self.cfg.first_canvas_only else \
            adoption.manifest_url(item.urls, self.cfg.docs)
        if url is None:
            return result
        try:
            doc = self._json(url, held)
            self._canvases = iiif.other_canvases(
                iiif.parse_manifest(doc) if adoption.is_manifest(doc) else [])
            return result
        except _Deferred as d:
            return Result(item, PENDING, attempted=False, retry_at=d.until)
        except _Offline as o:
            return Result(item, PENDING, attempted=False, retry_at=o.retry_at)
        except FetchError as e:
            if self.stop.is_set():
                return Result(item, PENDING, attempted=False)
            return adoption.unread(result, url, e.error_type, e.detail, e.http_status)
        except _Failure as f:
            return adoption.unread(result, url, f.error_type, f.detail, f.http_status)
        except iiif.ManifestError as e:
            return adoption.unread(result, url, "manifest_error", str(e), None)

    # -- one candidate URL ------------------------------------------------------------
    def _fetch_save(self, item: Item, url: str, held: dict[str, Slot]) -> Result:
        r = self._candidate(url, held)
        # the host's slot covers the request only, not our decoding and disk
        self._release(held)
        return self._save(item, r.body, r.requested)

    def _candidate(self, url: str, held: dict[str, Slot]) -> fetch.Response:
        """The response whose body is the image; its ``requested`` URL (after any
        rendition or IIIF rewrite, before redirects) is recorded as fetched_url."""
        c = keys.parse_identifier(url)
        kind = c.kind if isinstance(c, keys.Candidate) else keys.KIND_DIRECT
        if kind in (keys.KIND_MANIFEST, keys.KIND_INFO):
            return self._resolve(self._json(url, held), url, held)
        service = iiif.service_of_rendering(url)
        if service and not self.cfg.keep_original:
            # the target size first, then the URL as given (nothing in between)
            return self._iiif(iiif.ServiceInfo(service, 2), held, body=url, first=True)
        known = self.cfg.docs.get(url)  # read on an earlier try of this image
        if known is not None:
            return self._resolve(known, url, held)
        r = self._direct(url, held)
        if r.iiif_json:  # a manifest or info.json behind a URL that did not say so
            doc = self._parse_json(r.body)
            self.cfg.docs.put(url, doc)
            return self._resolve(doc, url, held)
        return r

    def _direct(self, url: str, held: dict[str, Slot]) -> fetch.Response:
        """A direct image URL; first the smaller rendition a rule knows of, if one
        covers the target (web/renditions.py), falling back when it is not there."""
        *smaller, _ = renditions.candidates(url, self._target())
        for u in smaller:
            try:
                return self._get(u, held)
            except FetchError as e:
                if e.http_status not in renditions.FALL_BACK:
                    raise
        return self._get(url, held)

    def _resolve(self, doc, url: str, held: dict[str, Slot]) -> fetch.Response:
        """The image behind a IIIF manifest or info.json document."""
        try:
            if adoption.is_manifest(doc):
                refs = iiif.parse_manifest(doc)
                if not refs:
                    raise _Failure("manifest_error", "manifest has no painted image")
                ref = refs[0]
                if not self.cfg.first_canvas_only:
                    self._canvases = iiif.other_canvases(refs)
                if ref.service is None:
                    return self._get(ref.body or url, held)
                return self._iiif(iiif_plan.from_ref(ref), held, body=ref.body)
            info = iiif.parse_info(doc, url.rsplit("/", 1)[0])
        except iiif.ManifestError as e:
            raise _Failure("manifest_error", str(e)) from None
        return self._iiif(info, held, read=True)

    def _target(self) -> int | None:
        return None if self.cfg.keep_original else self.cfg.max_size

    def _iiif(self, info: iiif.ServiceInfo, held: dict[str, Slot], body: str | None = None,
              read: bool = False, first: bool = False) -> fetch.Response:
        """The image from its Image API service, planned from what is known of it
        (read: from its info.json). The first refusal of a plan made without the
        info.json (a refusal, or a 404 for a size it never promised) reads it and plans
        again from what the service says it can do."""
        reqs = iiif_plan.plan(info, self._target(), None if first else body)
        if first and body:
            reqs = reqs[:1] + [iiif_plan.Request(body, "", listed=True)]
        tried: set[str] = set()
        last: FetchError | None = None
        i = 0
        while i < len(reqs):
            req, i = reqs[i], i + 1
            if req.url in tried:
                continue
            tried.add(req.url)
            try:
                return self._get(req.url, held)
            except FetchError as e:
                last = e
                if not read and iiif_plan.step_on(req, e.http_status, True):
                    read = True
                    better = self._info(info.service, held)
                    if better is not None:
                        reqs, i = iiif_plan.plan(better, self._target(), body), 0
                        continue
                if iiif_plan.step_on(req, e.http_status,
                                     any(r.url not in tried for r in reqs[i:])):
                    continue
                raise
        assert last is not None
        raise last

    def _info(self, service: str, held: dict[str, Slot]) -> iiif.ServiceInfo | None:
        """The service's info.json, or None if it cannot be had."""
        try:
            return iiif.parse_info(self._json(f"{service}/info.json", held), service)
        except (FetchError, _Failure, iiif.ManifestError):
            return None

    def _json(self, url: str, held: dict[str, Slot]):
        doc = self.cfg.docs.get(url)
        if doc is None:
            doc = self._parse_json(self._get(url, held, want_text=True).body)
            self.cfg.docs.put(url, doc)
        return doc

    @staticmethod
    def _parse_json(body: bytes):
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise _Failure("manifest_error", f"not JSON: {e}"[:300]) from None

    def _get(self, url: str, held: dict[str, Slot], want_text: bool = False) -> fetch.Response:
        host = (urlsplit(url).hostname or "").lower()
        slot = held.get(host)
        now = time.time()
        if slot is None:
            got = self.gate.acquire(host, now)
            if isinstance(got, float):
                raise _Deferred(got)
            slot = held[host] = got
        else:
            wait = self.gate.pace(host, now)
            if wait is not None:
                if wait - now > _MAX_PACE_WAIT:
                    raise _Deferred(wait)
                time.sleep(wait - now)
        t0 = time.monotonic()
        self.requests += 1
        try:
            r = fetch.get(self.session, url, self.cfg.limits,
                          accept=_JSON_ACCEPT if want_text else "image/*, */*;q=0.5",
                          want_text=want_text)
        except FetchError as e:
            if self.offline is not None:
                now = time.time()
                verdict = self.offline.failure(url, now) if e.network else None
                if verdict in (offline.OFFLINE, offline.UNSURE):  # no breaker, no attempt
                    raise _Offline(now if verdict == offline.OFFLINE
                                   else now + _UNSURE_RETRY) from None
                if not e.network:
                    self.offline.answer(url, now)
            self._after(slot, e, time.monotonic() - t0)
            raise
        if self.offline is not None:
            self.offline.answer(url, time.time())
        self._after(slot, None, time.monotonic() - t0)
        self.bytes += len(r.body)
        return r

    def _after(self, slot: Slot, e: FetchError | None, latency: float | None = None) -> None:
        """Feed the breaker and the host's adaptive limit; publish cooldowns and breaker
        changes to the hosts table."""
        if self.stop.is_set() and e is not None:
            return  # an abort on stop says nothing about the host
        change = self.gate.record(slot, False if e is None else e.host_failure)
        if self.gate.adaptive(slot.host):
            outcome = adaptive.outcome_of(None if e is None else e.error_type,
                                          None if e is None else e.http_status)
            if outcome is not None:  # the others still under way: this one is done
                limit = self.gate.adapt(slot.host, outcome, latency,
                                        self.gate.in_flight(slot.host) - 1)
                if self.gate.news(slot.host, limit):  # for the report
                    self.writer.host_state(slot.host, concurrency_limit=limit)
        now = time.time()
        if e is not None and e.cooldown:
            until = self.gate.cool_down(slot.host, e.cooldown, now)
            self.writer.host_state(slot.host, cooldown_until=until,
                                   cooldown_reason=f"HTTP {e.http_status}"
                                   + (" Retry-After" if e.retry_after_given else ""))
        if e is not None and e.error_type == "invalid_content_type":
            self.writer.host_state(slot.host, sample_detail=e.detail[:300])
        if change == "opened":
            self.writer.host_state(slot.host, breaker_state="open", breaker_opened_at=now,
                                   last_error=e.detail[:300] if e else None)
        elif change == "quarantine":
            self.writer.host_state(slot.host, breaker_state="open", breaker_opened_at=now,
                                   quarantined=1, quarantined_at=now)
        elif change == "closed":
            self.writer.host_state(slot.host, breaker_state="closed", quarantined=0)

    # -- the file ------------------------------------------------------------------------
    def _save(self, item: Item, data: bytes, url: str) -> Result:
        try:
            if self.cfg.keep_original:
                out = images.verify_original(data, max_pixels=self.cfg.max_pixels)
            else:
                out = images.convert(data, max_size=self.cfg.max_size, quality=self.cfg.quality,
                                     max_pixels=self.cfg.max_pixels)
        except images.ImageError as e:
            raise _Failure(e.error_type, e.detail) from None
        why = self.cfg.blocklist.match(out.data, out.phash) if self.cfg.blocklist else None
        if why is not None:
            raise _Failure(PLACEHOLDER, why)
        if item.taken_over:
            store.clean_temps(self.cfg.root, item.gbif_id, item.image_no)
        w = store.write_temp(self.cfg.root, item.gbif_id, item.image_no, out.ext, out.data)
        raw = out.raw_unprocessed
        return Result(item, SUCCESS, http_status=200, error_type=FLAG_RAW if raw else None,
                      error_detail=f"kept raw: {out.source_format}" if raw else None,
                      file_path=w.relpath, file_size=w.size, sha256=w.sha256,
                      width=out.width or None, height=out.height or None, temp=w.temp,
                      phash=out.phash, dhash=out.dhash, edge_hashes=out.edges,
                      fetched_url=url)
