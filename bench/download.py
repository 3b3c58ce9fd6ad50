#!/usr/bin/env python3
"""Download benchmark: images/s and peak RSS of image_install_db.py against the loopback
image server, with baselines measured in the same run.

    python bench/download.py                        # all scenarios, 2000 images
    python bench/download.py --scenarios polite --n 3000
    python bench/download.py --img2dataset /tmp/i2d/bin/img2dataset

Scenarios (targets from issue 3):
  resize    1500x2000 JPEGs resized to 1024, vs img2dataset 1.47 on the same URLs
            (processes_count=2 thread_count=32 resize_mode=keep_ratio image_size=1024
            output_format=files): target >= 2.5x img2dataset
  original  --keep-original (fetch, validate, store): target >= 700 img/s on 2 cores
            (BENCH_ORIGINAL=PROCESSES,THREADS sets the downloader's shape; default 2,16)
  polite    8 hosts (127.0.0.1-8) each answering after 100 ms, per-host concurrency 4:
            bound 8 x 4 / 0.1 s = 320 img/s; target >= 90% of it, with the server's
            max concurrent connections per host <= 4
  rss       peak RSS of a run over a large pending queue (--queue rows) vs a small one:
            target flat, <= 300 MiB
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PY = sys.executable
HEADER = ("gbifID\ttype\tformat\tidentifier\treferences\ttitle\tdescription\tsource\taudience\t"
          "created\tcreator\tcontributor\tpublisher\tlicense\trightsHolder\n")


def run(cmd: list[str], **kw) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, **kw)
    return time.perf_counter() - t


def _measured(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB of the largest process) of cmd, in its own process
    tree so earlier steps (the ingest) do not count."""
    code = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
            "print(time.perf_counter() - t, "
            "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)")
    out = subprocess.run([PY, "-c", code, *cmd], capture_output=True, text=True, check=True,
                         cwd=cwd)
    dt, rss = out.stdout.split()
    return float(dt), float(rss)


class Server:
    def __init__(self, corpus: Path, port: int, ips: int = 8, extra: list[str] | None = None):
        self.port = port
        ready = Path(tempfile.mkstemp()[1])
        ready.unlink()
        cmd = [PY, str(BENCH / "image_server.py"), "--corpus", str(corpus), "--port", str(port),
               "--ips", str(ips), "--backend", "raw", "--ready-file", str(ready), *(extra or [])]
        self.p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not ready.exists():
            if time.monotonic() > deadline or self.p.poll() is not None:
                raise SystemExit("image server did not start")
            time.sleep(0.05)

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/__stats", timeout=10) as r:
            return json.load(r)

    def reset(self) -> None:
        urllib.request.urlopen(f"http://127.0.0.1:{self.port}/__reset", timeout=10).read()

    def stop(self) -> None:
        self.p.terminate()
        self.p.wait()


def write_inputs(work: Path, urls: list[str]) -> Path:
    mm = work / "multimedia.txt"
    with open(mm, "w") as f:
        f.write(HEADER)
        for i, u in enumerate(urls):
            f.write(f"{3_000_000_000 + i}\tStillImage\timage/jpeg\t{u}" + "\t" * 11 + "\n")
    (work / "urls.txt").write_text("\n".join(urls) + "\n")
    return mm


def ours(work: Path, urls: list[str], *args: str) -> tuple[float, float]:
    """(images/s of the download stage, peak RSS MiB)."""
    for p in ("db.db", "db.db-wal", "db.db-shm", "db.db.lock"):
        (work / p).unlink(missing_ok=True)
    shutil.rmtree(work / "images", ignore_errors=True)
    mm = write_inputs(work, urls)
    run([PY, str(ROOT / "init_download_db.py"), "--db", str(work / "db.db"), "--multimedia",
         str(mm), "--no-bar"], stdout=subprocess.DEVNULL, cwd=work)
    dt, rss = _measured([PY, str(ROOT / "image_install_db.py"), "--db", str(work / "db.db"),
                         "--install-path", str(work / "images"), "--no-bar",
                         "--wait-for-retries", "0", "--progress-every", "1000", "--contact",
                         "bench@example.org", "--lock-dir", str(work / "locks"), *args], work)
    ok = int(subprocess.run([PY, "-c", "import sqlite3,sys; print(sqlite3.connect(sys.argv[1])"
                             ".execute(\"select count(*) from images where status='success'\")"
                             ".fetchone()[0])", str(work / "db.db")],
                            capture_output=True, text=True, check=True).stdout)
    if ok != len(urls):
        print(f"  warning: {len(urls) - ok} images not saved", flush=True)
    return ok / dt, rss


