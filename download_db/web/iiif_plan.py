"""IIIF Image API 2.1/3.0 planning: info.json and a target in, requests best first out (pure)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .iiif import ImageRef, ServiceInfo

# Size features each compliance level promises (iiif.io/api/image/2.1/compliance/ §3.2,
# iiif.io/api/image/3.0/compliance/ §3.2). Level 0 promises only full (2.1) / max (3.0)
# and the sizes its info.json lists.
LEVEL_FEATURES: dict[int, dict[int, frozenset[str]]] = {
    2: {0: frozenset(),
        1: frozenset({"sizeByW", "sizeByH", "sizeByPct"}),
        2: frozenset({"sizeByW", "sizeByH", "sizeByPct", "sizeByConfinedWh", "sizeByWh",
                      "sizeByDistortedWh"})},
    3: {0: frozenset(),
        1: frozenset({"sizeByW", "sizeByH", "sizeByWh"}),
        2: frozenset({"sizeByW", "sizeByH", "sizeByWh", "sizeByConfinedWh", "sizeByPct"})},
}
# Answers that refuse a rendering rather than the image (2.1 §7.2: 400 bad syntax,
# 403, 501 not implemented; 413 from proxies in front of servers).
REFUSED = frozenset({400, 403, 413, 501})


@dataclass(frozen=True)
class Request:
    """One Image API request: its URL, size parameter and the size it should return."""

    url: str
    size: str
    width: int | None = None
    height: int | None = None
    # a size the service promises (listed in `sizes`, or full/max within the limits):
    # a 404 there is the image's answer, while a 404 for any other size may only mean
    # "not this size" (2.1 §7.2 answers 404 for sizes beyond the limits; static level-0
    # servers have files for the listed sizes only)
    listed: bool = False


def features(info: ServiceInfo) -> frozenset[str] | None:
    """The size features the service supports, or None when it states no level."""
    if info.level is None:
        return None
    return LEVEL_FEATURES[3 if info.version >= 3 else 2].get(info.level, frozenset()) \
        | info.features


def image_url(service: str, size: str) -> str:
    return f"{service.rstrip('/')}/full/{size}/0/default.jpg"


def limits(info: ServiceInfo) -> tuple[int | None, int | None, int | None]:
    """(maxWidth, maxHeight, maxArea); a maxWidth alone also bounds the height
    (2.1 §5.3 and 3.0 §5.2: "clients should infer that maxHeight = maxWidth")."""
    mh = info.max_height if info.max_height is not None else info.max_width
    return info.max_width, mh, info.max_area


def _fits(info: ServiceInfo, w: int, h: int) -> bool:
    mw, mh, ma = limits(info)
    return (mw is None or w <= mw) and (mh is None or h <= mh) and (ma is None or w * h <= ma)


def _scaled(info: ServiceInfo, long_edge: int) -> tuple[int, int]:
    """The image's size with its long edge at long_edge (aspect kept), shrunk until it
    fits the limits; the short edge is computed the way servers do (rounded)."""
    W, H = info.width or 1, info.height or 1  # noqa: N806 - the spec's names
    long_edge = max(1, long_edge)
    while True:
        if W >= H:
            w, h = long_edge, max(1, round(H * long_edge / W))
        else:
            w, h = max(1, round(W * long_edge / H)), long_edge
        if long_edge == 1 or _fits(info, w, h):
            return w, h
        long_edge -= 1


def _largest(info: ServiceInfo) -> tuple[int, int]:
    """The largest size the limits allow, never above the image's own size."""
    W, H = info.width or 1, info.height or 1  # noqa: N806
    scale = 1.0
    mw, mh, ma = limits(info)
    for cap in (mw / W if mw else None, mh / H if mh else None,
                math.sqrt(ma / (W * H)) if ma else None):
        if cap is not None:
            scale = min(scale, cap)
    return _scaled(info, max(1, math.floor(max(W, H) * scale + 1e-9)))


