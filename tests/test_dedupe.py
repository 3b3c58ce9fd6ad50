"""Duplicate groups: exact by sha256, near by pHash through the banded index, in finalize too."""

from __future__ import annotations

import io
import itertools
import math
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from download_db.cli.main import main
from download_db.db import identity as db_identity
from download_db.db.connection import connect
from download_db.errors import Interrupted
from download_db.files import edgehash, images, phash
from download_db.identity import crops, groups
from download_db.identity.backfill import HashConfig, run_hash
from download_db.identity.dedupe import DEFAULT_NEAR_DISTANCE, DedupeConfig, dedupe, run_dedupe
from download_db.progress import RunContext
from tests.helpers import q
from tests.identity_data import SHEETS, saved_db, synthetic, transformations


def variants() -> dict[tuple[str, str], bytes]:
    """(sheet, variant) -> bytes, for both shipped sheets."""
    out = {}
    for sheet in SHEETS:
        out[(sheet.stem, "as shipped")] = sheet.read_bytes()
        out.update({(sheet.stem, name): data for name, data in transformations(sheet).items()})
    return out


@pytest.fixture(scope="module")
def saved_hashes() -> dict[tuple[str, str], int]:
    """The pHash each variant gets when the downloader saves it."""
    return {key: images.convert(data).phash for key, data in variants().items()}


def test_default_distance_is_chosen_by_the_shipped_sheets(saved_hashes) -> None:
    """Re-encoded and halved copies are within the default; the colour-bar crop moves
    pHash far beyond it (and toward the distance of different sheets), which is why
    crops are matched by their edges (next test)."""
    same, crop = [], []
    for (sheet, name), h in saved_hashes.items():
        d = phash.distance(h, saved_hashes[(sheet, "as shipped")])
        (crop if name == "colour bar cropped" else same).append(d)
    different = [phash.distance(h1, h2) for (k1, h1), (k2, h2)
                 in itertools.combinations(saved_hashes.items(), 2) if k1[0] != k2[0]]
    assert max(same) <= DEFAULT_NEAR_DISTANCE
    assert DEFAULT_NEAR_DISTANCE < min(crop) <= max(crop) < min(different)


def _crop(im: Image.Image, edge: str, share: float) -> Image.Image:
    w, h = im.size
    box = {"top": (0, int(share * h), w, h), "bottom": (0, 0, w, int((1 - share) * h)),
           "left": (int(share * w), 0, w, h), "right": (0, 0, int((1 - share) * w), h)}[edge]
    return im.crop(box)


def test_edge_distances_are_chosen_by_crops_of_the_shipped_sheets() -> None:
    """Cut 2-25 % off any one edge, keep the size or shrink it to 0.35-0.8, at quality
    50-95: the opposite edge's words stay within crops.EDGE_DISTANCE and
    CHECK_DISTANCE of the sheet's, as the downloader saves both, with 2 bits to spare.
    Different sheets are far beyond on every edge."""
    def saved(im: Image.Image, quality: int = 85) -> np.ndarray:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        return edgehash.unpack([images.convert(buf.getvalue()).edges])[0]

    sheets = {s.stem: Image.open(s).convert("RGB") for s in SHEETS}
    base = {name: saved(im, 95) for name, im in sheets.items()}
    worst = np.zeros(2, int)
    for name, im in sheets.items():
        for edge in edgehash.EDGES:
            o = edgehash.EDGES.index(edgehash.OPPOSITE[edge])
            for share in (0.02, 0.05, 0.1, 0.15, 0.2, 0.25):
                for scale, quality in ((1.0, 75), (0.5, 85), (0.7, 60), (0.35, 95), (0.8, 50)):
                    c = _crop(im, edge, share)
                    c = c.resize((int(c.width * scale), int(c.height * scale)),
                                 Image.Resampling.LANCZOS) if scale != 1 else c
                    got = saved(c, quality)[o]
                    worst = np.maximum(worst, groups.popcount(got ^ base[name][o]))
    # with 2 bits to spare: other crops and encoders may move a few more
    assert worst[0] <= crops.EDGE_DISTANCE - 2 and worst[1] <= crops.CHECK_DISTANCE - 2
    a, b = base.values()
    apart = groups.popcount(a ^ b)  # (edges, words)
    assert apart[:, 0].min() > 3 * crops.EDGE_DISTANCE
    assert apart[:, 1].min() > 2 * crops.CHECK_DISTANCE