def img2dataset(exe: str, work: Path, n: int) -> float:
    out = work / "i2d"
    shutil.rmtree(out, ignore_errors=True)
    dt = run([exe, "--url_list", str(work / "urls.txt"), "--output_folder", str(out),
              "--processes_count", "2", "--thread_count", "32", "--resize_mode", "keep_ratio",
              "--image_size", "1024", "--output_format", "files", "--disable_all_reencoding",
              "False", "--retries", "0", "--timeout", "30"],
             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
    saved = len(list(out.rglob("*.jpg")))
    if saved != n:
        print(f"  warning: img2dataset saved {saved} of {n}", flush=True)
    return saved / dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="images per scenario (default 2000)")
    ap.add_argument("--scenarios", default="resize,original,polite,rss")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "gbif_dl_bench")
    ap.add_argument("--img2dataset", default=shutil.which("img2dataset") or "",
                    help="img2dataset executable (its own venv); skipped when absent")
    ap.add_argument("--queue", type=int, default=1_000_000,
                    help="pending-queue rows for the rss scenario (default 1M)")
    ap.add_argument("--port", type=int, default=8911)
    a = ap.parse_args(argv)
    work = a.workdir
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus"
    if not (corpus / "index.tsv").exists():
        run([PY, str(BENCH / "make_corpus.py"), "--out", str(corpus), "--n", "300", "--procs", "2"],
            stdout=subprocess.DEVNULL)
    scen = set(a.scenarios.split(","))
    results: dict[str, str] = {}
    srv = Server(corpus, a.port)
    try:
        plain = [f"http://127.0.0.{1 + i % 8}:{a.port}/h{i % 8}/img{i}.jpg" for i in range(a.n)]
        if "resize" in scen:
            rate, rss = ours(work, plain, "--threads", "16", "--processes", "2",
                             "--per-host-concurrency", "16", "--per-host-rate", "0")
            line = f"resize to 1024: ours {rate:,.1f} img/s (peak RSS {rss:,.0f} MiB)"
            if a.img2dataset:
                base = img2dataset(a.img2dataset, work, a.n)
                line += f"; img2dataset {base:,.1f} img/s -> {rate / base:.2f}x (target >= 2.5x)"
            results["resize"] = line
            print(line, flush=True)
        if "original" in scen:
            procs, threads = os.environ.get("BENCH_ORIGINAL", "2,16").split(",")
            rate, rss = ours(work, plain, "--keep-original", "--threads", threads,
                             "--processes", procs, "--per-host-concurrency", "16",
                             "--per-host-rate", "0")
            results["original"] = (f"keep original: {rate:,.1f} img/s, peak RSS {rss:,.0f} MiB "
                                   f"(target >= 700 img/s)")
            print(results["original"], flush=True)
        if "polite" in scen:
            slow = [f"http://127.0.0.{1 + i % 8}:{a.port}/h{i % 8}/x/slow/img{i}.jpg?delay=0.1"
                    for i in range(a.n)]
            srv.reset()
            rate, _ = ours(work, slow, "--keep-original", "--threads", "64",
                           "--per-host-concurrency", "4", "--per-host-rate", "0")
            st = srv.stats()
            per_ip = st.get("conns_max_per_ip", {})
            results["polite"] = (f"politeness-bound: {rate:,.1f} img/s = {rate / 320:.0%} of the "
                                 f"320 img/s bound (target >= 90%); server max concurrent per "
                                 f"host: {json.dumps(per_ip, sort_keys=True)} (limit 4)")
            print(results["polite"], flush=True)
        if "rss" in scen:
            small = plain[:2000]
            _, rss_small = _rss_run(work, small, 0)
            _, rss_big = _rss_run(work, small, a.queue)
            results["rss"] = (f"peak RSS downloading 2,000 images: {rss_small:,.0f} MiB with a "
                              f"2,000-row queue, {rss_big:,.0f} MiB with {a.queue:,} more rows "
                              f"pending (target flat, <= 300 MiB)")
            print(results["rss"], flush=True)
    finally:
        srv.stop()
    print("\nsummary:")
    for v in results.values():
        print("  " + v)
    return 0


def _rss_run(work: Path, urls: list[str], extra_pending: int) -> tuple[float, float]:
    """Download len(urls) images while `extra_pending` more rows wait in the queue.
    Every row points at the loopback server; --max-images ends the run."""
    sub = work / f"rss{extra_pending}"
    shutil.rmtree(sub, ignore_errors=True)
    sub.mkdir()
    port = urls[0].split(":")[2].split("/")[0]
    pending = (f"http://127.0.0.{1 + j % 8}:{port}/h{j % 8}/img{j}.jpg"
               for j in range(extra_pending))
    mm = sub / "multimedia.txt"
    with open(mm, "w") as f:
        f.write(HEADER)
        for i, u in enumerate(urls):
            f.write(f"{3_000_000_000 + i}\tStillImage\timage/jpeg\t{u}" + "\t" * 11 + "\n")
        for j, u in enumerate(pending):
            f.write(f"{4_000_000_000 + j}\tStillImage\timage/jpeg\t{u}" + "\t" * 11 + "\n")
    run([PY, str(ROOT / "init_download_db.py"), "--db", str(sub / "db.db"), "--multimedia",
         str(mm), "--no-bar"], stdout=subprocess.DEVNULL, cwd=sub)
    return _measured([PY, str(ROOT / "image_install_db.py"), "--db", str(sub / "db.db"),
                      "--install-path", str(sub / "images"), "--no-bar", "--wait-for-retries",
                      "0", "--max-images", str(len(urls)), "--threads", "16",
                      "--per-host-concurrency", "16", "--per-host-rate", "0", "--contact",
                      "bench@example.org", "--lock-dir", str(sub / "locks")], sub)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
