"""Entry points: parse flags, build a config, call one function, map errors to exit codes."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from .. import __version__
from ..config import (
    DEFAULT_DB,
    DEFAULT_INSTALL,
    MODE_BUILD,
    MODE_FINALIZE,
    MODE_LEGACY,
    MODE_MERGE,
    MODE_RESET,
    DownloadConfig,
    InitConfig,
)
from ..db.sqlite import sqlite3
from ..errors import DownloadDbError
from ..states import DEFAULT_MAX_ATTEMPTS

INIT_EXAMPLES = """\
examples:
  build the database from a GBIF download (txt, txt.gz or the DwC-A zip):
    init_download_db.py --multimedia 0012345-250101.zip
  a kill (wall-clock limit, kill -9) loses nothing; resume with the same command
  rebuild from scratch:
    init_download_db.py --multimedia multimedia.txt --reset
  import the older downloader's processed_ids.txt into an existing database:
    init_download_db.py --legacy-only --processed-file processed_ids.txt --install-path /data/images
  recompute gbifID statuses (also safe to kill and re-run):
    init_download_db.py --finalize-only
"""


def _init_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="init_download_db.py",
        description="Build the SQLite tracking database from a GBIF multimedia.txt: one row per "
                    "distinct image, then (optionally) import legacy files and roll statuses up "
                    "into gbifIDs.",
        epilog=INIT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", type=Path, default=Path(DEFAULT_DB), metavar="PATH",
                   help=f"tracking database (default: ./{DEFAULT_DB})")
    p.add_argument("--multimedia", type=Path, metavar="PATH",
                   help="GBIF multimedia.txt, multimedia.txt.gz, or the DwC-A .zip holding it "
                        "(required to build)")
    p.add_argument("--install-path", type=Path, default=Path(DEFAULT_INSTALL), metavar="PATH",
                   help=f"image root directory (default: ./{DEFAULT_INSTALL})")
    p.add_argument("--processed-file", type=Path, metavar="PATH",
                   help="legacy processed_ids.txt (one gbifID per line) to import")
    p.add_argument("--failed-file", type=Path, metavar="PATH",
                   help="legacy failed_ids.txt: counted; those IDs stay pending for a fresh retry")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--reset", action="store_true",
                      help="delete an existing database (and its -wal/-shm) and rebuild")
    mode.add_argument("--legacy-only", action="store_true",
                      help="only import --processed-file into an existing database, then finalize")
    mode.add_argument("--finalize-only", action="store_true",
                      help="only recompute gbif_ids statuses from image statuses (after merging "
                           "finished array tasks)")
    mode.add_argument("--merge-only", action="store_true",
                      help="only fold finished array tasks' result databases into the database "
                           "and leave it ready for the next array")
    p.add_argument("--force", action="store_true",
                   help="write the database even though array tasks may still be writing their "
                        "results (their unmerged results stay for a later merge)")
    p.add_argument("--max-attempts", type=int, default=DEFAULT_MAX_ATTEMPTS, metavar="N",
                   help="attempts budget used to decide whether a transient failure still counts "
                        f"as work left (default: {DEFAULT_MAX_ATTEMPTS})")
    p.add_argument("--chunk-mb", type=int, default=8, metavar="MB",
                   help="input read size per chunk; memory use grows with it (default: 8)")
    p.add_argument("--workers", type=int, default=2, metavar="N",
                   help="parse/transform threads (default: 2)")
    p.add_argument("--progress-every", type=float, default=10.0, metavar="SECONDS",
                   help="seconds between progress lines when not on a terminal (default: 10)")
    p.add_argument("--no-bar", action="store_true",
                   help="log lines instead of a progress bar even on a terminal")
    p.add_argument("--debug", action="store_true", help="show tracebacks for unexpected errors")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def init_main(argv: Sequence[str] | None = None) -> int:
    """init_download_db.py"""
    parser = _init_parser()
    a = parser.parse_args(argv)
    mode = (MODE_RESET if a.reset else MODE_LEGACY if a.legacy_only
            else MODE_FINALIZE if a.finalize_only else MODE_MERGE if a.merge_only
            else MODE_BUILD)
    cfg = InitConfig(db=a.db, multimedia=a.multimedia, install_path=a.install_path,
                     processed_file=a.processed_file, failed_file=a.failed_file, mode=mode,
                     max_attempts=a.max_attempts, chunk_mb=a.chunk_mb, workers=a.workers,
                     progress_every=a.progress_every, bar=False if a.no_bar else None,
                     force=a.force)
    from ..ingest.stage import run_init

    return _guard(parser.prog, lambda: run_init(cfg), a.debug)


def _guard(prog: str, fn: Callable[[], object], debug: bool) -> int:
    """Run fn; turn every failure into one line on stderr and an exit code."""
    try:
        fn()
    except DownloadDbError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    except sqlite3.Error as e:
        print(f"{prog}: database error: {e}", file=sys.stderr)
        if debug:
            traceback.print_exc()
        return 3
    except OSError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        if debug:
            traceback.print_exc()
        return 74
    except Exception as e:  # noqa: BLE001 - last line of defence: no traceback for users
        print(f"{prog}: internal error: {type(e).__name__}: {e} (rerun with --debug for details)",
              file=sys.stderr)
        if debug:
            traceback.print_exc()
        return 70
    return 0


DOWNLOAD_EXAMPLES = """\
examples:
  download everything that still has work, politely, into ./images:
    image_install_db.py
  a batch job with limits (stops cleanly, resumable by running it again):
    image_install_db.py --db /data/download_status.db --install-path /data/images \\
        --threads 64 --max-runtime 86000
  keep the original bytes instead of a 1024 px JPEG:
    image_install_db.py --keep-original
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


