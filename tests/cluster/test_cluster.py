"""The SGE and Slurm wrappers in scripts/, run as real batch jobs on a real scheduler.

Each test writes its own env.sh (DOWNLOAD_DB_ENV), serves images from loopback "hosts"
(127.0.0.x, one ImageServer each, with faults) and submits the pipeline with
scripts/<scheduler>/submit_pipeline.sh: ingest -> 4-task download array -> finalize -> report.
The jobs run on this machine, so they reach the servers. Start the schedulers with
scripts/ci/start-sge.sh and scripts/ci/start-slurm.sh (root); without them the tests skip.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import q, row, write_multimedia
from tests.imageserver import servers

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]
PER_HOST = 2  # --per-host-concurrency of the download tasks
THREADS = 4
SLOW = 30  # images per host that succeed, each served after a delay
DELAY = 0.3


def sh(*cmd: str, timeout: float = 30, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check)


class Scheduler:
    name = ""
    first_ip = 0  # servers on 127.0.0.<first_ip> ...

    def not_ready(self) -> str | None:  # a reason to skip, or None
        raise NotImplementedError

    def alive(self, jid: str) -> bool:
        raise NotImplementedError

    def task_running(self, jid: str, k: int) -> bool:
        raise NotImplementedError

    def kill_task(self, jid: str, k: int) -> None:
        raise NotImplementedError

    def task_log(self, log_dir: Path, jid: str, k: int) -> Path:
        raise NotImplementedError

    # flags for env.sh: this machine has 2 cores, the scripts ask for more per task
    submit_args: tuple[str, ...] = ()
    stop_signal = ""


class SGE(Scheduler):
    name, first_ip, stop_signal = "sge", 40, "SIGUSR2"
    # -V: the jobs get this process's environment (the test venv); -pe smp 1 and a short
    # h_rt (the download wrapper turns it into --max-runtime) fit this 2-core machine.
    submit_args = ("-V", "-pe", "smp", "1", "-l", "h_rt=0:05:00")

    def not_ready(self) -> str | None:
        if not shutil.which("qsub"):
            return "qsub is not on PATH (start SGE with scripts/ci/start-sge.sh, as root)"
        try:
            if sh("qconf", "-sh", timeout=15).returncode != 0:
                return "sge_qmaster is not running (scripts/ci/start-sge.sh)"
            lines = [ln.split() for ln in sh("qstat", "-f", timeout=15).stdout.splitlines()]
            if not any(len(f) in (5,) and "@" in f[0] and f[3] != "-NA-" for f in lines):
                return "no SGE queue instance is up and free of error states (sge_execd down?)"
            if sh("qconf", "-sp", "smp", timeout=15).returncode != 0:
                return "SGE has no parallel environment 'smp' (scripts/ci/start-sge.sh adds it)"
        except subprocess.TimeoutExpired:
            return "SGE commands time out"
        return None

    def alive(self, jid: str) -> bool:
        r = sh("qstat")
        for line in r.stdout.splitlines():
            f = line.split()
            if f and f[0] == jid:
                assert "E" not in f[4], f"job {jid} is in error state:\n" + sh(
                    "qstat", "-j", jid).stdout[-2000:]
                return True
        return False

    def task_running(self, jid: str, k: int) -> bool:
        for line in sh("qstat", "-g", "d").stdout.splitlines():
            f = line.split()
            if f and f[0] == jid and f[-1] == str(k) and f[4] == "r":
                return True
        return False

    def kill_task(self, jid: str, k: int) -> None:
        sh("qdel", jid, "-t", str(k), check=True)

    def task_log(self, log_dir: Path, jid: str, k: int) -> Path:
        return log_dir / f"gbif_download.o{jid}.{k}"


class Slurm(Scheduler):
    name, first_ip, stop_signal = "slurm", 50, "SIGTERM"
    # Slurm exports this process's environment (the test venv) by default. The time limit
    # must stay well above the scripts' --signal=B:USR1@300, or the stop signal comes at once.
    submit_args = ("--cpus-per-task=1", "--time=30")

    def not_ready(self) -> str | None:
        if not shutil.which("sbatch"):
            return "sbatch is not on PATH (start Slurm with scripts/ci/start-slurm.sh, as root)"
        try:
            if "UP" not in sh("scontrol", "ping", timeout=15).stdout:
                return "slurmctld is not up (scripts/ci/start-slurm.sh)"
            states = sh("sinfo", "-h", "-o", "%t", timeout=15).stdout.split()
            if not set(states) & {"idle", "mix", "alloc", "comp"}:
                return f"no usable Slurm node (states: {states or 'none'}; slurmd down?)"
        except subprocess.TimeoutExpired:
            return "Slurm commands time out"
        return None

    def alive(self, jid: str) -> bool:
        return bool(sh("squeue", "-h", "-j", jid).stdout.strip())

    def task_running(self, jid: str, k: int) -> bool:
        return sh("squeue", "-h", "-j", f"{jid}_{k}", "-o", "%T").stdout.strip() == "RUNNING"

    def kill_task(self, jid: str, k: int) -> None:
        sh("scancel", f"{jid}_{k}", check=True)

    def task_log(self, log_dir: Path, jid: str, k: int) -> Path:
        return log_dir / f"gbif_download_{jid}_{k}.log"


@pytest.fixture(params=[SGE(), Slurm()], ids=lambda s: s.name)
def sched(request) -> Scheduler:
    reason = request.param.not_ready()
    if reason:
        pytest.skip(reason)
    return request.param


def write_env(tmp_path: Path, sched: Scheduler, multimedia: Path) -> Path:
    """The env.sh the jobs source: this checkout, the venv running the tests, tmp paths."""
    q = shlex.quote
    activate = Path(sys.prefix) / "bin" / "activate"
    venv = (f"source {q(str(activate))}" if activate.is_file()
            else f'PATH={q(str(Path(sys.executable).parent))}:"$PATH"')
    download = ["--threads", THREADS, "--per-host-concurrency", PER_HOST, "--per-host-rate", 0,
                "--timeout", "2,2", "--deadline", 5, "--lease", 30, "--wait-for-retries", 0,
                "--lock-dir", tmp_path / "locks", "--contact", "tests@example.org",
                "--notify-every", 0, "--stall-minutes", 0]
    arr = " ".join(q(str(a)) for a in download)
    sub = " ".join(q(a) for a in sched.submit_args)
    env = tmp_path / "env.sh"
    env.write_text(f"""# written by tests/cluster/test_cluster.py
