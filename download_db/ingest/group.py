"""Rows to distinct images: validate, canonicalise and rank a parsed chunk, vectorised."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..web import keys

SKIP_GBIF = "bad_gbif_id"
SKIP_SOUND = "type_sound"
SKIP_MOVING = "type_moving_image"
SKIP_HTML = "format_html_page"
SKIP_NOT_IMAGE = "format_not_image"
SKIP_OVERLONG = "overlong_identifier"

MAX_IDENTIFIER = 4096
MAX_ATTRIBUTION = 1000  # license / rightsHolder / creator / publisher: truncated, not skipped
# multimedia.txt columns stored per attribution, in attributions' column order
ATTRIBUTION_COLUMNS = ("license", "rightsHolder", "creator", "publisher")

# Ordinary URLs whose canonical form is themselves: lower-case http(s) scheme
# and host, no default or zero-padded port, a path, printable ASCII only, no
# fragment. IIIF renderings, manifests and info.json among them are parsed
# here with RE2 too; everything else takes the exact Python path in
# keys.parse_identifier. A property test keeps the two paths equal.
_ORIGIN = r"https?://[a-z0-9.\-]+(?::[1-9][0-9]*)?"
# one pass: is the URL already normal, and what are its host and port
_NORMAL = r"^https?://(?P<host>[a-z0-9.\-]+)(?P<port>:[1-9][0-9]*)?/[\x21\x22\x24-\x7e]*$"
_HINT = (r"(?i)(/manifest(\.json)?|/info\.json|/None"
         r"|/(default|color|colour|gray|grey|bitonal|native)\.[a-z0-9]+)(\?|$)")
_RENDERING = (
    rf"^(?P<origin>{_ORIGIN})(?P<base>/[^?]+)"
    r"/(?P<region>(?i:full|square|\d+,\d+,\d+,\d+|pct:[\d.]+,[\d.]+,[\d.]+,[\d.]+))"
    r"/(?P<size>(?i:\^?(?:full|max|pct:[\d.]+|!?\d+,\d*|!?,\d+)|res:\d+))"
    r"/(?i:!?\d+(?:\.\d+)?)"
    r"/(?i:default|color|colour|gray|grey|bitonal|native)\.[A-Za-z0-9]+$"
)
_RESOLVABLE = (rf"^(?P<origin>{_ORIGIN})(?P<base>/[^?]+)"
               r"/(?P<what>(?i:manifest|manifest\.json|info\.json))$")
_FMT_HTML = r"^(text/html|application/xhtml)"
_FMT_NOT_IMAGE = r"^(audio/|video/|text/|model/|application/pdf)"


@dataclass
class Grouped:
    """A chunk's distinct images plus what was skipped and why."""

    images: pa.Table  # gbif_id, image_no, host_local, attribution_id, image_key, urls
    hosts: list[str]  # host_local -> host name (this chunk only)
    # distinct (attribution_id, license, rights_holder, creator, publisher or None)
    attributions: list[tuple]
    rows_ok: int  # rows that contributed a candidate (including merged duplicates)
    skips: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[str]] = field(default_factory=dict)


def _count(mask: pa.ChunkedArray | pa.Array) -> int:
    return int(pc.sum(pc.cast(mask, pa.int64())).as_py() or 0)


Canonical = tuple[pa.Array, pa.Array, pa.Array, np.ndarray, np.ndarray, pa.Array]


