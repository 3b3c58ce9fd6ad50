"""Validated, immutable run configurations built by the CLI (and by tests directly)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .errors import UsageError
from .states import DEFAULT_LEASE, DEFAULT_MAX_ATTEMPTS
from .web import gbif_cache

DEFAULT_DB = "download_status.db"
DEFAULT_INSTALL = "images"

MODE_BUILD = "build"
MODE_RESET = "reset"
MODE_LEGACY = "legacy-only"
MODE_FINALIZE = "finalize-only"
MODE_MERGE = "merge-only"

ENV_SLACK_URL = "SLACK_WEBHOOK_URL"  # the Slack incoming webhook, from .env or the environment


def check_webhook_url(url: str) -> str:
    """The webhook URL if usable ("" = no Slack). The message never quotes it: it holds
    the secret."""
    url = url.strip()
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"{ENV_SLACK_URL} is not an http(s) URL (check .env; the value "
                             "is not shown because it is a secret)")
    return url


@dataclass(frozen=True)
class InitConfig:
    """init_download_db.py: build / reset / legacy-only / finalize-only / merge-only."""

    db: Path = Path(DEFAULT_DB)
    multimedia: Path | None = None
    install_path: Path = Path(DEFAULT_INSTALL)
    processed_file: Path | None = None
    failed_file: Path | None = None
    mode: str = MODE_BUILD
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    chunk_mb: int = 8
    workers: int = 2
    progress_every: float = 10.0
    bar: bool | None = None  # None: a bar only when stdout is a terminal
    force: bool = False  # write the main DB even if array tasks may still be writing
    occurrence: Path | None = None  # occurrence.txt of an unpacked DwC-A (citation data)
    legacy_verify: bool = True  # decode each legacy file (False: --no-verify, flag it instead)
    # Slack incoming webhook (SLACK_WEBHOOK_URL); a secret, so kept out of repr()
    slack_webhook_url: str = field(default="", repr=False, compare=False)

    def validate(self) -> InitConfig:
        if self.mode in (MODE_BUILD, MODE_RESET) and self.multimedia is None and not (
                self.mode == MODE_BUILD and self.occurrence is not None):
            raise UsageError("--multimedia PATH is required to build the database")
        if self.occurrence is not None and self.mode not in (MODE_BUILD, MODE_RESET):
            raise UsageError("--occurrence goes with a build (--multimedia)")
        if self.mode == MODE_LEGACY and self.processed_file is None:
            raise UsageError("--legacy-only needs --processed-file PATH")
        if self.max_attempts < 1:
            raise UsageError("--max-attempts must be at least 1")
        if not 1 <= self.chunk_mb <= 1024:
            raise UsageError("--chunk-mb must be between 1 and 1024")
        if not 1 <= self.workers <= 64:
            raise UsageError("--workers must be between 1 and 64")
        if self.progress_every <= 0:
            raise UsageError("--progress-every must be positive")
        check_webhook_url(self.slack_webhook_url)
        parent = self.db.resolve().parent
        if not parent.is_dir():
            raise UsageError(f"directory for --db does not exist: {parent}")
        return self


@dataclass(frozen=True)
class ReportConfig:
    """The report: read-only, printed as text or JSON, optionally also written to files."""

    db: Path = Path(DEFAULT_DB)
    json: bool = False
    html: Path | None = None  # also write a self-contained HTML page here
    output_dir: Path | None = None  # also write summary_YYYYMMDDHHMM.txt/.json here


@dataclass(frozen=True)
class CheckConfig:
    """The integrity check: read-only; exit 1 on any disagreement."""

    db: Path = Path(DEFAULT_DB)
    install_path: Path | None = Path(DEFAULT_INSTALL)  # None: skip the file checks
    full: bool = False  # PRAGMA integrity_check instead of quick_check


@dataclass(frozen=True)
class DownloadConfig:
    """image_install_db.py: download every image that still has work."""

    db: Path = Path(DEFAULT_DB)
    install_path: Path = Path(DEFAULT_INSTALL)
    threads: int = 32
    processes: int = 1
    per_host_concurrency: int = 4
    per_host_rate: float = 5.0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    deadline: float = 120.0
    max_bytes: int = 256 << 20
    max_size: int = 1024
    jpeg_quality: int = 85
    keep_original: bool = False
    # a IIIF manifest gives its first canvas's image only (else every canvas's)
    first_canvas_only: bool = False
    max_pixels: int = 300_000_000
    placeholder_hashes: Path | None = None  # a user's list of pictures never to save
    user_agent: str = ""
    max_images: int | None = None
    max_runtime: float | None = None
    lease: float = DEFAULT_LEASE
    wait_for_retries: float = 300.0
    lock_dir: Path | None = None
    # per-host limits over the shipped policy (web/policy.py, docs/host-policy.md)
    host_policy: Path | None = None
    # adapt every host's concurrency (policy.ADAPTIVE_DEFAULT for hosts the policy does
    # not name) instead of the fixed --per-host-concurrency / --per-host-rate
    adaptive: bool = False
    progress_every: float = 10.0
    bar: bool | None = None
    # Slack incoming webhook (SLACK_WEBHOOK_URL); a secret, so kept out of repr()
    slack_webhook_url: str = field(default="", repr=False, compare=False)
    notify_every: int = 10_000  # a Slack message per this many saved images (0 = none)
    stall_minutes: float = 30.0  # a Slack message after this long without progress (0 = none)
    no_proxy: bool = False  # ignore http_proxy/https_proxy/no_proxy and the CA bundle variables
    # a node without network: pause, probe every offline_probe_every s, exit after this long
    offline_timeout: float = 1800.0
    offline_probe_every: float = 30.0
    # free space kept under the image root and beside the database; None: the larger of
    # 5 % of the filesystem and 10 GB (files/space.py); 0 = no check
    min_free: int | None = None
    # job arrays: "K/N", "" = from SGE/Slurm variables, "none" = not a task
    shard: str = ""
    tasks_dir: Path | None = None  # default <db>.tasks
    force: bool = False  # write the main DB even if array tasks may still be writing
    # set for an array task's own run (task.prepare): its database is read from
    # other hosts (rollback journal), and hosts shared with other tasks get a
    # share of the limits: ((host, part, parts), ...)
    wal: bool = True
    split: tuple[tuple[str, int, int], ...] = ()
    main_db: Path | None = None
    # try GBIF's image cache for permanent failures the cache may cure (states.RESCUE_WHERE),
    # at this base URL (web/gbif_cache.py; another one: a mirror, or a test server)
    rescue_from_gbif_cache: bool = False
    gbif_cache_url: str = gbif_cache.DEFAULT_BASE

    def validate(self) -> DownloadConfig:
        checks = [
            (self.threads >= 1, "--threads must be at least 1"),
            (1 <= self.processes <= 64, "--processes must be between 1 and 64"),
            (self.per_host_concurrency >= 1, "--per-host-concurrency must be at least 1"),
            (self.per_host_rate >= 0, "--per-host-rate must be >= 0 (0 = no rate limit)"),
            (self.max_attempts >= 1, "--max-attempts must be at least 1"),
            (self.connect_timeout > 0 and self.read_timeout > 0, "--timeout values must be > 0"),
            (self.deadline > 0, "--deadline must be > 0"),
            (self.max_bytes > 0, "--max-bytes must be > 0"),
            (16 <= self.max_size <= 65535, "--max-size must be between 16 and 65535"),
            (1 <= self.jpeg_quality <= 95, "--jpeg-quality must be between 1 and 95"),
            (self.max_images is None or self.max_images >= 0, "--max-images must be >= 0"),
            (self.max_runtime is None or self.max_runtime > 0, "--max-runtime must be > 0"),
            (self.wait_for_retries >= 0, "--wait-for-retries must be >= 0"),
            (self.notify_every >= 0, "--notify-every must be >= 0 (0 = no milestones)"),
            (self.stall_minutes >= 0, "--stall-minutes must be >= 0 (0 = no stall messages)"),
            (self.offline_timeout > 0, "--offline-timeout must be > 0"),
            (self.offline_probe_every > 0, "offline_probe_every must be > 0"),
            (self.min_free is None or self.min_free >= 0, "--min-free must be >= 0"),
            (self.lease >= 2 * self.deadline,
             "--lease must be at least twice --deadline (a claim must outlive a download)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UsageError(msg)
        check_webhook_url(self.slack_webhook_url)
        why = gbif_cache.check_base(self.gbif_cache_url)
        if why is not None:
            raise UsageError(f"--gbif-cache-url {self.gbif_cache_url}: {why}")
        if self.host_policy is not None:  # a bad file stops the run before it starts
            from .web.policy import HostLimits, load

            load(self.host_policy, HostLimits())
        if self.placeholder_hashes is not None:  # bad lines fail before any work starts
            from .identity.placeholders import read_hashes_file  # late: numpy

            read_hashes_file(self.placeholder_hashes)
        return self
