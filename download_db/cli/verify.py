"""`gbif-download-db verify`: flags -> the verify stage (upkeep/verify.py)."""

from __future__ import annotations

import argparse

from . import common

HELP = "check saved files (oldest check first) and requeue missing or corrupt ones"
DESCRIPTION = ("Walk the saved images, never-checked first, then oldest check first "
               "(images.last_checked): the file must exist with its recorded size; with --hash "
               "its recorded sha256, with --decode it must decode. A missing or unsound file "
               "goes back to pending with a fresh attempts budget (error_type file_missing, "
               "file_size_changed, file_hash_changed or file_undecodable) and is removed, so "
               "the next download fetches it again. Runs beside a download; kill it at any "
               "time and run it again to continue. As an array task (--shard K/N or a job "
               "array's variables) it only reads the frozen database and records verdicts "
               "that `gbif-download-db merge` applies.")
EXAMPLES = """\
examples:
  sizes only (a stat per file), at most 2 hours:
    {prog} --db /data/download_status.db --install-path /data/images --max-runtime 7200
  a full check, gentle on a shared filesystem:
    {prog} --hash --decode --max-mb-per-s 50
  give links that failed for good over 30 days ago another chance (then download):
    {prog} --revisit-failed-older-than 30 --revisit-only
  as a 4-task SGE array across nodes (each task writes its verdicts under <db>.tasks/),
  then apply them:
    qsub -t 1-4 scripts/sge/verify.sh --older-than 30
    qsub -hold_jid gbif_verify scripts/sge/finalize.sh --merge-only
  task 2 of 4 by hand (the database must be frozen: merged, not written since):
    {prog} --shard 2/4 --hash --max-mb-per-s 50 && gbif-download-db merge
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_db(p)
    common.add_install_path(p, "image root the files were saved under")
    p.add_argument("--hash", action="store_true",
                   help="also compare each file's sha256 with the recorded one (reads it)")
    p.add_argument("--decode", action="store_true",
                   help="also decode each file (reads it)")
    p.add_argument("--older-than", type=float, default=0.0, metavar="DAYS",
                   help="only files not checked in the last DAYS days (default: 0, every "
                        "file not checked since this run started)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="check at most N files")
    p.add_argument("--max-runtime", type=float, default=None, metavar="SECONDS",
                   help="stop cleanly after this long (run again to continue)")
    p.add_argument("--max-mb-per-s", type=float, default=0.0, metavar="MB",
                   help="read at most MB megabytes per second with --hash/--decode "
                        "(default: 0, no limit)")
    p.add_argument("--threads", type=int, default=8, metavar="N",
                   help="files checked at once (default: 8)")
    p.add_argument("--shard", default="", metavar="K/N",
                   help="run as task K of an N-task array: share K of N (image_id modulo N) "
                        "read from the frozen database, verdicts in its own database under "
                        "<db>.tasks/ for `gbif-download-db merge` (default: from SGE_TASK_* "
                        "or SLURM_ARRAY_TASK_*; 'none': not an array task even inside one)")
    p.add_argument("--revisit-failed-older-than", type=float, default=None, metavar="DAYS",
                   help="first give permanent failures last tried over DAYS days ago a fresh "
                        "attempts budget (pending again, for the next download), each host's "
                        "oldest first and the hosts served evenly")
    p.add_argument("--revisit-limit", type=int, default=100_000, metavar="N",
                   help="reopen at most N permanent failures per run (default: 100000)")
    p.add_argument("--revisit-only", action="store_true",
                   help="only revisit failures; check no files")
    p.add_argument("--force", action="store_true",
                   help="run (not as an array task) although array tasks may still be running")
    common.add_progress(p, 10.0)
    common.add_debug(p)


def run(a: argparse.Namespace) -> int:
    from ..upkeep.verify import VerifyConfig, run_verify

    run_verify(VerifyConfig(db=a.db, install_path=a.install_path, hash=a.hash, decode=a.decode,
                            limit=a.limit, max_runtime=a.max_runtime,
                            max_mb_per_s=a.max_mb_per_s, older_than_days=a.older_than,
                            threads=a.threads, shard=a.shard,
                            revisit_days=a.revisit_failed_older_than,
                            revisit_limit=a.revisit_limit, revisit_only=a.revisit_only,
                            force=a.force,
                            bar=common.bar(a),
                            progress_every=a.progress_every))
    return 0