def canonicalise(ident: pa.Array) -> Canonical:
    """Vectorised keys.parse_identifier over a string array.

    Returns (url, key, host, kind, size, reason) where reason is "" for usable
    rows and a keys.SKIP_* string otherwise.
    """
    n = len(ident)
    parts = pc.extract_regex(ident, _NORMAL)
    port = pc.struct_field(parts, "port")
    normal = pc.and_(pc.is_valid(parts),
                     pc.invert(pc.is_in(port, pa.array([":80", ":443"])).fill_null(False)))
    hinted = pc.and_(normal, pc.match_substring_regex(ident, _HINT)).to_numpy(zero_copy_only=False)
    normal_np = normal.to_numpy(zero_copy_only=False)
    key = ident
    host = pc.struct_field(parts, "host")
    kind = np.zeros(n, dtype=np.int8)
    size = np.zeros(n, dtype=np.int64)
    python_rows = ~normal_np
    hint_idx = np.flatnonzero(hinted)
    if len(hint_idx):
        sub = ident.take(pa.array(hint_idx))
        new_keys: list[str | None] = [None] * len(hint_idx)
        r = pc.extract_regex(sub, _RENDERING)
        r_ok = pc.is_valid(r).to_numpy(zero_copy_only=False)
        if r_ok.any():
            j = np.flatnonzero(r_ok)
            rj = r.take(pa.array(j))
            origin = pc.struct_field(rj, "origin").to_pylist()
            base = pc.struct_field(rj, "base").to_pylist()
            region = pc.struct_field(rj, "region").to_pylist()
            sz = pc.struct_field(rj, "size").to_pylist()
            for t, o, b, rg, z in zip(j, origin, base, region, sz, strict=False):
                new_keys[t] = o + b
                size[hint_idx[t]] = _size_cached(rg, z)
        m = pc.extract_regex(sub, _RESOLVABLE)
        m_ok = pc.is_valid(m).to_numpy(zero_copy_only=False) & ~r_ok
        if m_ok.any():
            j = np.flatnonzero(m_ok)
            mj = m.take(pa.array(j))
            what = pc.struct_field(mj, "what").to_pylist()
            for t, o, b, w in zip(j, pc.struct_field(mj, "origin").to_pylist(),
                                  pc.struct_field(mj, "base").to_pylist(), what, strict=False):
                new_keys[t] = o + b
                info = w.lower() == "info.json"
                kind[hint_idx[t]] = keys.KIND_INFO if info else keys.KIND_MANIFEST
                size[hint_idx[t]] = keys.SIZE_FULL
        missed = ~(r_ok | m_ok)
        python_rows[hint_idx[missed]] = True
        done = np.flatnonzero(~missed)
        if len(done):
            key = _scatter(key, hint_idx[done], [new_keys[t] for t in done])
    url = ident
    reason = pa.nulls(n, pa.string()).fill_null("") if n else pa.array([], pa.string())
    slow_idx = np.flatnonzero(python_rows)
    if len(slow_idx):
        s_url, s_key, s_host, s_reason = [], [], [], []
        for i, raw in zip(slow_idx, ident.take(pa.array(slow_idx)).to_pylist(), strict=False):
            c = keys.parse_identifier(raw)
            if isinstance(c, keys.Candidate):
                s_url.append(c.url)
                s_key.append(c.key)
                s_host.append(c.host)
                s_reason.append("")
                kind[i] = c.kind
                size[i] = c.size
            else:
                s_url.append("")
                s_key.append("")
                s_host.append("")
                s_reason.append(c)
        url = _scatter(url, slow_idx, s_url)
        key = _scatter(key, slow_idx, s_key)
        host = _scatter(host, slow_idx, s_host)
        reason = _scatter(reason, slow_idx, s_reason)
    return url, key, host, kind, size, reason


_SIZE_CACHE: dict[tuple[str, str], int] = {}


def _size_cached(region: str, size: str) -> int:
    k = (region, size)
    v = _SIZE_CACHE.get(k)
    if v is None:
        if len(_SIZE_CACHE) > 100_000:
            _SIZE_CACHE.clear()
        v = _SIZE_CACHE[k] = keys.rendering_size(region, size)
    return v


def _scatter(base: pa.Array, idx: np.ndarray, values: list[str]) -> pa.Array:
    """base with base[idx[j]] = values[j]."""
    mask = np.zeros(len(base), dtype=bool)
    mask[idx] = True
    filled = pc.replace_with_mask(base.cast(pa.string()), pa.array(mask),
                                  pa.array(values, pa.string()))
    return filled


