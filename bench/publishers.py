#!/usr/bin/env python3
"""Fitting each publisher: adaptive vs fixed per-host limits on a loopback population of hosts.

Twelve hosts on 127.0.0.2 ... 127.0.0.13 (one server process, asyncio), image counts Zipf-skewed,
each with a hidden capacity: `cap` requests at once at its base latency (20-300 ms), slower with
its queue beyond that (latency x in-flight / cap), 503 + Retry-After: 1 past `fail` at once. One
host is fragile (fails past 3 at once), the biggest is strong (30 at once). Every image is
fetched with --keep-original (tiny JPEGs), so the network model, not the CPU, is measured.

Prints per configuration, in the same run: makespan, the oracle bound (each host at its
capacity: max over hosts of images x base latency / cap; and with fewer threads than the hosts
can take, at least all images x base latency / threads), makespan / bound, 503s as a fraction
of all requests, and the most requests any host had at once against what the policy allows.

  .venv/bin/python bench/publishers.py [--images 1500] [--configs adaptive,fixed,fixed16]
  .venv/bin/python bench/publishers.py --configs adaptive --threads 8   # threads scarce
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing as mp
import random
import tempfile
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

HOSTS = 12
PORT = 8931
HEADER = ["gbifID", "type", "format", "identifier", "license"]


@dataclass
class Host:
    ip: str
    images: int
    base: float  # seconds per request at or below cap
    cap: int  # requests at once it serves at its base latency
    fail: int  # more than this at once: 503
    in_flight: int = 0
    most: int = 0
    requests: int = 0
    overloads: int = 0


def population(total: int, seed: int = 7) -> list[Host]:
    rnd = random.Random(seed)
    weights = [1 / (k + 1) ** 1.1 for k in range(HOSTS)]  # Zipf
    counts = [max(5, round(total * w / sum(weights))) for w in weights]
    hosts = []
    for k, n in enumerate(counts):
        cap = rnd.choice([4, 6, 8, 10, 12])
        hosts.append(Host(f"127.0.0.{k + 2}", n, rnd.uniform(0.02, 0.3), cap, cap * 2))
    hosts[0].cap, hosts[0].fail, hosts[0].base = 30, 60, 0.05  # strong: an S3-like bucket
    hosts[1].cap, hosts[1].fail, hosts[1].base = 2, 3, 0.15  # fragile: falls over past 3
    return hosts


def _jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 140, 60)).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def serve(hosts: list[Host], ready) -> None:
    """The population: one listener per host address, all in this process's event loop."""
    body = _jpeg()

    async def handle(host: Host, reader, writer) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                path = line.split()[1].decode()
                if path.startswith("/__"):
                    if path == "/__reset":
                        for h in hosts:
                            h.most = h.requests = h.overloads = 0
                    out = json.dumps([h.__dict__ for h in hosts]).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(out), out))
                    await writer.drain()
                    continue
                host.requests += 1
                host.in_flight += 1
                host.most = max(host.most, host.in_flight)
                try:
                    if host.in_flight > host.fail:
                        host.overloads += 1
                        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
                                     b"Content-Type: text/plain\r\nContent-Length: 4\r\n\r\nbusy")
                    else:
                        await asyncio.sleep(host.base * max(1.0, host.in_flight / host.cap))
                        # each URL its own bytes (a JPEG comment naming it): one picture
                        # behind many URLs of a host is a placeholder to the downloader
                        tag = path.encode()[:200]
                        own = body[:2] + b"\xff\xfe" + (len(tag) + 2).to_bytes(2, "big") \
                            + tag + body[2:]
                        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n"
                                     b"Content-Length: %d\r\n\r\n%s" % (len(own), own))
                    await writer.drain()
                finally:
                    host.in_flight -= 1
        except (ConnectionError, IndexError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        for h in hosts:
            await asyncio.start_server(lambda r, w, h=h: handle(h, r, w), h.ip, PORT)
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def stats(path: str = "/__stats") -> list[dict]:
    with urllib.request.urlopen(f"http://127.0.0.2:{PORT}{path}", timeout=10) as r:
        return json.loads(r.read())


def write_input(work: Path, hosts: list[Host]) -> Path:
    rows, gid = [], 1_000_000_000
    for h in hosts:
        for i in range(h.images):
            gid += 1
            rows.append([str(gid), "StillImage", "image/jpeg",
                         f"http://{h.ip}:{PORT}/img/{i}.jpg", "CC0"])
    random.Random(1).shuffle(rows)
    path = work / "multimedia.txt"
    path.write_text("\n".join("\t".join(r) for r in [HEADER, *rows]) + "\n", encoding="utf-8")
    return path


def run(config: str, work: Path, mm: Path, hosts: list[Host], threads: int) -> dict:
    from download_db.cli.main import main as cli
    from download_db.config import DownloadConfig
    from download_db.download.stage import run_download

    d = work / config
    d.mkdir()
    db = d / "status.db"
    assert cli(["ingest", "--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
    policy = d / "policy.toml"
    # the strong host is one the shipped policy would know (like *.s3.amazonaws.com)
    policy.write_text(f'[hosts."{hosts[0].ip}"]\nmax_at_once = 64\nadaptive = true\n'
                      "start = 4\n", encoding="utf-8")
    base = DownloadConfig(db=db, install_path=d / "images", threads=threads, keep_original=True,
                          lock_dir=d / "locks", bar=False, progress_every=1e9,
                          user_agent="bench", wait_for_retries=30, max_attempts=20)
    cfg = {"adaptive": replace(base, adaptive=True, host_policy=policy),
           "fixed": base,  # today's defaults: 4 at once, 5 requests/s per host
           "fixed16": replace(base, per_host_concurrency=16, per_host_rate=0.0)}[config]
    stats("/__reset")
    t0 = time.monotonic()
    counts = run_download(cfg, out=io.StringIO())
    makespan = time.monotonic() - t0
    seen = stats()
    allowed = {"adaptive": [64] + [16] * (HOSTS - 1), "fixed": [4] * HOSTS,
               "fixed16": [16] * HOSTS}[config]
    return {"makespan": makespan, "saved": counts.get("success", 0),
            "requests": sum(h["requests"] for h in seen),
            "overloads": sum(h["overloads"] for h in seen),
            "most": [h["most"] for h in seen], "allowed": allowed}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1500, help="images in all (default 1500)")
    ap.add_argument("--configs", default="adaptive,fixed,fixed16")
    ap.add_argument("--threads", type=int, default=96, help="download threads (default 96)")
    a = ap.parse_args(argv)
    hosts = population(a.images)
    bound = max(max(h.images * h.base / h.cap for h in hosts),
                sum(h.images * h.base for h in hosts) / a.threads)
    ready = mp.Event()
    server = mp.Process(target=serve, args=(hosts, ready), daemon=True)
    server.start()
    ready.wait(30)
    print(f"{len(hosts)} hosts, {sum(h.images for h in hosts):,} images; "
          f"oracle bound {bound:.1f} s")
    print(f"{'host':<12} {'images':>7} {'base ms':>8} {'cap':>4} {'fails past':>10}")
    for h in hosts:
        print(f"{h.ip:<12} {h.images:>7} {h.base * 1000:>8.0f} {h.cap:>4} {h.fail:>10}")
    results = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            mm = write_input(work, hosts)
            for config in a.configs.split(","):
                results[config] = r = run(config, work, mm, hosts, a.threads)
                over = r["overloads"] / max(r["requests"], 1)
                above = sum(m > lim for m, lim in zip(r["most"], r["allowed"], strict=True))
                left = sum(h.images for h in hosts) - r["saved"]
                end = f" (not a makespan: {left:,} left for later retries)" if left else ""
                print(f"\n{config}: makespan {r['makespan']:.1f} s = {r['makespan'] / bound:.2f}"
                      f" x bound{end}; {r['saved']:,} saved; {r['requests']:,} requests, "
                      f"503 {over * 100:.2f} %; hosts above their policy max: {above}")
                print("  most at once / allowed: " + " ".join(
                    f"{m}/{lim}" for m, lim in zip(r["most"], r["allowed"], strict=True)))
    finally:
        server.terminate()
    if "adaptive" in results and "fixed" in results:
        ratio = results["fixed"]["makespan"] / results["adaptive"]["makespan"]
        print(f"\nadaptive vs fixed: {ratio:.1f}x faster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