def plan(info: ServiceInfo, target: int | None, body: str | None = None) -> list[Request]:
    """The requests to try for one image, best first.

    target: long edge wanted in pixels (None: the largest the service gives). Never
    asks for more than the image's own size (2.1 servers may upscale a !w,h box; 3.0
    needs ^, which is never sent), never beyond maxWidth/maxHeight/maxArea, and only
    in forms the compliance level (plus profile `supports` / `extraFeatures`) allows;
    a level-0 service is asked for its listed sizes and full/max only. After the
    best request come the other allowed forms and sizes, so a refusal steps to the
    next size the service allows, then full/max, then the manifest's body URL.
    """
    feats = features(info)
    v3 = info.version >= 3
    full = "max" if v3 else "full"
    known = bool(info.width and info.height)
    out: list[Request] = []

    def add(size: str, w: int | None = None, h: int | None = None,
            listed: bool = False) -> None:
        url = image_url(info.service, size)
        if all(r.url != url for r in out):
            out.append(Request(url, size, w, h, listed))

    def can(feature: str) -> bool:
        return feats is None or feature in feats

    if known:
        W, H = info.width or 0, info.height or 0  # noqa: N806
        cw, ch = _largest(info)
        if target is None:
            want = (cw, ch)
        else:
            want = _scaled(info, min(target, max(cw, ch)))
        whole = want == (W, H)  # the image is no bigger than asked and within the limits
        if whole or (v3 and target is None):
            add(full, cw, ch, listed=True)  # 3.0 max honours the limits by definition
        if not whole:
            if can("sizeByConfinedWh"):
                box = (cw, ch) if target is None else (min(target, cw), min(target, ch))
                add(f"!{box[0]},{box[1]}", *want)
            if can("sizeByW"):
                add(f"{want[0]},", *want)
            elif can("sizeByH"):
                add(f",{want[1]}", *want)
            elif v3 and feats is not None and "sizeByWh" in feats:
                add(f"{want[0]},{want[1]}", *want)
        for w, h in _listed(info, target):
            # the canonical form for listed sizes: w, in 2.1 (2.1 §5.2 warning), w,h in 3.0
            add(f"{w},{h}" if v3 else f"{w},", w, h, listed=True)
        if v3 or _fits(info, W, H):
            add(full, cw, ch, listed=True)
        else:
            add("max", cw, ch)  # 2.1's optional max: the largest within the limits
    else:
        # no size known (a manifest without width/height): a box can at worst be
        # upscaled by a 2.1 server; the saved image is resized to the target anyway
        if target is not None and can("sizeByConfinedWh"):
            add(f"!{target},{target}")
        for w, h in _listed(info, target):
            add(f"{w},{h}" if v3 else f"{w},", w, h, listed=True)
        add(full, listed=True)
    if body and all(r.url != body for r in out):
        out.append(Request(body, "", listed=True))
    return out


def _listed(info: ServiceInfo, target: int | None) -> list[tuple[int, int]]:
    """The info.json sizes worth asking for, best first: the smallest covering the
    target, then larger ones, then smaller ones largest first (sizes above the image's
    own size or the limits are left out)."""
    ok = [(w, h) for w, h in info.sizes if _fits(info, w, h)
          and (not info.width or w <= info.width) and (not info.height or h <= info.height)]
    ok = sorted(set(ok), key=lambda wh: max(wh))
    if target is None:
        return ok[::-1]
    cover = [s for s in ok if max(s) >= target]
    return cover + [s for s in ok if max(s) < target][::-1]


def step_on(req: Request, status: int | None, more: bool) -> bool:
    """After a failed request: try the next one? On refusals, and on a 404 for a size
    the service never promised while other requests remain."""
    if not more:
        return False
    return status in REFUSED or (status == 404 and not req.listed)


def from_ref(ref: ImageRef) -> ServiceInfo:
    """What a manifest says about its image service, before any info.json is read."""
    assert ref.service is not None
    return ServiceInfo(ref.service, ref.version, ref.width, ref.height, level=ref.level)