def _mask(arr: pa.Array) -> np.ndarray:
    return arr.to_numpy(zero_copy_only=False)


def _matches(col: pa.ChunkedArray, test) -> np.ndarray:
    """test(lower-cased, trimmed values) per row, computed once per distinct value
    (type and format columns hold a handful of values)."""
    enc = pc.dictionary_encode(col.combine_chunks())
    values = pc.utf8_lower(pc.utf8_trim_whitespace(enc.dictionary))
    return _mask(test(values))[enc.indices.to_numpy(zero_copy_only=False)]


def group_chunk(table: pa.Table) -> Grouped:
    """Validate, canonicalise and group one chunk of whole gbifID runs."""
    table = table.combine_chunks()
    n = table.num_rows
    skips: dict[str, int] = {}
    samples: dict[str, list[str]] = {}
    ok = np.ones(n, dtype=bool)

    def drop(hit: np.ndarray, name: str) -> None:
        """Skip rows `hit` (not already skipped) for reason `name`."""
        hit = hit & ok
        c = int(hit.sum())
        if c:
            skips[name] = skips.get(name, 0) + c
            first = pa.array(np.flatnonzero(hit)[:3])
            gids = table["gbifID"].take(first).to_pylist()
            idents = table["identifier"].take(first).to_pylist()
            samples.setdefault(name, []).extend(
                f"{g}\t{i}"[:200] for g, i in zip(gids, idents, strict=True))
            ok[hit] = False

    gid_text = pc.utf8_trim_whitespace(table["gbifID"].combine_chunks())
    gid_len = _mask(pc.utf8_length(gid_text))
    drop(~_mask(pc.ascii_is_decimal(gid_text)) | (gid_len == 0) | (gid_len > 18), SKIP_GBIF)
    drop(_matches(table["type"], lambda v: pc.equal(v, "sound")), SKIP_SOUND)
    drop(_matches(table["type"], lambda v: pc.equal(v, "movingimage")), SKIP_MOVING)
    drop(_matches(table["format"], lambda v: pc.match_substring_regex(v, _FMT_HTML)), SKIP_HTML)
    drop(_matches(table["format"], lambda v: pc.match_substring_regex(v, _FMT_NOT_IMAGE)),
         SKIP_NOT_IMAGE)
    ident = table["identifier"].combine_chunks()
    drop(_mask(pc.utf8_length(ident)) > MAX_IDENTIFIER, SKIP_OVERLONG)

    url, key, host, kind, size, why = canonicalise(ident)
    why_np = _mask(why)
    for name in np.unique(why_np[ok & (why_np != "")]):
        drop(why_np == name, str(name))
    keep = pa.array(np.flatnonzero(ok))
    sub = table.take(keep)
    images, hosts, attributions = _group(sub, url.take(keep), key.take(keep), host.take(keep),
                                         kind[ok], size[ok])
    return Grouped(images, hosts, attributions, sub.num_rows, skips, samples)


