"""download/docs.py: IIIF documents kept by URL, bounded in entries and in age."""

from __future__ import annotations

from download_db.download.docs import DocCache


def test_kept_for_a_while_then_gone():
    c = DocCache(size=8, ttl=60.0)
    c.put("https://x/m.json", {"items": []}, now=0.0)
    assert c.get("https://x/m.json", now=59.0) == {"items": []}
    assert c.get("https://x/m.json", now=61.0) is None
    assert c.get("https://x/other.json", now=0.0) is None


def test_the_least_recently_used_goes_first():
    c = DocCache(size=2, ttl=60.0)
    c.put("a", 1, now=0.0)
    c.put("b", 2, now=0.0)
    assert c.get("a", now=1.0) == 1  # a is used: b is now the oldest
    c.put("c", 3, now=2.0)
    assert (c.get("a", now=3.0), c.get("b", now=3.0), c.get("c", now=3.0)) == (1, None, 3)
