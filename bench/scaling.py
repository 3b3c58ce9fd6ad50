#!/usr/bin/env python3
"""Job-array scaling benchmark: the same download with 1, 2 and 4 array tasks, against
the 1-task run of the same workload measured in the same run, plus the merge time.

    python bench/scaling.py                      # tasks as local processes
    python bench/scaling.py --scheduler slurm    # sbatch --array on a running Slurm
    python bench/scaling.py --scheduler sge      # qsub -t on a running SGE

Workload: 16 hosts (127.0.0.1-16), every answer delayed 200 ms (network-bound, not CPU
bound), per-host concurrency 2, --threads 4 per task, --keep-original. One task can run
4 requests at a time (20 img/s); the hosts allow 16 x 2 / 0.2 = 160 img/s, so 4 tasks
(80 img/s) stay below the per-host limits. Target (issue 5): speed-up >= 0.9 x N until
the per-host limits bind; the server's max concurrent connections per host <= 2.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from download import PY, Server, run, write_inputs  # noqa: E402

HOSTS = 16


def _submit(scheduler: str, n: int, cmd: list[str], work: Path) -> None:
    """Run the N tasks of one array and wait for all of them."""
    if scheduler == "local":
        procs = [subprocess.Popen(cmd + ["--shard", f"{k}/{n}"], cwd=work,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for k in range(1, n + 1)]
        if any(p.wait() != 0 for p in procs):
            raise SystemExit("a task failed")
        return
    script = work / "task.sh"
    script.write_text("#!/bin/bash\nexec " + " ".join(f"'{c}'" for c in cmd) + "\n")
    script.chmod(0o755)
    if scheduler == "slurm":
        jid = subprocess.run(["sbatch", "--parsable", f"--array=1-{n}", "-o", "/dev/null",
                              str(script)], capture_output=True, text=True, check=True,
                             cwd=work).stdout.strip()
        while subprocess.run(["squeue", "-h", "-j", jid], capture_output=True,
                             text=True).stdout.strip():
            time.sleep(0.2)
    else:
        subprocess.run(["qsub", "-sync", "y", "-V", "-cwd", "-j", "y", "-o", "/dev/null",
                        "-S", "/bin/bash", "-t", f"1-{n}", str(script)], check=True,
                       cwd=work, stdout=subprocess.DEVNULL)


def one(work: Path, urls: list[str], n: int, scheduler: str, srv: Server) -> dict:
    for p in work.glob("db.db*"):
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    shutil.rmtree(work / "images", ignore_errors=True)
    mm = write_inputs(work, urls)
    run([PY, str(ROOT / "init_download_db.py"), "--db", str(work / "db.db"), "--multimedia",
         str(mm), "--no-bar"], stdout=subprocess.DEVNULL, cwd=work)
    cmd = [PY, str(ROOT / "image_install_db.py"), "--db", str(work / "db.db"),
           "--install-path", str(work / "images"), "--no-bar", "--keep-original",
           "--threads", "4", "--per-host-concurrency", "2", "--per-host-rate", "0",
           "--wait-for-retries", "0", "--contact", "bench@example.org"]
    srv.reset()
    t = time.perf_counter()
    _submit(scheduler, n, cmd, work)
    wall = time.perf_counter() - t
    per_ip = srv.stats().get("conns_max_per_ip", {})
    t = time.perf_counter()
    run([PY, str(ROOT / "init_download_db.py"), "--db", str(work / "db.db"), "--merge-only",
         "--no-bar"], stdout=subprocess.DEVNULL, cwd=work)
    merge = time.perf_counter() - t
    ok = int(subprocess.run(
        [PY, "-c", "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(\"select "
         "count(*) from images where status='success'\").fetchone()[0])", str(work / "db.db")],
        capture_output=True, text=True, check=True).stdout)
    return {"tasks": n, "seconds": wall, "rate": ok / wall, "saved": ok, "merge_s": merge,
            "max_conns_per_host": max(per_ip.values()) if per_ip else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1600, help="images")
    ap.add_argument("--tasks", default="1,2,4")
    ap.add_argument("--scheduler", choices=["local", "slurm", "sge"], default="local")
    ap.add_argument("--port", type=int, default=8811)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "gbif_array_bench")
    a = ap.parse_args(argv)
    work = a.work
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus"
    if not (corpus / "index.tsv").exists():
        run([PY, str(ROOT / "bench" / "make_corpus.py"), "--out", str(corpus), "--n", "64",
             "--preset", "small", "--procs", "2"], stdout=subprocess.DEVNULL)
    srv = Server(corpus, a.port, ips=HOSTS)
    urls = [f"http://127.0.0.{1 + i % HOSTS}:{a.port}/h{i % HOSTS}/x/slow/img{i}.jpg?delay=0.2"
            for i in range(a.n)]
    results = []
    try:
        for n in [int(x) for x in a.tasks.split(",")]:
            r = one(work, urls, n, a.scheduler, srv)
            results.append(r)
            base = results[0]["rate"]
            print(f"{n} task(s): {r['saved']:,} images in {r['seconds']:.1f}s = "
                  f"{r['rate']:.1f} img/s, speed-up {r['rate'] / base:.2f} (target >= "
                  f"{0.9 * n / results[0]['tasks']:.1f}); merge {r['merge_s']:.1f}s; "
                  f"max conns per host {r['max_conns_per_host']} (limit 2)", flush=True)
    finally:
        srv.stop()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