def _group(sub: pa.Table, url: pa.Array, key: pa.Array, host: pa.Array,
           kind: np.ndarray, size: np.ndarray) -> tuple[pa.Table, list[str], list[tuple]]:
    m = sub.num_rows
    if m == 0:
        return _empty_images()
    gid = pc.cast(pc.utf8_trim_whitespace(sub["gbifID"].combine_chunks()), pa.int64()).to_numpy()
    # Runs of one gbifID (the chunker guarantees a run never spans chunks).
    new_run = np.empty(m, dtype=bool)
    new_run[0] = True
    np.not_equal(gid[1:], gid[:-1], out=new_run[1:])
    run = np.cumsum(new_run) - 1
    key_code = pc.dictionary_encode(key).indices.to_numpy().astype(np.int64)
    url_code = pc.dictionary_encode(url).indices.to_numpy().astype(np.int64)
    np.arange(m, dtype=np.int64)

    # Image = (run, key); number images by first appearance.
    img_pair = run * (int(key_code.max()) + 1) + key_code
    _, first_row, img_of_row = np.unique(img_pair, return_index=True, return_inverse=True)
    order_imgs = np.argsort(first_row, kind="stable")
    rank_of_img = np.empty_like(order_imgs)
    rank_of_img[order_imgs] = np.arange(len(order_imgs))
    img = rank_of_img[img_of_row]  # image index in file order
    n_img = len(order_imgs)
    img_first = first_row[order_imgs]
    img_run = run[img_first]
    run_start_img = np.flatnonzero(np.r_[True, img_run[1:] != img_run[:-1]])
    image_no = np.arange(n_img) - np.repeat(run_start_img, np.diff(np.r_[run_start_img, n_img]))

    # Candidates: drop repeated URLs within an image, then rank best first.
    cand_pair = img * (int(url_code.max()) + 1) + url_code
    _, keep_rows = np.unique(cand_pair, return_index=True)
    keep_rows.sort()
    k_img = img[keep_rows]
    sort = np.lexsort((keep_rows, kind[keep_rows], -size[keep_rows], k_img))
    cand_rows = keep_rows[sort]
    cand_img = k_img[sort]
    offsets = np.r_[0, np.cumsum(np.bincount(cand_img, minlength=n_img))].astype(np.int32)
    best_row = cand_rows[offsets[:-1]]

    lists = pa.ListArray.from_arrays(pa.array(offsets), url.take(pa.array(cand_rows)))
    urls = pc.binary_join(lists, "\n")
    best = pa.array(best_row)
    hosts = pc.dictionary_encode(host.take(best))
    attribution_id, attributions = _attributions(sub, best)
    return pa.table({
        "gbif_id": pa.array(gid[best_row]),
        "image_no": pa.array(image_no),
        "host_local": hosts.indices,
        "attribution_id": attribution_id,
        "image_key": key.take(best),
        "urls": urls,
    }), hosts.dictionary.to_pylist(), attributions


def _attributions(sub: pa.Table, best: pa.Array) -> tuple[pa.Array, list[tuple]]:
    """Attribution id per image (NULL when all four fields are empty) and the
    chunk's distinct (id, license, rights_holder, creator, publisher) rows.

    The id hashes "license\x1frights_holder\x1fcreator", plus "\x1fpublisher" only
    when there is a publisher: rows without one keep the ids they had before the
    publisher was stored, so an ingest resumed across the upgrade stays consistent.
    """
    # U+001F separates the fields; a stray one inside a field becomes a space.
    cols = [pc.replace_substring(
                pc.utf8_slice_codeunits(pc.utf8_trim_whitespace(sub[c].combine_chunks().take(best)),
                                        0, MAX_ATTRIBUTION), "\x1f", " ")
            for c in ATTRIBUTION_COLUMNS]
    joined = pc.binary_join_element_wise(*cols, "\x1f")
    enc = pc.dictionary_encode(joined)
    uniq = enc.dictionary.to_pylist()
    ids = np.empty(len(uniq), dtype=np.int64)
    valid = np.ones(len(uniq), dtype=bool)
    rows = []
    for j, text in enumerate(uniq):
        if text == "\x1f\x1f\x1f":
            valid[j] = False
            ids[j] = 0
            continue
        lic, rh, cr, pub = text.split("\x1f")
        ids[j] = keys.attribution_id(text if pub else text[:-1])
        rows.append((int(ids[j]), lic, rh, cr, pub or None))
    idx = enc.indices.to_numpy()
    return pa.array(ids[idx], pa.int64(), mask=~valid[idx]), rows


def _empty_images() -> tuple[pa.Table, list[str], list[tuple]]:
    return pa.table({
        "gbif_id": pa.array([], pa.int64()), "image_no": pa.array([], pa.int64()),
        "host_local": pa.array([], pa.int32()), "attribution_id": pa.array([], pa.int64()),
        "image_key": pa.array([], pa.string()), "urls": pa.array([], pa.string()),
    }), [], []
