"""One vocabulary: statuses, error types, what counts as work left, retries, liveness."""

from __future__ import annotations

import random

# Image statuses (images.status) and gbifID statuses (gbif_ids.status): text so
# that users' ad hoc SQL reads naturally.
PENDING = "pending"
SUCCESS = "success"
FAILED_TRANSIENT = "failed_transient"
FAILED_PERMANENT = "failed_permanent"
IMAGE_STATUSES = (PENDING, SUCCESS, FAILED_TRANSIENT, FAILED_PERMANENT)

GBIF_PENDING = "pending"
GBIF_PARTIAL = "partial"
GBIF_DONE = "done"
GBIF_FAILED = "failed"
GBIF_STATUSES = (GBIF_PENDING, GBIF_PARTIAL, GBIF_DONE, GBIF_FAILED)

# Flags carried in error_type on success rows.
FLAG_LEGACY = "legacy_unverified_index"
FLAG_RAW = "raw_unprocessed"
# A legacy file that does not decode (ingest/legacy.py): its image is left pending.
LEGACY_INVALID = "legacy_invalid"
# A camera raw that converts to no usable image (upkeep/convert.py): failed for good.
RAW_UNUSABLE = "raw_unusable"

# Error types verify (upkeep/verify.py) gives a saved image it sends back to pending:
# the file is gone, or is not the file recorded (size, sha256), or does not decode.
VERIFY_MISSING = "file_missing"
VERIFY_SIZE = "file_size_changed"
VERIFY_HASH = "file_hash_changed"
VERIFY_UNDECODABLE = "file_undecodable"

# Error type of a picture a host serves for many different URLs ("image not
# available"): permanent, found by the download, dedupe/finalize or --placeholder-hashes.
PLACEHOLDER = "placeholder"
# More than this many images of one host with one picture make it a placeholder; a
# sheet carrying several specimens, shared by a few gbifIDs, stays a duplicate group.
PLACEHOLDER_MAX_SHARED = 20

# Error types worth another attempt (with backoff, within the attempts budget);
# every other error_type is permanent.
TRANSIENT_ERRORS = frozenset({
    "rate_limited", "timeout", "server_error", "connection_broken", "truncated",
    "empty_response", "tls_error", "dns_error", "proxy_error",
})


def is_transient(error_type: str | None) -> bool:
    return error_type in TRANSIENT_ERRORS


# --- rescue from GBIF's image cache (download --rescue-from-gbif-cache) -----------------
# images.from_gbif_cache: NULL = never asked of the cache; 1 = saved from the cache;
# 0 = the cache had no usable copy (or its tries ran out): not asked again until a new
# verdict on the publisher's URL (a revisit) resets it; -k = k transient failures of the
# cache so far (retried with backoff within the attempts budget).
FROM_GBIF_CACHE = 1
NOT_IN_GBIF_CACHE = 0
# Permanent failures the cache may cure: the publisher's answer says the picture is not
# (or no longer) there as an image. Not our own verdicts (too_large: our limits;
# raw_unusable: our conversion), nor placeholders (the cache would fetch the same
# "not available" picture), nor IIIF documents (the cache renders images) or no_url.
RESCUABLE_ERRORS = ("invalid_content_type", "not_an_image", "too_many_redirects",
                    "bad_redirect")
# The rescue's work list, over images as stored; the partial index images_rescue is on
# exactly this term, so queries repeat it verbatim.
RESCUE_WHERE = ("status = 'failed_permanent' AND coalesce(from_gbif_cache, -1) < 0 "
                "AND (substr(error_type, 1, 5) = 'http_' OR error_type IN ("
                + ", ".join(f"'{e}'" for e in RESCUABLE_ERRORS) + "))")


def rescuable(status: str, error_type: str | None) -> bool:
    """RESCUE_WHERE for an outcome just recorded (before any try of the cache)."""
    return status == FAILED_PERMANENT and error_type is not None and (
        error_type.startswith("http_") or error_type in RESCUABLE_ERRORS)


# --- work left -------------------------------------------------------------------
# The one rule: an image has work left while it is pending, or failed transiently
# with attempts left in the budget. Its forms below all say that:
#   WORK_LEFT_SQL     over images or image_tally rows, for a budget :max_attempts
#                     (roll-up, array plan, re-opening or parking retries);
#   EXHAUSTED_WHERE   over images as stored: the last run parked what its budget
#                     spent (next_attempt_at >= EXHAUSTED), so no budget is needed;
#   has_work_left     in Python, either way (a tally row carries a parked flag).
# The work-list index (images_todo) is partial on TODO_WHERE: queries must repeat
# the term verbatim for SQLite to use it.
TODO_WHERE = "status IN ('pending', 'failed_transient')"
# next_attempt_at of a transient failure whose attempts budget is spent ("parked"):
# out of the range every claim scans; a larger --max-attempts brings it back.
EXHAUSTED = 9.0e15
PARKED = f"next_attempt_at >= {EXHAUSTED}"
EXHAUSTED_WHERE = f"{TODO_WHERE} AND next_attempt_at < {EXHAUSTED}"
WORK_LEFT_SQL = ("(status = 'pending' OR (status = 'failed_transient' "
                 "AND attempts < :max_attempts))")


def has_work_left(status: str, attempts: int, max_attempts: int | None = None, *,
                  parked: bool = False) -> bool:
    """WORK_LEFT_SQL for a row already read; without ``max_attempts``, as stored
    (EXHAUSTED_WHERE: ``parked`` says the row's budget is spent)."""
    if status == PENDING:
        return True
    if status != FAILED_TRANSIENT:
        return False
    return not parked if max_attempts is None else attempts < max_attempts


# --- retries -----------------------------------------------------------------------
DEFAULT_MAX_ATTEMPTS = 4
BACKOFF_BASE = 120.0  # first retry after ~2 min, doubling, with jitter
BACKOFF_CAP = 6 * 3600.0


def backoff(attempts: int, rnd: random.Random | None = None) -> float:
    """Seconds before the next try after ``attempts`` failed tries (full jitter)."""
    r = (rnd or random).uniform(0.5, 1.5)
    return min(BACKOFF_BASE * 2 ** max(attempts - 1, 0), BACKOFF_CAP) * r


# --- liveness ------------------------------------------------------------------------
# A claim holds its rows for the lease (the downloader's --lease default); a run
# whose heartbeat is older than that is not alive, wherever it ran. Every "is
# this run alive" question (report, merge, check, recovery) uses this window.
DEFAULT_LEASE = 900.0
ALIVE_WINDOW = DEFAULT_LEASE


# --- the pipeline ----------------------------------------------------------------------
# The stage whose work each stage consumes (runs.depends_on). A stage whose prerequisite
# failed does not run and is recorded with the outcome prerequisite_failed (db/runs.py;
# the rule per stage in docs/database.md, "Stage runs and prerequisites").
DEPENDS_ON = {"download": "ingest", "legacy": "ingest", "merge": "download",
              "finalize": "download"}
# The order the report lists stages in: the build and the download, the upkeep of what was
# saved, then the sets made from it; others follow, newest first.
PIPELINE_ORDER = ("ingest", "legacy", "download", "merge", "finalize", "hash", "dedupe",
                  "convert", "verify", "derive", "export")
# Stages that only read the database (their runs row aside): an ok run of one says
# nothing about the download, so the report's verdict looks past it to the run before.
READ_ONLY_STAGES = ("derive", "export")