def groups_by_variant(db: Path, keys: list[tuple[str, str]], column: str) -> set[frozenset]:
    rows = q(db, f"SELECT image_id, {column} FROM images ORDER BY image_id")
    by_group: dict[int, set] = {}
    for key, (_image_id, g) in zip(keys, rows, strict=True):
        if g is not None:
            by_group.setdefault(g, set()).add(key)
    return {frozenset(v) for v in by_group.values()}


def test_near_groups_hold_each_sheet_with_its_crop_at_the_default(tmp_path: Path) -> None:
    v = variants()
    db, _root = saved_db(tmp_path, list(v.values()))
    run_hash(HashConfig(db=db, install_path=tmp_path / "images", bar=False))
    keys = list(v)
    every_variant = {frozenset(k for k in keys if k[0] == s.stem) for s in SHEETS}
    st_ = run_dedupe(DedupeConfig(db=db, bar=False))
    assert groups_by_variant(db, keys, "near_group") == every_variant
    # the crop is linked to each of the other three by an edge only
    assert (st_.near_groups, st_.near_images, st_.crop_links) == (2, 8, 6)
    # a larger pHash distance finds the same; finalize keeps the distance chosen last
    run_dedupe(DedupeConfig(db=db, near_distance=14, workers=2, bar=False))
    assert groups_by_variant(db, keys, "near_group") == every_variant
    assert main(["finalize", "--db", str(db), "--no-bar"]) == 0
    assert groups_by_variant(db, keys, "near_group") == every_variant
    assert q(db, "SELECT value FROM meta WHERE key = 'near_distance'") == [("14",)]


def test_exact_groups_share_the_smallest_image_id_and_singletons_have_none(
        tmp_path: Path) -> None:
    pics = synthetic(4, size=200)
    contents = [pics[0], pics[1], pics[0], pics[2], pics[0], pics[1], pics[3]]
    db, _root = saved_db(tmp_path, contents, convert=False)
    assert main(["dedupe", "--db", str(db), "--no-bar"]) == 0
    rows = q(db, "SELECT image_id, dup_group FROM images ORDER BY image_id")
    ids = [r[0] for r in rows]
    assert [r[1] for r in rows] == [ids[0], ids[1], ids[0], None, ids[0], ids[1], None]
    assert q(db, "SELECT outcome FROM runs WHERE stage = 'dedupe'") == [("ok",)]
    # a file fetched again with other bytes leaves its group on the next run
    conn = connect(db)
    with conn:
        conn.execute("UPDATE images SET sha256 = 'f00' WHERE image_id = ?", (ids[5],))
    conn.close()
    assert main(["dedupe", "--db", str(db), "--no-bar"]) == 0
    assert [r[0] for r in q(db, "SELECT dup_group FROM images ORDER BY image_id")] == \
        [ids[0], None, ids[0], None, ids[0], None, None]


def test_a_stopped_dedupe_finishes_to_the_same_groups(tmp_path: Path, monkeypatch) -> None:
    pics = synthetic(3, size=200)
    db, _root = saved_db(tmp_path, [pics[i % 3] for i in range(12)], convert=False)
    stop = threading.Event()
    stop.set()  # seen before the crop links: nothing is written
    conn = connect(db)
    with pytest.raises(Interrupted):
        dedupe(conn, RunContext(bar=False, stop=stop), chunk=2)
    assert q(db, "SELECT count(*) FROM images WHERE dup_group IS NOT NULL") == [(0,)]
    stop.clear()
    save = db_identity.save_groups

    def save_then_stop(c, rows) -> None:  # a stop during the writes: that chunk lands
        save(c, rows)
        stop.set()

    monkeypatch.setattr(db_identity, "save_groups", save_then_stop)
    with pytest.raises(Interrupted):
        dedupe(conn, RunContext(bar=False, stop=stop), chunk=2)
    monkeypatch.setattr(db_identity, "save_groups", save)
    partial = q(db, "SELECT count(*) FROM images WHERE dup_group IS NOT NULL")[0][0]
    assert partial == 2
    again = dedupe(conn, RunContext(bar=False), chunk=2)
    assert again.changed == 10
    assert dedupe(conn, RunContext(bar=False)).changed == 0  # idempotent
    conn.close()
    want = [(i, 1 + (i - 1) % 3) for i in range(1, 13)]
    assert q(db, "SELECT image_id, dup_group FROM images ORDER BY image_id") == want


