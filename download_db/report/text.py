"""Status report as plain text: the report dict in, the lines a person reads out."""

from __future__ import annotations

import time

from ..progress import fmt_secs, human_bytes


def when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _section(out: list[str], title: str) -> None:
    out += ["", title, "-" * len(title)]


def _counts(out: list[str], by: dict[str, int], pct: dict[str, float], total: int) -> None:
    for k, v in by.items():
        out.append(f"  {k:<20} {v:>14,}  {pct[k]:6.2f}%")
    out.append(f"  {'total':<20} {total:>14,}")


def _identity(out: list[str], ident: dict) -> None:
    _section(out, "IDENTITY (gbif-download-db dedupe, finalize)")
    s = ident["dedupe"]
    if s is None:
        out.append("  duplicate groups: not computed yet (gbif-download-db dedupe)")
    else:
        out.append(f"  exact duplicates (same sha256): {s['exact_groups']:,} groups, "
                   f"{s['exact_images']:,} images")
        out.append(f"  near copies (pHash within {s['near_distance']} bits, or an edge "
                   f"across a crop): {s['near_groups']:,} groups, {s['near_images']:,} images"
                   + _crops(s) + f"  (as of {when(s.get('finished_at'))})")
    out.append(f"  requests saved (one fetch per shared URL): {ident['requests_saved']:,}")
    if not ident["placeholders"]:
        out.append("  placeholders: none found")
    for p in ident["placeholders"]:
        out.append(f"  placeholder on {p['host']}: {p['images']:,} images, sha256 "
                   f"{p['sha256'][:16]}..., example {p['example'] or '(none)'}")


LOUD = ("crashed", "no heartbeat", "failed", "prerequisite_failed")


def _pipeline(out: list[str], p: dict) -> None:
    """The verdict, runs alive now, then each stage's last run with its message."""
    _section(out, "PIPELINE")
    banner = "!" * 3 if p["state"] in LOUD else ">" * 3
    out.append(f"  {banner} {p['headline']}")
    for r in p["running"]:
        out.append(f"      run {r['run_id']} {r['stage']} on {r['hostname']} pid {r['pid']}, "
                   f"started {when(r['started_at'])}, last heartbeat {when(r['heartbeat_at'])}")
    if p["stages"]:
        out.append(f"  {'stage':<10} {'run':>5}  {'outcome':<19} {'started':<19}  "
                   f"{'ended':<19}  {'took':>8}  depends on")
    for r in p["stages"]:
        took = "-" if r["duration_seconds"] is None else fmt_secs(r["duration_seconds"])
        name = f"{r['stage']} {r['shard']}" if r.get("shard") and r.get("unmerged") \
            else r["stage"]
        out.append(f"  {name:<10} {r['run_id']:>5}  {r['state']:<19} {when(r['started_at']):<19}"
                   f"  {when(r['finished_at']):<19}  {took:>8}  {r.get('depends_on') or '-'}")
        if r["message"] and r["state"] != "ok":
            out.append(f"      {r['message'][:300]}")
    if p["prerequisite_failed"]:
        out.append(f"  !!! not run because a stage they depend on failed: "
                   f"{', '.join(p['prerequisite_failed'])}")