def _download_parser() -> argparse.ArgumentParser:
    d = DownloadConfig()
    p = argparse.ArgumentParser(
        prog="image_install_db.py",
        description="Download every distinct image that still has work, politely, into the "
                    "image root; record each outcome in the tracking database.",
        epilog=DOWNLOAD_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("where")
    g.add_argument("--db", type=Path, default=d.db, metavar="PATH",
                   help=f"tracking database (default: ./{DEFAULT_DB})")
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
    g = p.add_argument_group("HTTP")
    g.add_argument("--timeout", type=_pair, default=(d.connect_timeout, d.read_timeout),
                   metavar="CONNECT,READ", help="connect and read timeouts in seconds "
                   f"(default: {d.connect_timeout:g},{d.read_timeout:g})")
    g.add_argument("--deadline", type=float, default=d.deadline, metavar="SECONDS",
                   help=f"whole-download limit per request (default: {d.deadline:g})")
    g.add_argument("--max-bytes", type=_size, default=d.max_bytes, metavar="SIZE",
                   help="largest body accepted, e.g. 256M (default: 256M)")
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
    g.add_argument("--max-pixels", type=int, default=d.max_pixels, metavar="N",
                   help="refuse images above this many pixels (decompression-bomb guard; "
                        f"default: {d.max_pixels:,})")
    g = p.add_argument_group("output")
    g.add_argument("--progress-every", type=float, default=d.progress_every, metavar="SECONDS",
                   help=f"seconds between progress lines in batch logs (default: "
                        f"{d.progress_every:g})")
    g.add_argument("--no-bar", action="store_true",
                   help="log lines instead of a progress bar even on a terminal")
    g.add_argument("--debug", action="store_true", help="show tracebacks for unexpected errors")
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
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def user_agent(contact: str | None) -> str:
    import requests

    who = f" (+{contact}; bulk image download for research)" if contact else ""
    return f"gbif-download-db/{__version__}{who} python-requests/{requests.__version__}"


def download_main(argv: Sequence[str] | None = None) -> int:
    """image_install_db.py"""
    import os

    from dotenv import find_dotenv, load_dotenv

    parser = _download_parser()
    a = parser.parse_args(argv)
    load_dotenv(find_dotenv(usecwd=True))
    contact = a.contact or os.environ.get("DOWNLOADER_CONTACT", "").strip() or None
    if not a.user_agent and not contact:
        print(f"{parser.prog}: warning: no contact set (DOWNLOADER_CONTACT in .env or "
              "--contact); publishers cannot reach you about your traffic", file=sys.stderr)
    from ..notify import ENV_URL, is_child

    slack = os.environ.get(ENV_URL, "").strip()
    if not slack and not is_child():  # the copies --processes starts stay quiet
        print(f"{parser.prog}: warning: no {ENV_URL} in .env; no Slack notifications",
              file=sys.stderr)
    cfg = DownloadConfig(
        db=a.db, install_path=a.install_path, threads=a.threads, processes=a.processes,
        per_host_concurrency=a.per_host_concurrency, per_host_rate=a.per_host_rate,
        max_attempts=a.max_attempts, connect_timeout=a.timeout[0], read_timeout=a.timeout[1],
        deadline=a.deadline, max_bytes=a.max_bytes, max_size=a.max_size,
        jpeg_quality=a.jpeg_quality, keep_original=a.keep_original, max_pixels=a.max_pixels,
        user_agent=a.user_agent or user_agent(contact), max_images=a.max_images,
        max_runtime=a.max_runtime, lease=a.lease, wait_for_retries=a.wait_for_retries,
        lock_dir=a.lock_dir,
        progress_every=a.progress_every, bar=False if a.no_bar else None,
        slack_webhook_url=slack, notify_every=a.notify_every, stall_minutes=a.stall_minutes,
        shard=a.shard, tasks_dir=a.tasks_dir, force=a.force)
    from ..download.stage import run_download

    return _guard(parser.prog, lambda: run_download(cfg), a.debug)