def test_bad_distance_is_one_line(tmp_path: Path, capsys) -> None:
    db, _root = saved_db(tmp_path, synthetic(1, size=100))
    assert main(["dedupe", "--db", str(db), "--near-distance", "40", "--no-bar"]) == 64
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--near-distance" in err[0]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 10), st.integers(2, 300),
       st.integers(0, 40), st.integers(0, 2))
def test_banded_index_finds_exactly_the_pairs_all_pairs_would(seed: int, k: int, n: int,
                                                               planted: int, extra: int) -> None:
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    for _ in range(planted):  # near copies at distances around k, equal copies among them
        i, j = rng.integers(0, n, size=2)
        h[j] = h[i] ^ _mask(rng, k + 2)
    signed = h.view(np.int64)
    m = min(k + 1 + extra, 64)  # the cost model's choice varies with N: every m is exact
    a, b = groups.near_pairs(signed, k, max_pairs=7, m=m)  # small slices: the slicing
    got = list(zip(a.tolist(), b.tolist(), strict=True))
    assert got == sorted(set(got))  # each pair once, in order
    if n > 250:  # the keys in forked processes find the same pairs
        a2, b2 = groups.near_pairs(signed, k, workers=2, m=m)
        assert list(zip(a2.tolist(), b2.tolist(), strict=True)) == got
    brute = {(i, j) for i in range(n) for j in range(i + 1, n)
             if phash.distance(int(signed[i]), int(signed[j])) <= k}
    assert set(got) == brute


def _mask(rng: np.random.Generator, most: int) -> np.uint64:
    """0 to most random bits set."""
    mask = np.uint64(0)
    for f in rng.choice(64, size=int(rng.integers(0, most + 1)), replace=False):
        mask |= np.uint64(1) << np.uint64(int(f))
    return mask


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32), st.integers(2, 200), st.integers(0, 40), st.integers(1, 6))
def test_crop_links_are_exactly_the_pairs_an_edge_matches(seed: int, n: int, planted: int,
                                                          max_copies: int) -> None:
    """Against all pairs: some edge with the low words within EDGE_DISTANCE and the next
    within CHECK_DISTANCE, both nonzero, and no more than max_copies rows holding
    either low word."""
    rng = np.random.default_rng(seed)
    e = rng.integers(1, 2**64, size=(n, len(edgehash.EDGES), 2), dtype=np.uint64)
    e[rng.random(n) < 0.1, rng.integers(0, 4)] = 0  # flat regions: no hash
    for _ in range(planted):  # crops near and just beyond the limits, equal copies among them
        i, j = rng.integers(0, n, size=2)
        edge = int(rng.integers(0, len(edgehash.EDGES)))
        e[j, edge, 0] = e[i, edge, 0] ^ _mask(rng, crops.EDGE_DISTANCE + 2)
        e[j, edge, 1] = e[i, edge, 1] ^ _mask(rng, crops.CHECK_DISTANCE + 2)
    a, b = crops.crop_links(e, max_copies=max_copies, workers=2 if n > 150 else 1)
    got = list(zip(a.tolist(), b.tolist(), strict=True))
    assert got == sorted(set(got))
    brute = set()
    for edge in range(len(edgehash.EDGES)):
        low, mid = e[:, edge, 0], e[:, edge, 1]
        held = {v: int(np.count_nonzero(low == v)) for v in set(low.tolist())}
        for i in range(n):
            for j in range(i + 1, n):
                if (low[i] and low[j] and held[int(low[i])] <= max_copies
                        and held[int(low[j])] <= max_copies
                        and phash.distance(int(low[i]), int(low[j])) <= crops.EDGE_DISTANCE
                        and phash.distance(int(mid[i]), int(mid[j])) <= crops.CHECK_DISTANCE):
                    brute.add((i, j))
    assert set(got) == brute


def test_a_stop_is_seen_between_edges() -> None:
    """At 50M each edge takes about a minute: a stop must not wait for all four."""
    e = np.random.default_rng(3).integers(1, 2**64, size=(50, len(edgehash.EDGES), 2),
                                          dtype=np.uint64)
    calls = []
    crops.crop_links(e, after_edge=lambda: calls.append(1))
    assert len(calls) == len(edgehash.EDGES)

    def stop() -> None:
        raise Interrupted("stopped")

    with pytest.raises(Interrupted):
        crops.crop_links(e, after_edge=stop)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 6), st.integers(2, 200), st.integers(0, 60))