def render_text(d: dict) -> str:
    out: list[str] = [f"GBIF image download status  {when(d['generated_at'])}",
                      f"database: {d['db']}"]
    _pipeline(out, d["pipeline"])

    g = d["gbif_ids"]
    _section(out, "GBIFID PROGRESS")
    _counts(out, g["by_status"], g["percent"], g["total"])
    out.append(f"  still in the work queue (pending + partial): {g['in_queue']:,}")

    im = d["images"]
    _section(out, "DISTINCT-IMAGE PROGRESS")
    _counts(out, im["by_status"], im["percent"], im["total"])
    out.append(f"  work left (pending + retryable): {im['work_left']:,}   in flight now: "
               f"{im['in_flight']:,}   budget exhausted: {im['budget_exhausted']:,}")
    out.append(f"  raw files awaiting conversion (raw_unprocessed): {im['raw_unprocessed']:,}")
    out.append(f"  legacy imports, unverified (legacy_unverified_index): "
               f"{im['legacy_unverified']:,}")
    out.append(f"  saved: {human_bytes(im['bytes_saved'])}")
    if im.get("from_gbif_cache") or im.get("not_in_gbif_cache"):
        out.append(f"  from GBIF's image cache: {im['from_gbif_cache']:,} saved (at most 1200 "
                   f"px), {im['not_in_gbif_cache']:,} permanent failures it had no copy of")
    v = d["verify"]
    if v["any_never_checked"]:
        out.append("  verified: some saved files never (gbif-download-db verify)")
    elif v["oldest_check"] is not None:
        out.append(f"  verified: every saved file since {when(v['oldest_check'])}")

    t = d["throughput"]
    _section(out, "THROUGHPUT")
    for label, w, full in (("last hour", t["last_hour"], 3600), ("last day", t["last_day"], 86400)):
        span = w.get("covered_seconds", full)
        over = f"  (over {fmt_secs(span)})" if span < full else ""
        out.append(f"  {label:<10} {w['successes']:>10,} saved  {w['failures']:>9,} failed  "
                   f"{w['successes_per_hour']:>12,.0f} images/hour  {human_bytes(w['bytes'])}"
                   f"{over}")
    if t["eta_seconds"] is None:
        out.append("  ETA: unknown (nothing saved in the last day)")
    elif t["eta_seconds"] == 0:
        out.append("  ETA: nothing left to do")
    else:
        out.append(f"  ETA: {fmt_secs(t['eta_seconds'])} for {im['work_left']:,} images at the "
                   f"{t['eta_basis']}'s rate")
    rq = d.get("requests") or {}
    if rq.get("saved"):
        out.append(f"  requests: {rq['requests']:,} for {rq['saved']:,} saved images "
                   f"({rq['requests'] / rq['saved']:.2f} per saved image, all finished runs)")

    _identity(out, d["identity"])

    _section(out, "FAILURES BY TYPE")
    if not d["failures"]:
        out.append("  none")
    for f in d["failures"]:
        verdict = "retryable" if f["retryable"] else "permanent"
        out.append(f"  {f['error_type']:<24} {f['status']:<17} {f['count']:>12,}  {verdict}")

    _section(out, "RETRY ATTEMPTS (failed_transient)")
    if not d["retries"]:
        out.append("  none")
    for r in d["retries"]:
        tag = "  budget exhausted" if r["budget_exhausted"] else ""
        out.append(f"  {r['attempts']:>3} attempt(s) {r['count']:>12,}{tag}")

    _section(out, "NON-IMAGE RESPONSES BY HOST")
    if not d["non_image_by_host"]:
        out.append("  none")
    for h in d["non_image_by_host"]:
        out.append(f"  {h['host']:<40} {h['count']:>10,}")
        if h["sample"]:
            out.append(f"      e.g. {h['sample'][:150]!r}")

    _section(out, "TOP FAILING HOSTS")
    if not d["top_failing_hosts"]:
        out.append("  none")
    else:
        out.append(f"  {'host':<40} {'failed':>10} {'success':>10} {'rate':>7} {'left':>9}")
    for h in d["top_failing_hosts"]:
        out.append(f"  {h['host'][:40]:<40} {h['failed']:>10,} {h['success']:>10,} "
                   f"{h['failure_rate'] * 100:6.1f}% {h['work_left']:>9,}")

    _section(out, "HOSTS COOLING DOWN / BREAKER OPEN")
    if not d["hosts_cooling_down"]:
        out.append("  none")
    for h in d["hosts_cooling_down"]:
        out.append(f"  {h['host']:<40} until {when(h['until'])}  {h['reason'] or ''}  "
                   f"breaker {h['breaker']}")

    _section(out, "ADAPTIVE LIMITS (requests at once, as last set)")
    if not d.get("host_limits"):
        out.append("  none")
    for h in d.get("host_limits", []):
        out.append(f"  {h['host'][:40]:<40} {h['limit']:>4} at once  set {when(h['set_at'])}"
                   f"  work left {h['work_left']:,}")

    _section(out, "QUARANTINED HOSTS (deprioritised, never failed)")
    if not d["hosts_quarantined"]:
        out.append("  none")
    for h in d["hosts_quarantined"]:
        out.append(f"  {h['host']:<40} since {when(h['since'])}  failed {h['failed']:,}  "
                   f"success {h['success']:,}  work left {h['work_left']:,}")

    _section(out, "NOTES")
    for k, v in d["notes"].items():
        out.append(f"  {k}: {v}")
    return "\n".join(out) + "\n"


def _crops(stats: dict) -> str:
    """The crop links of a dedupe that counted them (stats from before did not)."""
    n = stats.get("crop_links")
    return "" if n is None else f", {n:,} pairs matched only across a crop"
