"""IIIF manifests (real v2/v3 documents), info.json and rendering URLs (plans: test_iiif_plan)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from download_db.web import iiif, iiif_plan
from download_db.web.iiif import ImageRef, ManifestError, ServiceInfo

IIIF = Path(__file__).parent / "data" / "iiif"
HARVARD = IIIF / "v2_harvard_ids_11927378_manifest.json"
UCLA = IIIF / "v3_ucla_body_is_600px_derivative_imageservice2_manifest.json"
YALE = IIIF / "v3_yale_yuag_obj69_imageservice2_manifest.json"
COOKBOOK_0005 = IIIF / "v3_cookbook_0005_image_service3_manifest.json"
COOKBOOK_0283 = IIIF / "v3_cookbook_0283_missing_image_manifest.json"


def load(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


# -- real manifests -------------------------------------------------------------------


def test_v2_harvard_service_object():
    refs = iiif.parse_manifest(load(HARVARD))
    assert refs == [ImageRef(
        service="https://ids.lib.harvard.edu/ids/iiif/11927378", version=2,
        body="https://ids.lib.harvard.edu/ids/iiif/11927378/full/full/0/default.jpg",
        width=1024, height=833, level=2)]


def urls(ref: ImageRef, target: int | None) -> list[str]:
    return [r.url for r in iiif_plan.plan(iiif_plan.from_ref(ref), target, ref.body)]


def test_v2_harvard_a_1024px_image_is_asked_for_whole_once():
    (ref,) = iiif.parse_manifest(load(HARVARD))
    # 1024x833 is no bigger than the target: full, which is also the body, asked once
    assert urls(ref, 1024) == ["https://ids.lib.harvard.edu/ids/iiif/11927378/full/full/0/"
                               "default.jpg"]


def test_v3_ucla_uses_the_service_not_the_600px_body():
    (ref,) = iiif.parse_manifest(load(UCLA))
    service = "https://iiif.library.ucla.edu/iiif/2/ark%3A%2F21198%2Fz1087zv3"
    assert ref.service == service
    assert ref.version == 2  # ImageService2 with @id / @type
    assert ref.body == f"{service}/full/600,/0/default.jpg"
    # the body has no size; the canvas gives it
    assert (ref.width, ref.height) == (4757, 7061)
    assert urls(ref, 2048) == [f"{service}/full/!2048,2048/0/default.jpg",
                               f"{service}/full/1380,/0/default.jpg",  # 4757 * 2048 / 7061
                               f"{service}/full/full/0/default.jpg",
                               ref.body]  # the small derivative only as a last resort


def test_v3_yale_two_canvases_in_order():
    refs = iiif.parse_manifest(load(YALE))
    base = "https://images.collections.yale.edu/iiif/2/yuag:"
    assert [r.service for r in refs] == [f"{base}4b836cfe-f3de-47b7-9899-31df7970b30b",
                                         f"{base}2cc64727-d8b7-443a-b0ea-394c8f39b371"]
    assert [r.version for r in refs] == [2, 2]
    assert [(r.width, r.height) for r in refs] == [(5688, 3816), (4800, 3000)]
    assert all(r.body == f"{r.service}/full/full/0/default.jpg" for r in refs)


def test_v3_cookbook_image_service3():
    (ref,) = iiif.parse_manifest(load(COOKBOOK_0005))
    base = ("https://iiif.io/api/image/3.0/example/reference/"
            "918ecd18c2592080851777620de9bcb5-gottingen")
    assert ref == ImageRef(base, 3, f"{base}/full/max/0/default.jpg", 4032, 3024, level=1)
    # level 1: w, from the known size, never !w,h; v3 says max, and max == body
    assert urls(ref, 1000) == [f"{base}/full/1000,/0/default.jpg",
                               f"{base}/full/max/0/default.jpg"]


def test_v3_cookbook_canvas_without_painting_annotation_is_skipped():
    doc = load(COOKBOOK_0283)
    assert len(doc["items"]) == 4
    refs = iiif.parse_manifest(doc)
    assert len(refs) == 3
    assert ["-1-21198-" in refs[0].service, "-3-21198-" in refs[1].service,
            "-4-21198-" in refs[2].service] == [True, True, True]
    assert all(r.version == 3 for r in refs)
    assert [(r.width, r.height) for r in refs] == [(1768, 2504), (1792, 2456), (1760, 2440)]


@pytest.mark.parametrize("path", sorted(IIIF.glob("*.json")), ids=lambda p: p.name[:20])
def test_every_real_manifest_gives_a_plan_starting_at_the_service(path):
    refs = iiif.parse_manifest(load(path))
    assert refs
    for ref in refs:
        assert ref.service and not ref.service.endswith("/")
        plan = urls(ref, 1024)
        assert plan[0].startswith(f"{ref.service}/full/")
        # every rendering we ask for points back at its service
        assert all(iiif.service_of_rendering(u) == ref.service for u in plan)


# -- parse_info -------------------------------------------------------------------------------


def test_parse_info_v2_profile_list_with_limits():
    doc = {
        "@context": "http://iiif.io/api/image/2/context.json",
        "@id": "https://iiif.example.org/iiif/E00699064/",
        "protocol": "http://iiif.io/api/image",
        "width": 6000, "height": 9000,
        "profile": ["http://iiif.io/api/image/2/level2.json",
                    {"formats": ["jpg", "png"], "maxWidth": 2000, "maxArea": 4000000}],
        "sizes": [{"width": 375, "height": 562}, {"width": 1500, "height": 2250},
                  {"width": "bad"}, "junk"],
    }
    info = iiif.parse_info(doc, "https://fallback/x")
    assert info == ServiceInfo("https://iiif.example.org/iiif/E00699064", 2, 6000, 9000,
                               max_width=2000, max_height=None, max_area=4000000,
                               sizes=[(1500, 2250), (375, 562)], level=2)


def test_parse_info_v3_top_level_limits():
    doc = {
        "@context": "http://iiif.io/api/image/3/context.json",
        "id": "https://iiif.example.org/iiif3/abc",
        "type": "ImageService3", "protocol": "http://iiif.io/api/image",
        "profile": "level1", "width": 4032, "height": 3024,
        "maxWidth": 1500, "maxHeight": 1400,
    }
    info = iiif.parse_info(doc, "https://fallback/x")
    assert (info.service, info.version) == ("https://iiif.example.org/iiif3/abc", 3)
    assert (info.width, info.height, info.max_width, info.max_height) == (4032, 3024, 1500, 1400)
    assert (info.level, info.features) == (1, frozenset())


def test_parse_info_without_id_uses_fallback_and_defaults_to_v2():
    info = iiif.parse_info({"width": "0", "height": None}, "https://h/iiif/img/")
    assert info == ServiceInfo("https://h/iiif/img", 2)


@pytest.mark.parametrize("doc", [None, [], "info", 3, [{"@id": "x"}]])
def test_parse_info_rejects_non_objects(doc):
    with pytest.raises(ManifestError):
        iiif.parse_info(doc, "https://h/x")


# -- parse_manifest edge cases ------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc",
    [None, [], "manifest", 42, {"@type": "sc:Collection", "manifests": []},
     {"items": "not a list"}, {"label": "x"}],
)
def test_parse_manifest_rejects_non_manifests(doc):
    with pytest.raises(ManifestError):
        iiif.parse_manifest(doc)


def test_manifest_error_is_a_value_error():
    assert issubclass(ManifestError, ValueError)


def _v3(body, motivation="painting", canvas_extra=None):
    canvas = {"id": "c1", "type": "Canvas", "width": 100, "height": 200,
              "items": [{"type": "AnnotationPage",
                         "items": [{"type": "Annotation", "motivation": motivation,
                                    "body": body}]}]}
    canvas.update(canvas_extra or {})
    return {"type": "Manifest", "items": [canvas]}


def test_v3_choice_body_takes_the_first_usable_item():
    body = {"type": "Choice", "items": [
        {"type": "Image", "label": "no id, no service"},
        {"id": "https://x/iiif/natural/full/max/0/default.jpg", "type": "Image",
         "service": [{"id": "https://x/iiif/natural", "type": "ImageService3"}]},
        {"id": "https://x/iiif/uv/full/max/0/default.jpg", "type": "Image",
         "service": [{"id": "https://x/iiif/uv", "type": "ImageService3"}]},
    ]}
    (ref,) = iiif.parse_manifest(_v3(body))
    assert (ref.service, ref.version) == ("https://x/iiif/natural", 3)
    assert (ref.width, ref.height) == (100, 200)


def test_v2_oa_choice_uses_the_default():
    doc = {"@type": "sc:Manifest", "sequences": [{"canvases": [{
        "@type": "sc:Canvas", "width": 10, "height": 20,
        "images": [{"@type": "oa:Annotation", "motivation": "sc:painting", "resource": {
            "@type": "oa:Choice",
            "default": {"@id": "https://x/def/full/full/0/default.jpg",
                        "service": {"@context": "http://iiif.io/api/image/2/context.json",
                                    "@id": "https://x/def/",
                                    "profile": "http://iiif.io/api/image/2/level1.json"}},
            "item": [{"@id": "https://x/alt.jpg"}]}}]}]}]}
    (ref,) = iiif.parse_manifest(doc)
    assert ref == ImageRef("https://x/def", 2, "https://x/def/full/full/0/default.jpg", 10, 20, 1)


def test_info_json_as_body_id_becomes_the_service():
    (ref,) = iiif.parse_manifest(_v3({"id": "https://x/iiif/abc/info.json", "type": "Image"}))
    assert ref.service == "https://x/iiif/abc"
    assert ref.body is None
    assert urls(ref, 50) == ["https://x/iiif/abc/full/!50,50/0/default.jpg",  # level unknown
                             "https://x/iiif/abc/full/25,/0/default.jpg",
                             "https://x/iiif/abc/full/full/0/default.jpg"]


def test_v3_service_preferred_over_v2_and_non_image_services_ignored():
    body = {"id": "https://x/a.jpg", "type": "Image", "service": [
        {"id": "https://x/auth/login", "type": "AuthCookieService1",
         "profile": "http://iiif.io/api/auth/1/login"},
        {"@id": "https://x/iiif2/a", "@type": "ImageService2",
         "profile": "http://iiif.io/api/image/2/level2.json"},
        {"id": "https://x/iiif3/a", "type": "ImageService3", "profile": "level2"},
        "https://x/not-an-object",
    ]}
    (ref,) = iiif.parse_manifest(_v3(body))
    assert (ref.service, ref.version) == ("https://x/iiif3/a", 3)
    only_v2 = dict(body, service=body["service"][:2])
    (ref2,) = iiif.parse_manifest(_v3(only_v2))
    assert (ref2.service, ref2.version) == ("https://x/iiif2/a", 2)


def test_v3_non_painting_annotations_and_non_canvases_are_skipped():
    img = {"id": "https://x/a.jpg", "type": "Image"}
    assert iiif.parse_manifest(_v3(img, motivation="supplementing")) == []
    assert iiif.parse_manifest(_v3(img, canvas_extra={"type": "Range"})) == []
    assert iiif.parse_manifest({"type": "Manifest", "items": ["junk", 5, {"items": "x"}]}) == []
    (ref,) = iiif.parse_manifest(_v3(img))
    assert ref == ImageRef(None, 2, "https://x/a.jpg", 100, 200)


def test_v2_only_first_sequence_and_junk_canvases_tolerated():
    def canvas(name):
        return {"images": [{"resource": {"@id": f"https://x/{name}.jpg"}}]}

    doc = {"sequences": [{"canvases": ["junk", canvas("a"), {"images": [{"resource": None}]},
                                       canvas("b")]},
                         {"canvases": [canvas("other")]}]}
    refs = iiif.parse_manifest(doc)
    assert [r.body for r in refs] == ["https://x/a.jpg", "https://x/b.jpg"]
    assert iiif.parse_manifest({"sequences": "junk"}) == []


# -- service_of_rendering -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "service"),
    [
        ("https://iiif.library.ucla.edu/iiif/2/ark%3A%2F21198%2Fz1087zv3/full/600,/0/default.jpg",
         "https://iiif.library.ucla.edu/iiif/2/ark%3A%2F21198%2Fz1087zv3"),
        ("https://x.org/iiif/E1/full/!1024,1024/0/default.jpg?token=abc", "https://x.org/iiif/E1"),
        ("https://x.org/iiif/E1/full/max/0/default.jpg", "https://x.org/iiif/E1"),
        ("http://x.org/iiif/E1/0,0,500,500/max/90/gray.png", "http://x.org/iiif/E1"),
        ("https://x.org/iiif/E1/pct:10,10,80,80/full/!90/bitonal.tif", "https://x.org/iiif/E1"),
        ("https://x.org/iiif/E1/square/256,/0/color.webp", "https://x.org/iiif/E1"),
        ("https://x.org/iiif/full/full/full/0/default.jpg", "https://x.org/iiif/full"),
        ("https://example.org/photos/2021/09/12/default.jpg", None),
        ("https://example.org/a.jpg", None),
        ("https://x.org/iiif/E1/info.json", None),
        ("ftp://x.org/iiif/E1/full/full/0/default.jpg", None),
        ("https://x.org/iiif/E1/full/full/0/thumbnail.jpg", None),
    ],
)
def test_service_of_rendering(url, service):
    assert iiif.service_of_rendering(url) == service


def test_a_derivative_body_gives_way_to_the_canvas_size():
    body = {"id": "https://x/iiif/a/full/600,/0/default.jpg", "type": "Image",
            "width": 600, "height": 1200,
            "service": [{"id": "https://x/iiif/a", "type": "ImageService3", "profile": "level2"}]}
    (ref,) = iiif.parse_manifest(_v3(body, canvas_extra={"width": 3000, "height": 6000}))
    assert (ref.width, ref.height, ref.level) == (3000, 6000, 2)
    full = dict(body, id="https://x/iiif/a/full/max/0/default.jpg")
    (ref,) = iiif.parse_manifest(_v3(full, canvas_extra={"width": 3000, "height": 6000}))
    assert (ref.width, ref.height) == (600, 1200)  # the resource's own size wins