DOWNLOAD_DB_HOME={q(str(ROOT))}
{venv}
DB={q(str(tmp_path / "download_status.db"))}
INSTALL_PATH={q(str(tmp_path / "images"))}
LOG_DIR={q(str(tmp_path / "logs"))}
MULTIMEDIA={q(str(multimedia))}
NICE=1
PROGRESS_EVERY=2
INGEST_ARGS=()
DOWNLOAD_ARGS=({arr})
FINALIZE_ARGS=()
REPORT_ARGS=()
CHECK_ARGS=()
QSUB_ARGS=({sub if sched.name == "sge" else ""})
SBATCH_ARGS=({sub if sched.name == "slurm" else ""})
export SLACK_WEBHOOK_URL=   # never notify from tests, whatever a developer's .env says
export PYTHONFAULTHANDLER=1  # SIGABRT dumps every thread's stack into the job log
""")
    return env


def submit(sched: Scheduler, env: Path, cwd: Path, *args: str) -> dict[str, str]:
    r = subprocess.run(["bash", str(ROOT / "scripts" / sched.name / "submit_pipeline.sh"), *args],
                       capture_output=True, text=True, timeout=60, cwd=cwd,
                       env={**os.environ, "DOWNLOAD_DB_ENV": str(env)})
    assert r.returncode == 0, r.stdout + r.stderr
    out: dict[str, str] = {}
    for line in r.stdout.splitlines():
        m = re.match(r"(\w+)\s+(?:job\s+)?(\S+)", line)
        if m:
            out.setdefault(m[1], m[2])
    return out


def wait_gone(sched: Scheduler, jid: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while sched.alive(jid):
        assert time.monotonic() < deadline, f"{sched.name} job {jid} still queued or running"
        time.sleep(0.5)


def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def markers(pipeline: Path) -> dict[str, tuple[str, str]]:
    """unit -> (status, text) for every unit listed in the pipeline's units file."""
    out = {}
    for line in (pipeline / "units").read_text().splitlines():
        unit = line.split()[0]
        found = [p for p in pipeline.glob(f"{unit}.*") if p.suffix in (".ok", ".failed",
                                                                      ".skipped")]
        out[unit] = (found[0].suffix[1:], found[0].read_text().strip()) if found else ("", "")
    return out


def log_of(log_dir: Path, prefix: str, jid: str) -> str:
    logs = [p for p in log_dir.iterdir() if p.name.startswith(prefix) and jid in p.name]
    return "\n".join(p.read_text(errors="replace") for p in logs)


