"""Throughput and ETA from the per-minute activity counters (pure: counters in, figures out)."""

from __future__ import annotations


def throughput(activity: dict[int, list[int]], now: float, work_left: int) -> dict:
    """Saved images per hour over the last hour and day, and the ETA at that pace. A
    window's rate divides by the time it covers (from its first activity to now, at least
    a minute), so a run that began two hours ago is not averaged over 24. The ETA counts
    saved images: attempts that fail do not bring the end nearer."""
    def window(seconds: int) -> dict:
        since = int((now - seconds) // 60)
        a = s = f = b = 0
        first = None
        for minute, (a1, s1, f1, b1) in activity.items():
            if minute >= since:
                a, s, f, b = a + a1, s + s1, f + f1, b + b1
                first = minute if first is None else min(first, minute)
        covered = min(max(now - first * 60, 60.0), seconds) if first is not None else seconds
        hours = covered / 3600
        return {"attempts": a, "successes": s, "failures": f, "bytes": b,
                "covered_seconds": round(covered),
                "successes_per_hour": round(s / hours, 1),
                "attempts_per_hour": round(a / hours, 1)}
    hour, day = window(3600), window(86400)
    basis = "last hour" if hour["successes"] else "last day" if day["successes"] else None
    rate = (hour if hour["successes"] else day)["successes_per_hour"]
    eta = round(work_left / rate * 3600) if rate and work_left else (0 if not work_left else None)
    return {"last_hour": hour, "last_day": day, "eta_seconds": eta, "eta_basis": basis}


def history(activity: dict[int, list[int]]) -> list[dict]:
    """Hourly finished attempts (for the chart)."""
    hours: dict[int, list[int]] = {}
    for minute, vals in activity.items():
        acc = hours.setdefault(minute // 60, [0, 0, 0, 0])
        for i, v in enumerate(vals):
            acc[i] += v
    return [{"hour": h * 3600, "attempts": a, "successes": s, "failures": f, "bytes": b}
            for h, (a, s, f, b) in sorted(hours.items())]