def test_links_give_the_groups_all_pairs_give(seed: int, k: int, n: int, copies: int) -> None:
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    for _ in range(copies):  # equal and near copies
        i, j = rng.integers(0, n, size=2)
        h[j] = h[i] ^ (np.uint64(1) << np.uint64(int(rng.integers(0, 64)))) \
            if rng.random() < 0.5 else h[i]
    signed = h.view(np.int64)
    ids = np.arange(1000, 1000 + n)
    a, b = groups.near_pairs(signed, k)
    la, lb = groups.near_links(signed, k)
    assert groups.group_ids(ids, la, lb) == groups.group_ids(ids, a, b)
    assert len(la) <= len(a)


def test_many_copies_of_one_hash_are_linked_in_linear_size() -> None:
    """A placeholder shown 200,000 times: 199,999 links, where all pairs would be 2e10."""
    h = np.full(200_000, 0x1234_5678_9ABC_DEF0, dtype=np.int64)
    h[:10] = np.arange(10)  # a few others, far away
    a, b = groups.near_links(h, 3)
    small = sum(bin(i ^ j).count("1") <= 3 for i in range(10) for j in range(i + 1, 10))
    assert len(a) == 199_990 - 1 + small  # the copies to their first, the small ones' pairs
    g = groups.group_ids(np.arange(len(h)), a, b)
    assert len(set(g.values())) == 2 and g[10] == 10 and g[len(h) - 1] == 10


def test_bands_cover_the_64_bits_once() -> None:
    for k in range(0, 64):
        bs = groups.bands(k)
        assert len(bs) == k + 1
        assert [s for s, _ in bs] == list(itertools.accumulate([0] + [w for _, w in bs[:-1]]))
        assert sum(w for _, w in bs) == 64


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.integers(0, 3), st.integers(0, 2**32))
def test_every_key_moves_all_bits_and_one_key_survives_k_flips(k: int, extra: int,
                                                                seed: int) -> None:
    """Each key is a permutation of the 64 bits (distances kept, undone exactly), and
    any k flipped bits leave the bands of at least one key untouched (pigeonhole)."""
    m = k + 1 + extra
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64, size=50, dtype=np.uint64)
    flips = rng.choice(64, size=k, replace=False)
    mask = sum(1 << int(f) for f in flips)
    untouched = 0
    for fields, key_bits in groups.keys(k, m):
        assert sum(w for _, w in fields) == 64
        v = np.empty_like(h)
        groups._permute(h, fields, v, 7)
        assert (groups._unpermute(v, fields) == h).all()
        assert (groups.popcount(v ^ v[::-1]) == groups.popcount(h ^ h[::-1])).all()
        top = ((1 << key_bits) - 1) << (64 - key_bits)
        moved = np.array([mask], np.uint64)
        w = np.empty_like(moved)
        groups._permute(moved, fields, w, 7)
        untouched += int(w[0]) & top == 0
    assert untouched >= 1
    assert len(groups.keys(k, m)) == math.comb(m, k)


def test_the_cost_model_widens_keys_as_the_collection_grows() -> None:
    assert groups.band_count(100_000, 3) == 4  # four 16-bit bands: small buckets already
    assert groups.band_count(50_000_000, 3) == 5  # ten 25-26-bit keys: sorts, not buckets
    assert groups.band_count(10, 0) == 1


def test_the_export_carries_hashes_groups_and_the_placeholder_flag(tmp_path: Path) -> None:
    import download_db

    pics = synthetic(3, size=200)
    db, root = saved_db(tmp_path, [pics[0], pics[1], pics[0], pics[2]], convert=False)
    assert download_db.read_manifest(db)["placeholder"].isna().all()  # not checked yet
    run_hash(HashConfig(db=db, install_path=root, bar=False))
    run_dedupe(DedupeConfig(db=db, bar=False))
    m = download_db.read_manifest(db).sort_values(["gbif_id", "image_no"])
    want = q(db, "SELECT phash, dhash, dup_group, near_group FROM images "
                 "ORDER BY gbif_id, image_no")
    got = [(int(a), int(b), None if np.isnan(c) else int(c), None if np.isnan(d) else int(d))
           for a, b, c, d in m[["phash", "dhash", "dup_group", "near_group"]].itertuples(
               index=False)]
    assert got == want
    assert got[0][2] is not None and got[0][2] == got[2][2]  # the repeated picture
    assert m["placeholder"].tolist() == [False] * 4