def test_pipeline_with_a_killed_task_finishes_every_image_once(sched, tmp_path) -> None:
    t_start = time.monotonic()
    hosts = servers(5, first=sched.first_ip)
    try:
        _run_pipeline(sched, tmp_path, hosts)
    finally:
        for s in hosts:
            s.stop()
    print(f"{sched.name}: {time.monotonic() - t_start:.1f}s")


def _run_pipeline(sched: Scheduler, tmp_path: Path, hosts) -> None:
    # One gbifID per image. Per host: SLOW images that succeed, and faults that do not.
    expect: dict[int, tuple[str, str]] = {}  # gbif_id -> (url path, expected status)
    rows = []
    gid = 3_000_000_000
    dead = f"http://127.0.0.{sched.first_ip + 9}:9"  # nothing listens: connection refused
    for h, srv in enumerate(hosts):
        plan = [(f"/slow/{sched.name}{h}-{i}.jpg?delay={DELAY}&w=320&h=240", "success")
                for i in range(SLOW)]
        plan += [(f"/html/{sched.name}{h}", "failed_permanent"),
                 (f"/corrupt/{sched.name}{h}.jpg", "failed_permanent"),
                 (f"/flaky/{sched.name}{h}.jpg?fail=1&code=503", "failed_transient"),
                 (f"/trunc/{sched.name}{h}.jpg", "failed_transient")]
        for path, status in plan:
            gid += 1
            rows.append(row(gid, srv.url(path)))
            expect[gid] = (path.split("?")[0], status)
    for i in range(3):
        gid += 1
        rows.append(row(gid, f"{dead}/img/d{i}.jpg"))
        expect[gid] = ("", "failed_transient")
    mm = write_multimedia(tmp_path / "multimedia.txt", rows)
    env = write_env(tmp_path, sched, mm)
    logs, db = tmp_path / "logs", tmp_path / "download_status.db"

    # 1. the whole pipeline
    first = submit(sched, env, tmp_path)
    array = first["download"]
    # 2. stop task 2 once it is downloading (its log says so), while it has work left
    wait_for(lambda: sched.task_running(array, 2)
             and "images with work left" in _read(sched.task_log(logs, array, 2)),
             90, f"task 2 of {sched.name} array {array} to start downloading")
    time.sleep(1.0)
    assert _downloader_pids(db, 2), "task 2's downloader process not found"
    t_kill = time.monotonic()
    sched.kill_task(array, 2)
    _stops_within(sched, array, 2, db, 20, sched.task_log(logs, array, 2))
    # the report works from a login node while the array runs, read-only
    mid = subprocess.run(["bash", str(ROOT / "scripts" / sched.name / "status_report.sh")],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "DOWNLOAD_DB_ENV": str(env)})
    assert mid.returncode == 0, mid.stdout + mid.stderr
    wait_gone(sched, first["report"], 120)
    m1 = markers(Path(first["pipeline"]))
    assert m1["ingest"][0] == "ok" and m1["download.2"][0] == "ok", m1
    assert f"after {sched.stop_signal}" in m1["download.2"][1], m1
    served_first = sum(s.stats()["requests"] for s in hosts)
    if sched.name == "sge":
        # a task stopped by qdel (-notify) ends cleanly: finalize merges what it did
        assert {u: s for u, (s, _) in m1.items()} == dict.fromkeys(m1, "ok"), m1
        second = submit(sched, env, tmp_path, "--from", "download", "--after", first["report"])
    else:
        # Slurm counts a scancel'd task CANCELLED: finalize is cancelled, the report says so
        assert m1["finalize"][0] == "" and m1["report"][0] == "failed", m1
        verdict = log_of(logs, "gbif_report", first["report"])
        assert "NO RESULT" in verdict and "CANCELLED" in verdict, verdict
        second = submit(sched, env, tmp_path, "--rerun-tasks", "2", "--tasks", "4",
                        "--after", first["report"])
    wait_gone(sched, second["report"], 120)
    m2 = markers(Path(second["pipeline"]))
    assert {u: s for u, (s, _) in m2.items()} == dict.fromkeys(m2, "ok"), m2
    assert "every stage ended ok" in log_of(logs, "gbif_report", second["report"])

    # every image has its expected outcome, in the main database after the last merge
    got = dict(q(db, "SELECT gbif_id, status FROM images"))
    assert got == {g: s for g, (_, s) in expect.items()}, \
        sorted((g, expect[g], got.get(g)) for g in expect if got.get(g) != expect[g][1])[:10]
    assert q(db, "SELECT count(*) FROM images WHERE claimed_by IS NOT NULL") == [(0,)]
    # one file per success row, nothing else under the image root
    files = [p for p in (tmp_path / "images").rglob("*") if p.is_file()
             and not p.name.startswith(".")]
    n_success = sum(1 for _, s in expect.values() if s == "success")
    assert len(files) == n_success == q(db, "SELECT count(*) FROM images "
                                            "WHERE status = 'success'")[0][0]
    # The kill left work for the second round, and no image was fetched twice except the
    # downloads cut off in flight by the stop, each fetched once more afterwards.
    total = sum(s.stats()["requests"] for s in hosts)
    assert served_first < total, "task 2 had finished before it was stopped"
    doubles = []
    for h, srv in enumerate(hosts):
        log = srv.stats()["log"]
        for i in range(SLOW):
            path = f"/slow/{sched.name}{h}-{i}.jpg"
            times = [t for t, _, target in log if target.split("?")[0] == path]
            assert 1 <= len(times) <= 2, (path, len(times))
            if len(times) == 2:
                assert times[0] < t_kill + 1 < times[1] + 1, (path, times, t_kill)
                doubles.append(path)
        # The per-host limit held across all tasks, on every host. Measured from the server's
        # request log: the server holds a /slow/ request for DELAY after reading its request
        # line, so [start, start + DELAY] lies inside the client's own in-flight time, and any
        # request that starts while PER_HOST of those are open is one too many. (The server's
        # max_concurrent counts until its last write returns, which a loaded machine can
        # delay past the moment the client has the body and starts its next request.)
        slow = [t for t, _, target in log if target.startswith("/slow/")]
        worst = max((sum(1 for u in slow if u <= t < u + DELAY) + (0 if target.startswith(
            "/slow/") else 1) for t, _, target in log), default=0)
        assert worst <= PER_HOST, (srv, worst, srv.stats()["max_concurrent"])
        assert not srv.errors, srv.errors[:1]
    assert len(doubles) <= THREADS, doubles
    # the integrity check, through its wrapper: exit 0
    chk = subprocess.run(["bash", str(ROOT / "scripts" / sched.name / "integrity_check.sh")],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "DOWNLOAD_DB_ENV": str(env)})
    assert chk.returncode == 0, chk.stdout + chk.stderr


