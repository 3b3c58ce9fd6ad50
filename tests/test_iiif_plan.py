"""IIIF Image API request planning against info.json of each compliance level (2.1 and 3.0)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from download_db.web import iiif, iiif_plan
from download_db.web.iiif import ServiceInfo
from download_db.web.iiif_plan import Request

INFO = Path(__file__).parent / "data" / "iiif" / "info"
SPEC2 = "http://www.example.org/image-service/abcd1234/1E34750D-38DB-4825-A38A-B60A345E591C"
SPEC3 = "https://example.org/image-service/abcd1234/1E34750D-38DB-4825-A38A-B60A345E591C"


def info(name: str) -> ServiceInfo:
    path = INFO / f"{name}_info.json"
    return iiif.parse_info(json.loads(path.read_text(encoding="utf-8")), "https://fallback/x")


def sizes(name: str, target: int | None) -> list[str]:
    return [r.size for r in iiif_plan.plan(info(name), target)]


# -- each fixture: level, features, limits as parsed ---------------------------------------


@pytest.mark.parametrize(("name", "version", "level", "size"), [
    ("v2_level0_spec_sizes", 2, 0, (6000, 4000)),
    ("v2_level1_spec_maxwidth", 2, 1, (6000, 4000)),
    ("v2_level2_spec_complete", 2, 2, (6000, 4000)),
    ("v2_level2_sanity_500x750", 2, 2, (500, 750)),
    ("v2_level2_600x900", 2, 2, (600, 900)),
    ("v3_level0_spec_sizes", 3, 0, (6000, 4000)),
    ("v3_level1_spec_extrafeatures", 3, 1, (6000, 4000)),
    ("v3_level1_spec_confined", 3, 1, (6000, 4000)),
    ("v3_level2_spec_limits", 3, 2, (6000, 4000)),
    ("v3_level2_600x900", 3, 2, (600, 900)),
])
def test_fixture_version_level_and_size(name, version, level, size):
    i = info(name)
    assert (i.version, i.level, (i.width, i.height)) == (version, level, size)


def test_features_come_from_profile_supports_and_extra_features():
    assert info("v2_level2_spec_complete").features >= {"rotationArbitrary",
                                                        "canonicalLinkHeader"}
    assert info("v3_level1_spec_confined").features == {"sizeByConfinedWh"}
    assert iiif_plan.features(info("v3_level1_spec_confined")) == {
        "sizeByW", "sizeByH", "sizeByWh", "sizeByConfinedWh"}
    assert iiif_plan.features(info("v2_level0_spec_sizes")) == frozenset()
    assert iiif_plan.features(ServiceInfo("https://x/s", 2)) is None  # no level: unknown


def test_max_width_alone_also_bounds_the_height():
    assert iiif_plan.limits(info("v2_level1_spec_maxwidth")) == (2000, 2000, None)
    assert iiif_plan.limits(info("v3_level2_spec_limits")) == (3000, 2000, 4000000)


# -- plans per level ---------------------------------------------------------------------------


def test_v2_level2_box_then_width_then_listed_sizes_then_full():
    plan = iiif_plan.plan(info("v2_level2_spec_complete"), 1024)
    assert [r.size for r in plan] == ["!1024,1024", "1024,", "3000,", "600,", "150,", "full"]
    assert plan[0] == Request(f"{SPEC2}/full/!1024,1024/0/default.jpg", "!1024,1024", 1024, 683)
    # a 404 is final only for what the service promised: listed sizes and full
    assert [r.listed for r in plan] == [False, False, True, True, True, True]


def test_v2_level1_asks_w_comma_within_max_width_and_max_beyond_it():
    # level 1 has no !w,h; full (6000 wide) is over maxWidth 2000: 2.1's max instead
    assert sizes("v2_level1_spec_maxwidth", 1024) == ["1024,", "600,", "150,", "max"]
    # keeping originals: the largest the limits allow, 2000 x 1333
    assert sizes("v2_level1_spec_maxwidth", None) == ["2000,", "600,", "150,", "max"]


def test_v2_level0_picks_from_sizes_smallest_covering_first():
    # only the listed sizes (canonical w, form in 2.1) and full
    assert sizes("v2_level0_spec_sizes", 1024) == ["3000,", "600,", "150,", "full"]
    assert sizes("v2_level0_spec_sizes", 500) == ["600,", "3000,", "150,", "full"]
    # nothing covers the target: the largest listed first
    assert sizes("v2_level0_spec_sizes", 4000) == ["3000,", "600,", "150,", "full"]
    assert sizes("v2_level0_spec_sizes", None) == ["full", "3000,", "600,", "150,"]


def test_v2_small_image_is_never_upscaled():
    # a 600x900 image wanted at 1024: !1024,1024 would come back 683x1024 from a 2.1
    # server; full gives 600x900
    assert sizes("v2_level2_600x900", 1024) == ["full"]
    plan = iiif_plan.plan(info("v2_level2_600x900"), 512)
    assert [(r.size, r.width, r.height) for r in plan] == [
        ("!512,512", 341, 512), ("341,", 341, 512), ("full", 600, 900)]


def test_v2_listed_sizes_above_the_image_are_not_asked_for():
    # the real Sanity service lists 600x900 .. 2000x3000 for a 500x750 image
    assert sizes("v2_level2_sanity_500x750", 1024) == ["full", "200,", "50,"]


def test_v3_level2_respects_max_width_height_and_area():
    plan = iiif_plan.plan(info("v3_level2_spec_limits"), 1024)
    assert [r.size for r in plan] == ["!1024,1024", "1024,", "max"]
    largest = iiif_plan.plan(info("v3_level2_spec_limits"), None)
    assert [r.size for r in largest] == ["max", "!2449,1633", "2449,"]
    w, h = largest[1].width, largest[1].height
    assert w * h <= 4_000_000 and w <= 3000 and h <= 2000


def test_v3_level1_uses_w_comma_and_confined_only_when_announced():
    assert sizes("v3_level1_spec_extrafeatures", 1024) == ["1024,", "max"]
    assert sizes("v3_level1_spec_confined", 1024) == ["!1024,1024", "1024,", "max"]


def test_v3_level0_asks_listed_sizes_in_canonical_w_h_form():
    assert sizes("v3_level0_spec_sizes", 1024) == ["3000,2000", "600,400", "150,100", "max"]


def test_v3_small_image_gets_max_and_never_a_caret():
    plan = iiif_plan.plan(info("v3_level2_600x900"), 1024)
    assert [r.size for r in plan] == ["max", "600,900", "150,225"]
    assert (plan[0].width, plan[0].height) == (600, 900)


def test_unknown_level_and_size_box_then_full_and_the_body_last():
    svc = ServiceInfo("https://x/s", 3)
    plan = iiif_plan.plan(svc, 800, body="https://x/a.jpg")
    assert [r.url for r in plan] == ["https://x/s/full/!800,800/0/default.jpg",
                                     "https://x/s/full/max/0/default.jpg", "https://x/a.jpg"]
    level0 = ServiceInfo("https://x/s", 2, level=0, sizes=[(400, 300)])
    assert [r.size for r in iiif_plan.plan(level0, 800)] == ["400,", "full"]


def test_step_on_refusals_and_404_for_unpromised_sizes_only():
    computed = Request("u", "1024,")
    listed = Request("u", "3000,", listed=True)
    for status in (400, 403, 413, 501):
        assert iiif_plan.step_on(listed, status, more=True)
    assert iiif_plan.step_on(computed, 404, more=True)
    assert not iiif_plan.step_on(listed, 404, more=True)  # the image is gone
    assert not iiif_plan.step_on(computed, 404, more=False)  # nothing left: a verdict
    for status in (500, 503, 429, None):
        assert not iiif_plan.step_on(computed, status, more=True)


# -- properties over any info.json ------------------------------------------------------


@st.composite
def services(draw):
    w, h = draw(st.integers(1, 20000)), draw(st.integers(1, 20000))
    mw = draw(st.none() | st.integers(1, 20000))
    mh = draw(st.none() | st.integers(1, 20000)) if mw else None  # maxHeight needs maxWidth
    ma = draw(st.none() | st.integers(1, 400_000_000))
    listed = draw(st.lists(st.tuples(st.integers(1, 25000), st.integers(1, 25000)),
                           max_size=6))
    feats = draw(st.frozensets(st.sampled_from(["sizeByW", "sizeByH", "sizeByWh",
                                                "sizeByConfinedWh", "sizeUpscaling"])))
    return ServiceInfo("https://x/s", draw(st.sampled_from([2, 3])), w, h, mw, mh, ma,
                       listed, draw(st.none() | st.integers(0, 2)), feats)


_WH = re.compile(r"!?(\d*),(\d*)")


@given(services(), st.none() | st.integers(16, 9000))
def test_a_plan_never_upscales_never_exceeds_limits_and_uses_allowed_forms(svc, target):
    plan = iiif_plan.plan(svc, target)
    assert plan and len({r.url for r in plan}) == len(plan)
    feats = iiif_plan.features(svc)
    mw, mh, ma = iiif_plan.limits(svc)
    full = "max" if svc.version == 3 else "full"
    for r in plan:
        assert "^" not in r.size
        if r.size in ("full", "max"):
            assert r.size == full or (svc.version == 2 and r.size == "max")
            continue
        assert r.width is not None and r.height is not None
        assert r.width <= svc.width and r.height <= svc.height  # never upscaled
        assert (mw is None or r.width <= mw) and (mh is None or r.height <= mh)
        assert ma is None or r.width * r.height <= ma
        if r.listed:
            assert (r.width, r.height) in svc.sizes
        elif feats is not None:  # only forms the level or the features allow
            need = ("sizeByConfinedWh" if r.size.startswith("!") else
                    "sizeByW" if r.size.endswith(",") else
                    "sizeByH" if r.size.startswith(",") else "sizeByWh")
            assert need in feats
        m = _WH.fullmatch(r.size)
        assert m is not None
        if r.size.startswith("!") and target is not None:
            assert max(int(m.group(1)), int(m.group(2))) <= max(target, 1)
    first = plan[0]
    if target is not None and not first.listed and first.size != "max":
        # a computed first request is never above the target
        assert max(first.width, first.height) <= target
