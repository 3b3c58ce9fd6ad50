"""`gbif-download-db download`: flags and .env -> DownloadConfig -> the download stage."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .. import __version__
from ..config import DEFAULT_INSTALL, ENV_SLACK_URL, DownloadConfig
from . import common

HELP = "download every image that still has work, politely (one process or one array task)"
DESCRIPTION = ("Download every distinct image that still has work, politely, into the "
               "image root; record each outcome in the tracking database.")
EXAMPLES = """\
examples:
  download everything that still has work, politely, into ./images:
    {prog}
  a batch job with limits (stops cleanly, resumable by running it again):
    {prog} --db /data/download_status.db --install-path /data/images \\
        --threads 64 --max-runtime 86000
  keep the original bytes instead of a 1024 px JPEG:
    {prog} --keep-original
stop: SIGTERM, SIGINT, SIGUSR1 or SIGUSR2 (SGE -notify, Slurm --signal) finish or release
the images in flight, commit, and exit 0. kill -9 loses nothing that was committed.
"""


def _pair(text: str) -> tuple[float, float]:
    parts = [p for p in text.replace(" ", "").split(",") if p]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError("expected SECONDS or CONNECT,READ") from None
    if len(vals) == 1:
        return vals[0], vals[0]
    if len(vals) == 2:
        return vals[0], vals[1]
    raise argparse.ArgumentTypeError("expected SECONDS or CONNECT,READ")


def _size(text: str) -> int:
    t = text.strip().upper()
    mult = 1
    for suffix, m in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if t.endswith(suffix) or t.endswith(suffix + "B"):
            mult, t = m, t.rstrip("B")[:-1]
            break
    try:
        return int(float(t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 200M)") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = DownloadConfig()
    g = p.add_argument_group("where")
    common.add_db(g, d.db)
    g.add_argument("--install-path", type=Path, default=d.install_path, metavar="PATH",
                   help=f"image root directory (default: ./{DEFAULT_INSTALL})")
    g = p.add_argument_group("how much at once")
    g.add_argument("--threads", type=int, default=d.threads, metavar="N",
                   help=f"download threads in this process (default: {d.threads})")
    g.add_argument("--processes", type=int, default=d.processes, metavar="N",
                   help="processes on this machine sharing the database (decode and resize are "
                        f"CPU-bound: one per core helps; default: {d.processes})")
    g.add_argument("--per-host-concurrency", type=int, default=d.per_host_concurrency,
                   metavar="N", help="simultaneous requests to one host, all threads and "
                                     f"processes together (default: {d.per_host_concurrency})")
    g.add_argument("--per-host-rate", type=float, default=d.per_host_rate, metavar="PER_SEC",
                   help="requests per second to one host, all together; 0 = no rate limit "
                        f"(default: {d.per_host_rate:g})")
    g.add_argument("--lock-dir", type=Path, metavar="PATH",
                   help="node-local directory for the per-host locks (default: /dev/shm, "
                        "else $TMPDIR)")
    g.add_argument("--host-policy", type=Path, metavar="FILE",
                   help="TOML file of per-host limits (max at once, max rate) over the shipped "
                        "policy and the two flags above; see docs/host-policy.md")
    g.add_argument("--adaptive", action="store_true",
                   help="find each host's limit as it answers: from 2 at once up to 16 (or the "
                        "policy's max), shrinking on slower answers, 429/503, timeouts; no "
                        "fixed rate (default: the fixed limits above)")
    g = p.add_argument_group("when to stop")
    g.add_argument("--max-images", type=int, metavar="N",
                   help="stop after handing out N images")
    g.add_argument("--max-runtime", type=float, metavar="SECONDS",
                   help="stop cleanly after this long (set below the job's wall-clock limit)")
    g.add_argument("--max-attempts", type=int, default=d.max_attempts, metavar="N",
                   help="tries per image for transient failures; raising it re-opens "
                        f"exhausted ones (default: {d.max_attempts})")
    g.add_argument("--wait-for-retries", type=float, default=d.wait_for_retries,
                   metavar="SECONDS", help="when only retries are left, keep running if one "
                   f"falls due within this long (default: {d.wait_for_retries:g}; 0 = exit)")
    g.add_argument("--lease", type=float, default=d.lease, metavar="SECONDS",
                   help="how long a claim is held before another run may take it over "
                        f"(default: {d.lease:g})")
    g.add_argument("--offline-timeout", type=float, default=d.offline_timeout,
                   metavar="SECONDS", help="when the node looks offline (network failures on "
                   "several hosts at once), pause and probe; exit 69 after this long "
                   f"(default: {d.offline_timeout:g})")
    g.add_argument("--min-free", type=_size, metavar="SIZE",
                   help="stop (exit 73) when free space under the image root or beside the "
                        "database falls below this, e.g. 20G; 0 = no check (default: the "
                        "larger of 5%% of the filesystem and 10G)")
    g = p.add_argument_group("HTTP")
    g.add_argument("--timeout", type=_pair, default=(d.connect_timeout, d.read_timeout),
                   metavar="CONNECT,READ", help="connect and read timeouts in seconds "
                   f"(default: {d.connect_timeout:g},{d.read_timeout:g})")
    g.add_argument("--deadline", type=float, default=d.deadline, metavar="SECONDS",
                   help=f"whole-download limit per request (default: {d.deadline:g})")
    g.add_argument("--max-bytes", type=_size, default=d.max_bytes, metavar="SIZE",
                   help="largest body accepted, e.g. 256M (default: 256M)")
    g.add_argument("--no-proxy", action="store_true",
                   help="ignore http_proxy, https_proxy, no_proxy and REQUESTS_CA_BUNDLE "
                        "(default: honour them, as curl and pip do)")
    g.add_argument("--user-agent", metavar="TEXT",
                   help="User-Agent (default: gbif-download-db/VERSION with DOWNLOADER_CONTACT "
                        "from .env)")
    g.add_argument("--contact", metavar="EMAIL_OR_URL",
                   help="contact put in the User-Agent (default: DOWNLOADER_CONTACT from .env)")
    g = p.add_argument_group("images")
    g.add_argument("--max-size", type=int, default=d.max_size, metavar="PX",
                   help=f"long edge of the saved JPEG (default: {d.max_size})")
    g.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality, metavar="Q",
                   help=f"JPEG quality of saved images (default: {d.jpeg_quality})")
    g.add_argument("--keep-original", action="store_true",
                   help="store the original bytes under their sniffed extension instead of a "
                        "resized JPEG")
    g.add_argument("--first-canvas-only", action="store_true",
                   help="a IIIF manifest gives its first canvas's image only (default: every "
                        "canvas's, the others as new images of the gbifID)")
    g.add_argument("--max-pixels", type=int, default=d.max_pixels, metavar="N",
                   help="refuse images above this many pixels (decompression-bomb guard; "
                        f"default: {d.max_pixels:,})")
    g.add_argument("--placeholder-hashes", type=Path, default=None, metavar="FILE",
                   help="hashes of pictures never to save (one a line: the sha256 of a saved "
                        "file or a 16-digit pHash): recorded as 'placeholder' failures")
    g = p.add_argument_group("rescue from GBIF's image cache")
    g.add_argument("--rescue-from-gbif-cache", action="store_true",
                   help="for images whose publisher URL failed permanently (HTTP 404/410/403, "
                        "not an image, ...), try GBIF's cached copy (at most 1200 px), one "
                        "request at a time; marked images.from_gbif_cache = 1 (default: off)")
    g.add_argument("--gbif-cache-url", default=d.gbif_cache_url, metavar="URL",
                   help="base URL of GBIF's image cache: <URL>/occurrence/<gbifID>/media/<md5 "
                        f"of the identifier> (default: {d.gbif_cache_url})")
    g = p.add_argument_group("output")
    common.add_progress(g, d.progress_every, "seconds between progress lines in batch logs")
    common.add_debug(g)
    g = p.add_argument_group("job arrays (SGE qsub -t, Slurm --array)")
    g.add_argument("--shard", default="", metavar="K/N",
                   help="run as task K of an N-task array: this task's hosts only, results in "
                        "its own database under --tasks-dir (default: from SGE_TASK_* or "
                        "SLURM_ARRAY_TASK_*; 'none': not an array task even inside one)")
    g.add_argument("--tasks-dir", type=Path, metavar="DIR",
                   help="where array tasks keep their result databases (default: <db>.tasks)")
    g.add_argument("--force", action="store_true",
                   help="outside an array: download even though array tasks may still be "
                        "writing results (otherwise finished ones are merged first)")
    g = p.add_argument_group("Slack notifications (SLACK_WEBHOOK_URL in .env)")
    g.add_argument("--notify-every", type=int, default=d.notify_every, metavar="N",
                   help=f"a message per N saved images (default: {d.notify_every}; 0 = none)")
    g.add_argument("--stall-minutes", type=float, default=d.stall_minutes, metavar="MINUTES",
                   help="a message when no image has finished for this long (default: "
                        f"{d.stall_minutes:g}; 0 = none)")


def user_agent(contact: str | None) -> str:
    import urllib3

    who = f" (+{contact}; bulk image download for research)" if contact else ""
    return f"gbif-download-db/{__version__}{who} python-urllib3/{urllib3.__version__}"


def config(a: argparse.Namespace, prog: str) -> DownloadConfig:
    """The run's config from the flags and .env (contact, Slack webhook); warns on stderr
    about what is missing."""
    from dotenv import find_dotenv, load_dotenv

    load_dotenv(find_dotenv(usecwd=True))
    contact = a.contact or os.environ.get("DOWNLOADER_CONTACT", "").strip() or None
    if not a.user_agent and not contact:
        print(f"{prog}: warning: no contact set (DOWNLOADER_CONTACT in .env or "
              "--contact); publishers cannot reach you about your traffic", file=sys.stderr)
    slack = os.environ.get(ENV_SLACK_URL, "").strip()
    if not slack:
        print(f"{prog}: warning: no {ENV_SLACK_URL} in .env; no Slack notifications",
              file=sys.stderr)
    return DownloadConfig(
        db=a.db, install_path=a.install_path, threads=a.threads, processes=a.processes,
        per_host_concurrency=a.per_host_concurrency, per_host_rate=a.per_host_rate,
        max_attempts=a.max_attempts, connect_timeout=a.timeout[0], read_timeout=a.timeout[1],
        deadline=a.deadline, max_bytes=a.max_bytes, max_size=a.max_size,
        jpeg_quality=a.jpeg_quality, keep_original=a.keep_original, max_pixels=a.max_pixels,
        first_canvas_only=a.first_canvas_only,
        placeholder_hashes=a.placeholder_hashes,
        user_agent=a.user_agent or user_agent(contact), max_images=a.max_images,
        max_runtime=a.max_runtime, lease=a.lease, wait_for_retries=a.wait_for_retries,
        lock_dir=a.lock_dir, host_policy=a.host_policy, adaptive=a.adaptive,
        progress_every=a.progress_every, bar=common.bar(a),
        slack_webhook_url=slack, notify_every=a.notify_every, stall_minutes=a.stall_minutes,
        shard=a.shard, tasks_dir=a.tasks_dir, force=a.force, no_proxy=a.no_proxy,
        offline_timeout=a.offline_timeout, min_free=a.min_free,
        rescue_from_gbif_cache=a.rescue_from_gbif_cache, gbif_cache_url=a.gbif_cache_url)


def run(a: argparse.Namespace) -> int:
    from ..download.stage import run_download  # imported late: --help stays fast

    run_download(config(a, a.prog))
    return 0
