"""Status report as one self-contained HTML page with inline SVG charts (no network to view)."""

from __future__ import annotations

from html import escape

from ..progress import fmt_secs, human_bytes
from .text import when

COLORS = {"success": "#2e7d32", "done": "#2e7d32", "pending": "#9e9e9e", "partial": "#f9a825",
          "failed_transient": "#ef6c00", "failed_permanent": "#c62828", "failed": "#c62828"}
_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222;
background:#fff}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:6px 0}td,th{padding:2px 10px;text-align:right}
td:first-child,th:first-child{text-align:left}tr:nth-child(even){background:#f6f6f6}
.banner{padding:12px 16px;border-radius:6px;font-weight:600;font-size:16px}
.ok{background:#e8f5e9}.run{background:#e3f2fd}.bad{background:#ffebee;color:#b71c1c}
.sample{font-family:monospace;font-size:12px;color:#555;white-space:pre-wrap}
.grid{display:flex;flex-wrap:wrap;gap:24px}.muted{color:#777}
#stages td:last-child,#stages th:last-child{text-align:left}
"""


def _e(v: object) -> str:
    return escape(str(v), quote=True)


def _table(head: list[str], rows: list[list[object]]) -> str:
    if not rows:
        return "<p class=muted>none</p>"
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _stacked(title: str, by: dict[str, int], width: int = 520) -> str:
    """One horizontal bar split by status, with a legend."""
    total = sum(by.values()) or 1
    x, lx, parts, legend = 0.0, 0.0, [], []
    for k, v in by.items():
        w = width * v / total
        color = COLORS.get(k, "#607d8b")
        label = f"{k} {v:,}"
        parts.append(f'<rect x="{x:.2f}" y="22" width="{w:.2f}" height="26" fill="{color}">'
                     f"<title>{_e(label)}</title></rect>")
        legend.append(f'<rect x="{lx:.0f}" y="56" width="10" height="10" fill="{color}"/>'
                      f'<text x="{lx + 14:.0f}" y="65" font-size="11">{_e(label)}</text>')
        x += w
        lx += 24 + 6.5 * len(label)  # about the width of 11px text
    return (f'<svg role="img" aria-label="{_e(title)}" width="{max(width, lx):.0f}" '
            f'height="72"><text x="0" y="14" font-size="13" font-weight="600">{_e(title)}</text>'
            + "".join(parts) + "".join(legend) + "</svg>")


def _hbars(title: str, rows: list[tuple[str, int, int]], width: int = 520) -> str:
    """Horizontal bars: (label, value, second value shown stacked, e.g. failed/success)."""
    if not rows:
        return f"<p class=muted>{_e(title)}: none</p>"
    top = max(a + b for _, a, b in rows) or 1
    h = 18
    # the label column fits the longest label (host names are never cut)
    x0 = max(220, round(max(len(label) for label, _, _ in rows) * 6.6) + 12)
    span = width - 230
    items = []
    for i, (label, a, b) in enumerate(rows):
        y = 22 + i * (h + 4)
        wa, wb = span * a / top, span * b / top
        items.append(
            f'<text x="0" y="{y + 13}" font-size="11">{_e(label)}</text>'
            f'<rect x="{x0}" y="{y}" width="{wa:.2f}" height="{h}" fill="#c62828">'
            f"<title>{_e(label)}: {a:,}</title></rect>"
            f'<rect x="{x0 + wa:.2f}" y="{y}" width="{wb:.2f}" height="{h}" fill="#2e7d32">'
            f"<title>{_e(label)}: {b:,}</title></rect>"
            f'<text x="{x0 + 4 + wa + wb:.2f}" y="{y + 13}" font-size="11">{a:,}</text>')
    height = 30 + len(rows) * (h + 4)
    return (f'<svg role="img" aria-label="{_e(title)}" width="{x0 + span + 70}" '
            f'height="{height}">'
            f'<text x="0" y="14" font-size="13" font-weight="600">{_e(title)}</text>'
            + "".join(items) + "</svg>")


MIN_HOURS = 12  # the chart spans at least this many hours, so a first hour is one column


def _timeline(history: list[dict], width: int = 1000, height: int = 200) -> str:
    """Saved and failed images per hour, as columns."""
    if not history:
        return "<p class=muted>no finished attempts in the last 14 days</p>"
    start, end = history[0]["hour"], history[-1]["hour"]
    start = min(start, end - (MIN_HOURS - 1) * 3600)
    n = int((end - start) // 3600) + 1
    bw = max(width / n, 1.0)
    top = max(r["successes"] + r["failures"] for r in history) or 1
    cols = []
    for r in history:
        x = (r["hour"] - start) / 3600 * bw
        hs = (height - 30) * r["successes"] / top
        hf = (height - 30) * r["failures"] / top
        tip = f"{when(r['hour'])}: {r['successes']:,} saved, {r['failures']:,} failed"
        cols.append(f'<g><title>{_e(tip)}</title>'
                    f'<rect x="{x:.2f}" y="{height - 20 - hs:.2f}" width="{bw:.2f}" '
                    f'height="{hs:.2f}" fill="#2e7d32"/>'
                    f'<rect x="{x:.2f}" y="{height - 20 - hs - hf:.2f}" width="{bw:.2f}" '
                    f'height="{hf:.2f}" fill="#c62828"/></g>')
    # labels at the edges of the hours shown: the start of the first, the end of the last
    axis = (f'<text x="0" y="{height - 4}" font-size="11">{_e(when(start))}</text>'
            f'<text x="{width}" y="{height - 4}" font-size="11" text-anchor="end">'
            f'{_e(when(end + 3600))}</text>'
            f'<text x="0" y="12" font-size="11">{top:,} per hour</text>')
    return (f'<svg role="img" aria-label="images per hour" width="{width}" height="{height}">'
            + "".join(cols) + axis + "</svg>")


def _identity(ident: dict) -> str:
    s = ident["dedupe"]
    rows = [["requests saved (one fetch per shared URL)", f"{ident['requests_saved']:,}"]]
    if s is not None:
        rows[:0] = [["exact duplicate groups (same sha256)",
                     f"{s['exact_groups']:,} ({s['exact_images']:,} images)"],
                    [f"near-copy groups (pHash within {s['near_distance']} bits, or an "
                     "edge across a crop)",
                     f"{s['near_groups']:,} ({s['near_images']:,} images)"
                     + (f", {s['crop_links']:,} pairs only across a crop"
                        if "crop_links" in s else "")]]
    else:
        rows.insert(0, ["duplicate groups", "not computed yet (gbif-download-db dedupe)"])
    found = "".join(
        f"<p><b>{_e(p['host'])}</b> {p['images']:,} images, sha256 "
        f"<span class=sample>{_e(p['sha256'])}</span> · example {_e(p['example'] or '')}<br>"
        + (f"<img alt='placeholder example' src='{_e(p['example_thumb'])}'>"
           if p.get("example_thumb") else "") + "</p>"
        for p in ident["placeholders"]) or "<p class=muted>no placeholders found</p>"
    return _table(["", ""], rows) + "<h3>Placeholders by host</h3>" + found


def _pipeline(p: dict) -> str:
    """Each stage's last run; a stage not run because a prerequisite failed, in red."""
    rows = "".join(
        f"<tr{' class=bad' if r['state'] in ('failed', 'prerequisite_failed', 'crashed') else ''}>"
        + "".join(f"<td>{_e(c)}</td>" for c in (
            r["stage"], r["run_id"], r["state"], r["hostname"] or "", when(r["started_at"]),
            when(r["finished_at"]),
            "-" if r["duration_seconds"] is None else fmt_secs(r["duration_seconds"]),
            r.get("depends_on") or "-", (r["message"] or "")[:300]))
        + "</tr>" for r in p["stages"])
    head = "".join(f"<th>{h}</th>" for h in ("stage", "run", "outcome", "host", "started",
                                             "ended", "took", "depends on", "message"))
    blocked = (f"<p class='banner bad'>Not run because a stage they depend on failed: "
               f"{_e(', '.join(p['prerequisite_failed']))}</p>"
               if p["prerequisite_failed"] else "")
    return (f"<table id=stages><tr>{head}</tr>{rows}</table>{blocked}" if rows
            else "<p class=muted>no runs yet</p>")


def render_html(d: dict) -> str:
    p, g, im, t = d["pipeline"], d["gbif_ids"], d["images"], d["throughput"]
    klass = {"running": "run", "idle": "ok", "empty": "ok"}.get(p["state"], "bad")
    eta = ("unknown" if t["eta_seconds"] is None else "nothing left" if t["eta_seconds"] == 0
           else f"{fmt_secs(t['eta_seconds'])} at the {t['eta_basis']}'s rate")
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width,initial-scale=1'>",
        f"<title>GBIF image download status {_e(when(d['generated_at']))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>GBIF image download status</h1><p class=muted>{_e(when(d['generated_at']))} · "
        f"{_e(d['db'])}</p>",
        f"<div class='banner {klass}' id=pipeline>{_e(p['headline'])}</div>",
        _pipeline(p),
        "<h2>Progress</h2><div class=grid>",
        _stacked(f"gbifIDs ({g['total']:,})", g["by_status"]),
        _stacked(f"distinct images ({im['total']:,})", im["by_status"]),
        "</div>",
        _table(["images", "count"], [
            ["work left (pending + retryable)", f"{im['work_left']:,}"],
            ["in flight now", f"{im['in_flight']:,}"],
            ["retry budget exhausted", f"{im['budget_exhausted']:,}"],
            ["raw files awaiting conversion", f"{im['raw_unprocessed']:,}"],
            ["legacy imports, unverified", f"{im['legacy_unverified']:,}"],
            ["saved from GBIF's image cache", f"{im.get('from_gbif_cache', 0):,}"],
            ["not in GBIF's image cache either", f"{im.get('not_in_gbif_cache', 0):,}"],
            ["saved", human_bytes(im["bytes_saved"])]]),
        "<h2>Throughput</h2>",
        _table(["window", "saved", "failed", "images/hour", "bytes"],
               [[k, f"{w['successes']:,}", f"{w['failures']:,}",
                 f"{w['successes_per_hour']:,.0f}", human_bytes(w["bytes"])]
                for k, w in (("last hour", t["last_hour"]), ("last day", t["last_day"]))]),
        f"<p>ETA: {_e(eta)}</p>",
        (f"<p>{d['requests']['requests']:,} requests for {d['requests']['saved']:,} saved "
         f"images ({d['requests']['requests'] / d['requests']['saved']:.2f} per saved image)"
         "</p>") if d.get("requests", {}).get("saved") else "",
        "<h2>Progress over time (saved green, failed red, per hour)</h2>",
        _timeline(d["history"]),
        "<h2>Identity: duplicates and placeholders</h2>",
        _identity(d["identity"]),
        "<h2>Failures by type</h2>",
        _hbars("failed images by error type",
               [(f"{f['error_type']} ({'retryable' if f['retryable'] else 'permanent'})",
                 f["count"], 0) for f in d["failures"][:20]]),
        "<h2>Retry attempts (failed_transient)</h2>",
        _table(["attempts", "images", ""], [[r["attempts"], f"{r['count']:,}",
                "budget exhausted" if r["budget_exhausted"] else ""] for r in d["retries"]]),
        "<h2>Top failing hosts (failed red, success green)</h2>",
        _hbars("top failing hosts", [(h["host"], h["failed"], h["success"])
                                     for h in d["top_failing_hosts"]]),
        _table(["host", "failed", "success", "failure rate", "work left"],
               [[h["host"], f"{h['failed']:,}", f"{h['success']:,}",
                 f"{h['failure_rate'] * 100:.1f}%", f"{h['work_left']:,}"]
                for h in d["top_failing_hosts"]]),
        "<h2>Non-image responses by host</h2>",
        "".join(f"<p><b>{_e(h['host'])}</b> {h['count']:,}<br><span class=sample>"
                f"{_e(h['sample'])}</span></p>" for h in d["non_image_by_host"])
        or "<p class=muted>none</p>",
        "<h2>Hosts cooling down / breaker open</h2>",
        _table(["host", "until", "reason", "breaker"],
               [[h["host"], when(h["until"]), h["reason"] or "", h["breaker"]]
                for h in d["hosts_cooling_down"]]),
        "<h2>Adaptive limits</h2>",
        _table(["host", "at once", "set", "work left"],
               [[h["host"], str(h["limit"]), when(h["set_at"]), f"{h['work_left']:,}"]
                for h in d.get("host_limits", [])]),
        "<h2>Quarantined hosts</h2>",
        _table(["host", "since", "failed", "success", "work left"],
               [[h["host"], when(h["since"]), f"{h['failed']:,}", f"{h['success']:,}",
                 f"{h['work_left']:,}"] for h in d["hosts_quarantined"]]),
        "<h2>Notes</h2><dl>",
        "".join(f"<dt><b>{_e(k)}</b></dt><dd>{_e(v)}</dd>" for k, v in d["notes"].items()),
        "</dl></body></html>",
    ]
    return "\n".join(parts)
