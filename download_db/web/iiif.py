"""IIIF: read Presentation v2/v3 manifests and Image API info.json (pure; planning in iiif_plan)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from . import keys


class ManifestError(ValueError):
    """The document is not a manifest/info.json we can use (deterministic: permanent)."""


@dataclass(frozen=True)
class ImageRef:
    """One painted image of a canvas: an Image API service and/or a direct image URL."""

    service: str | None  # Image API base URL (no trailing slash)
    version: int  # Image API major version of the service: 2 or 3 (2 if unknown)
    body: str | None  # direct image URL (may be a small derivative, or even info.json)
    width: int | None = None
    height: int | None = None
    level: int | None = None  # compliance level the service's profile names, if any


@dataclass(frozen=True)
class ServiceInfo:
    """What an info.json (or a manifest's service entry) says the service can do."""

    service: str
    version: int
    width: int | None = None
    height: int | None = None
    max_width: int | None = None
    max_height: int | None = None
    max_area: int | None = None
    sizes: list[tuple[int, int]] = field(default_factory=list)
    level: int | None = None  # compliance level 0-2; None when the profile names none
    # size features beyond the level: 2.1 profile `supports`, 3.0 `extraFeatures`
    features: frozenset[str] = frozenset()


def _id(obj: Any) -> str | None:
    if isinstance(obj, dict):
        v = obj.get("id") or obj.get("@id")
        return v if isinstance(v, str) and v else None
    return obj if isinstance(obj, str) and obj else None


def _as_list(v: Any) -> list:
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


def _int(v: Any) -> int | None:
    try:
        i = int(v)
    except (TypeError, ValueError):
        return None
    return i if i > 0 else None


def _version_of(svc: dict) -> int:
    text = " ".join(str(svc.get(k, "")) for k in ("type", "@type", "@context", "profile"))
    profile = svc.get("profile")
    if isinstance(profile, list):
        text += " " + " ".join(str(p) for p in profile if isinstance(p, str))
    if "ImageService3" in text or "/image/3" in text:
        return 3
    return 2


_LEVEL = re.compile(r"level([0-2])")


def _level(doc: dict) -> int | None:
    """The compliance level: the first profile entry naming one (2.1: a level URI first
    in `profile`; 3.0: "level0".."level2"; 1.1's compliance.html#levelN matches too)."""
    for p in _as_list(doc.get("profile")):
        m = _LEVEL.search(p) if isinstance(p, str) else None
        if m:
            return int(m.group(1))
    return None


def _features(doc: dict) -> frozenset[str]:
    out = {f for f in _as_list(doc.get("extraFeatures")) if isinstance(f, str)}
    for p in _as_list(doc.get("profile")):
        if isinstance(p, dict):
            out.update(f for f in _as_list(p.get("supports")) if isinstance(f, str))
    return frozenset(out)


def _service(obj: dict) -> tuple[str | None, int, int | None]:
    """The best Image API service of an image resource (v3 preferred over v2), its
    version and the compliance level it names."""
    best: tuple[str | None, int, int | None] = (None, 2, None)
    for svc in _as_list(obj.get("service")):
        if not isinstance(svc, dict):
            continue
        sid = _id(svc)
        kind = str(svc.get("type") or svc.get("@type") or "")
        profile = str(svc.get("profile") or "")
        if not sid or (kind and "ImageService" not in kind and "image" not in profile.lower()
                       and "iiif.io/api/image" not in str(svc.get("@context", ""))):
            continue
        v = _version_of(svc)
        if best[0] is None or v > best[1]:
            best = (sid.rstrip("/"), v, _level(svc))
    return best


def _ref(resource: dict) -> ImageRef | None:
    service, version, level = _service(resource)
    body = _id(resource)
    if body and body.rstrip("/").endswith("/info.json"):
        service = service or body.rstrip("/")[: -len("/info.json")]
        body = None
    if not service and not body:
        return None
    return ImageRef(service, version, body, _int(resource.get("width")),
                    _int(resource.get("height")), level)


def parse_manifest(doc: Any) -> list[ImageRef]:
    """Painted images of a Presentation v2 or v3 manifest, one per canvas, in order.

    Canvases without a painting annotation are skipped. Raises ManifestError
    if the document is not a manifest.
    """
    if not isinstance(doc, dict):
        raise ManifestError("manifest is not a JSON object")
    refs: list[ImageRef] = []
    if "sequences" in doc:  # Presentation 2
        for seq in _as_list(doc.get("sequences"))[:1]:
            for canvas in _as_list(seq.get("canvases") if isinstance(seq, dict) else None):
                ref = _v2_canvas(canvas) if isinstance(canvas, dict) else None
                if ref:
                    refs.append(ref)
    elif isinstance(doc.get("items"), list):  # Presentation 3
        for canvas in doc["items"]:
            if not isinstance(canvas, dict) or canvas.get("type", "Canvas") != "Canvas":
                continue
            ref = _v3_canvas(canvas)
            if ref:
                refs.append(ref)
    else:
        raise ManifestError("not a IIIF Presentation manifest (no sequences or items)")
    return refs


class CanvasImage(NamedTuple):
    """One canvas's image as an images row holds it: key, host and candidate URLs."""

    key: str  # canonical image key (web/keys.py): the same as the ingest would give it
    host: str  # the politeness unit its row is claimed under (the first URL's host)
    urls: tuple[str, ...]  # candidates, best first


def canvas_image(ref: ImageRef) -> CanvasImage | None:
    """The row for one canvas's image: a rendering of its own service alone (the
    worker asks the target size first, then it), else the service's info.json (the
    worker plans from it) then the body; None when no URL is usable."""
    if ref.service and ref.body and service_of_rendering(ref.body) == ref.service:
        urls = [ref.body]
    else:
        urls = ([f"{ref.service}/info.json"] if ref.service else []) + \
            ([ref.body] if ref.body else [])
    good = [c for c in map(keys.parse_identifier, urls) if isinstance(c, keys.Candidate)]
    if not good:
        return None
    return CanvasImage(good[0].key, good[0].host, tuple(dict.fromkeys(c.url for c in good)))


def canvas_images(refs: list[ImageRef]) -> list[CanvasImage]:
    """Each canvas's image once (by key), in canvas order: a manifest that paints one
    image on two canvases gives it once."""
    out: dict[str, CanvasImage] = {}
    for ref in refs:
        c = canvas_image(ref)
        if c is not None and c.key not in out:
            out[c.key] = c
    return list(out.values())


def other_canvases(refs: list[ImageRef]) -> list[CanvasImage]:
    """Every canvas's image but the first canvas's, which the manifest's own row is."""
    first = canvas_image(refs[0]) if refs else None
    return [c for c in canvas_images(refs) if first is None or c.key != first.key]


def _choices(body: Any) -> list[dict]:
    """A body, or the items of a Choice (first is the default)."""
    if not isinstance(body, dict):
        return [b for b in _as_list(body) if isinstance(b, dict)]
    kind = str(body.get("type") or body.get("@type") or "")
    if "Choice" in kind or "oa:Choice" in kind:
        items = _as_list(body.get("items")) or ([body.get("default")] + _as_list(body.get("item")))
        return [b for b in items if isinstance(b, dict)]
    return [body]


def _sized(ref: ImageRef, canvas: dict) -> ImageRef:
    """The image's size: the resource's own, unless it has none or it is a smaller
    rendering of the service (a body like .../full/600,/0/default.jpg gives the
    derivative's size, not the service's); then the canvas's."""
    derivative = bool(ref.body and service_of_rendering(ref.body)
                      and not re.search(r"/full/(full|max)/", ref.body))
    if (ref.width is None or derivative) and _int(canvas.get("width")):
        return ImageRef(ref.service, ref.version, ref.body, _int(canvas.get("width")),
                        _int(canvas.get("height")), ref.level)
    return ref


def _v2_canvas(canvas: dict) -> ImageRef | None:
    for anno in _as_list(canvas.get("images")):
        res = anno.get("resource") if isinstance(anno, dict) else None
        for r in _choices(res):
            ref = _ref(r)
            if ref:
                return _sized(ref, canvas)
    return None


def _v3_canvas(canvas: dict) -> ImageRef | None:
    for page in _as_list(canvas.get("items")):
        if not isinstance(page, dict):
            continue
        for anno in _as_list(page.get("items")):
            if not isinstance(anno, dict):
                continue
            motivation = anno.get("motivation", "painting")
            names = motivation if isinstance(motivation, list) else [motivation]
            if "painting" not in {str(m).lower() for m in names}:
                continue
            for body in _as_list(anno.get("body")):
                for r in _choices(body):
                    ref = _ref(r)
                    if ref:
                        return _sized(ref, canvas)
    return None


def parse_info(doc: Any, fallback_id: str) -> ServiceInfo:
    """An Image API info.json (v2 or v3)."""
    if not isinstance(doc, dict):
        raise ManifestError("info.json is not a JSON object")
    sid = (_id(doc) or fallback_id).rstrip("/")
    version = _version_of(doc)
    limits: dict[str, Any] = dict(doc)
    for p in _as_list(doc.get("profile")):
        if isinstance(p, dict):  # v2: limits sit in a profile object
            limits.update({k: v for k, v in p.items() if k.startswith("max")})
    sizes = []
    for s in _as_list(doc.get("sizes")):
        if isinstance(s, dict) and _int(s.get("width")) and _int(s.get("height")):
            sizes.append((int(s["width"]), int(s["height"])))
    return ServiceInfo(sid, version, _int(doc.get("width")), _int(doc.get("height")),
                       _int(limits.get("maxWidth")), _int(limits.get("maxHeight")),
                       _int(limits.get("maxArea")), sorted(sizes, key=lambda wh: -max(wh)),
                       _level(doc), _features(doc))


_RENDER = re.compile(r"^(?P<base>https?://.+?)/(full|square|\d+,\d+,\d+,\d+|pct:[^/]+)/[^/]+/"
                     r"!?\d+(?:\.\d+)?/(default|color|colour|gray|grey|bitonal|native)\.\w+$",
                     re.I)


def service_of_rendering(url: str) -> str | None:
    """The Image API service base of a rendering URL, or None."""
    m = _RENDER.match(url.split("?", 1)[0])
    return m.group("base") if m else None
