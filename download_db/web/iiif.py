"""IIIF: read Presentation v2/v3 manifests and info.json, and build Image API requests (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


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


@dataclass(frozen=True)
class ServiceInfo:
    service: str
    version: int
    width: int | None = None
    height: int | None = None
    max_width: int | None = None
    max_height: int | None = None
    max_area: int | None = None
    sizes: list[tuple[int, int]] = field(default_factory=list)


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


def _service(obj: dict) -> tuple[str | None, int]:
    """The best Image API service of an image resource: v3 preferred over v2."""
    best: tuple[str | None, int] = (None, 2)
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
            best = (sid.rstrip("/"), v)
    return best


def _ref(resource: dict) -> ImageRef | None:
    service, version = _service(resource)
    body = _id(resource)
    if body and body.rstrip("/").endswith("/info.json"):
        service = service or body.rstrip("/")[: -len("/info.json")]
        body = None
    if not service and not body:
        return None
    return ImageRef(service, version, body, _int(resource.get("width")),
                    _int(resource.get("height")))


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
    if ref.width is None and _int(canvas.get("width")):
        return ImageRef(ref.service, ref.version, ref.body, _int(canvas.get("width")),
                        _int(canvas.get("height")))
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
                       _int(limits.get("maxArea")), sorted(sizes, key=lambda wh: -max(wh)))


def size_param(target: int, version: int) -> str:
    """Best-fit size within target x target, same syntax in v2 and v3 (no upscaling)."""
    return f"!{target},{target}"


def image_url(service: str, size: str, version: int) -> str:
    return f"{service.rstrip('/')}/full/{size}/0/default.jpg"


def request_plan(ref: ImageRef, target: int | None, info: ServiceInfo | None = None) -> list[str]:
    """URLs to try for one image, best first: the service at the target size,
    then stepped-down sizes (for servers refusing large renderings with
    400/403/413), then the service's full/max, then the body URL. target None:
    the largest rendering (for keeping originals)."""
    urls: list[str] = []
    if ref.service and target is not None:
        steps = [target] + [s for s in (target * 3 // 4, target // 2) if s >= 256]
        if info:
            # a "!s,s" box must fit every limit the server states
            caps = [c for c in (info.max_width, info.max_height,
                                int(info.max_area ** 0.5) if info.max_area else None) if c]
            if caps:
                steps = [min(s, min(caps)) for s in steps]
        for s in dict.fromkeys(steps):
            urls.append(image_url(ref.service, size_param(s, ref.version), ref.version))
    if ref.service:
        urls.append(image_url(ref.service, "max" if ref.version >= 3 else "full", ref.version))
    if ref.body and ref.body not in urls:
        urls.append(ref.body)
    return urls


_RENDER = re.compile(r"^(?P<base>https?://.+?)/(full|square|\d+,\d+,\d+,\d+|pct:[^/]+)/[^/]+/"
                     r"!?\d+(?:\.\d+)?/(default|color|colour|gray|grey|bitonal|native)\.\w+$",
                     re.I)


def service_of_rendering(url: str) -> str | None:
    """The Image API service base of a rendering URL, or None."""
    m = _RENDER.match(url.split("?", 1)[0])
    return m.group("base") if m else None