def _stops_within(sched: Scheduler, jid: str, k: int, db: Path, seconds: float,
                  log: Path) -> None:
    """The stopped task's downloader must exit within seconds (it releases its claims and
    commits). If it does not, dump its threads' stacks into its log (PYTHONFAULTHANDLER
    is set in env.sh; SIGABRT) and fail with the log, before the scheduler's SIGKILL."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _downloader_pids(db, k):
            return
        time.sleep(0.2)
    for pid in _downloader_pids(db, k):
        os.kill(pid, 6)
    time.sleep(1)
    pytest.fail(f"task {k} still ran {seconds:.0f}s after it was stopped:\n{_read(log)[-6000:]}")


def _downloader_pids(db: Path, k: int) -> list[int]:
    """image_install_db.py processes of array task k working on db (from /proc)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(c.endswith(b"image_install_db.py") for c in cmd) and str(db).encode() in cmd \
                and (f"SGE_TASK_ID={k}".encode() in env
                     or f"SLURM_ARRAY_TASK_ID={k}".encode() in env):
            pids.append(int(proc.name))
    return pids


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def test_a_failed_stage_stops_the_chain_and_the_report_says_so(sched, tmp_path) -> None:
    env = write_env(tmp_path, sched, tmp_path / "no-such-multimedia.txt")
    t0 = time.monotonic()
    jobs = submit(sched, env, tmp_path, "--tasks", "2")
    wait_gone(sched, jobs["report"], 90)
    m = markers(Path(jobs["pipeline"]))
    assert m["ingest"][0] == "failed" and "exit 2" in m["ingest"][1], m
    # nothing after the failed ingest ran its command: SGE started the jobs, which stopped
    # at their gate; Slurm cancelled them (afterok + --kill-on-invalid-dep)
    for unit in ("download.1", "download.2", "finalize"):
        assert m[unit][0] == ("skipped" if sched.name == "sge" else ""), m
    assert m["report"][0] == "failed", m
    verdict = log_of(tmp_path / "logs", "gbif_report", jobs["report"])
    assert "ingest         FAILED" in verdict and "A STAGE DID NOT END OK" in verdict, verdict
    assert not (tmp_path / "download_status.db").exists()
    assert time.monotonic() - t0 < 60
