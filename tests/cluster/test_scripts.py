"""The wrapper scripts without a scheduler: syntax, directives, submit_pipeline.sh --dry-run,
the env.sh lookup and the pipeline gate (run by hand, as a job would run them)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from download_db.cli.main import main as main_cli
from tests.helpers import q
from tests.test_verify import _saved

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
WRAPPERS = sorted([*SCRIPTS.glob("sge/*.sh"), *SCRIPTS.glob("slurm/*.sh")])
ALL = [*WRAPPERS, SCRIPTS / "env.sh", SCRIPTS / "common.sh", *SCRIPTS.glob("ci/*.sh")]


def run(cmd: list[str], env_file: Path | None = None, cwd: Path = ROOT,
        **env: str) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("SGE_", "SLURM_", "PIPELINE_DIR", "DOWNLOAD_DB_ENV"))}
    if env_file is not None:
        e["DOWNLOAD_DB_ENV"] = str(env_file)
    e.update(env)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=cwd, env=e)


@pytest.fixture
def env_file(tmp_path) -> Path:
    activate = Path(sys.prefix) / "bin" / "activate"
    venv = f"source '{activate}'" if activate.is_file() else \
        f'PATH="{Path(sys.executable).parent}:$PATH"'
    f = tmp_path / "env.sh"
    f.write_text(f"""DOWNLOAD_DB_HOME='{ROOT}'
{venv}
DB='{tmp_path}/d.db'
INSTALL_PATH='{tmp_path}/images'
LOG_DIR='{tmp_path}/logs'
MULTIMEDIA=
NICE=0
PROGRESS_EVERY=60
INGEST_ARGS=() DOWNLOAD_ARGS=() FINALIZE_ARGS=() REPORT_ARGS=() CHECK_ARGS=()
QSUB_ARGS=(-P proj) SBATCH_ARGS=(--account=acct)
""")
    return f


@pytest.mark.parametrize("script", ALL, ids=lambda p: str(p.relative_to(SCRIPTS)))
def test_script_parses(script: Path) -> None:
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("script", WRAPPERS, ids=lambda p: str(p.relative_to(SCRIPTS)))
def test_every_directive_says_why(script: Path) -> None:
    """Each #$ / #SBATCH line comes right after a comment line that explains it (or after
    another directive that the same comment covers)."""
    lines = script.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith(("#$", "#SBATCH")):
            before = lines[i - 1]
            assert before.startswith("#") and before.strip() != "#", (script.name, line)
            assert lines[:i] and any(
                ln.startswith("# ") for ln in lines[max(0, i - 6):i]), (script.name, line)


def test_wrappers_never_use_exit_99_or_100() -> None:
    for script in [*WRAPPERS, SCRIPTS / "common.sh"]:
        assert not re.search(r"\bexit\s+(99|100)\b", script.read_text()), script


def _commands(stderr: str, tool: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith(tool + " ")]


def test_sge_dry_run_chains_with_hold_jid(env_file) -> None:
    r = run(["bash", str(SCRIPTS / "sge/submit_pipeline.sh"), "--dry-run"], env_file)
    assert r.returncode == 0, r.stderr
    ingest, download, finalize, report = _commands(r.stderr, "qsub")
    for c in (ingest, download, finalize, report):
        assert f"DOWNLOAD_DB_ENV={env_file}" in c and "PIPELINE_DIR=" in c and "-P proj" in c
    assert "-hold_jid" not in ingest
    assert "-hold_jid INGEST -t 1-4 " in download  # N from the script's own #$ -t line
    assert "-hold_jid DOWNLOAD " in finalize
    assert "-hold_jid INGEST,DOWNLOAD,FINALIZE " in report  # everything before it
    assert not (env_file.parent / "logs").exists()  # a dry run creates nothing


def test_sge_dry_run_reruns_tasks_after_a_job(env_file) -> None:
    r = run(["bash", str(SCRIPTS / "sge/submit_pipeline.sh"), "--dry-run", "--rerun-tasks",
             "2,3", "--tasks", "4", "--after", "77"], env_file)
    assert r.returncode == 0, r.stderr
    t2, t3, finalize, report = _commands(r.stderr, "qsub")
    assert "-hold_jid 77 -t 2 " in t2 and t2.endswith("--shard 2/4")
    assert "-hold_jid 77 -t 3 " in t3 and t3.endswith("--shard 3/4")
    assert "-hold_jid DOWNLOAD_2,DOWNLOAD_3 " in finalize
    assert "-hold_jid 77,DOWNLOAD_2,DOWNLOAD_3,FINALIZE " in report


def test_slurm_dry_run_chains_with_afterok_and_reports_afterany(env_file) -> None:
    r = run(["bash", str(SCRIPTS / "slurm/submit_pipeline.sh"), "--dry-run", "--tasks", "3"],
            env_file)
    assert r.returncode == 0, r.stderr
    ingest, download, finalize, report = _commands(r.stderr, "sbatch")
    for c in (ingest, download, finalize, report):
        assert "--parsable --kill-on-invalid-dep=yes" in c and "--account=acct" in c
        assert f"--export=ALL,DOWNLOAD_DB_ENV={env_file},PIPELINE_DIR=" in c
    assert "--dependency" not in ingest
    assert "--dependency=afterok:INGEST " in download and "--array=1-3 " in download
    assert "%x_%A_%a.log" in download
    assert "--dependency=afterok:DOWNLOAD " in finalize
    assert "--dependency=afterany:INGEST:DOWNLOAD:FINALIZE " in report


@pytest.mark.parametrize("args", [["--rerun-tasks", "2"], ["--rerun-tasks", "5", "--tasks", "4"],
                                  ["--from", "nowhere"], ["--tasks", "0"], ["--bogus"]])
@pytest.mark.parametrize("sched", ["sge", "slurm"])
def test_submit_pipeline_refuses_bad_arguments(env_file, sched, args) -> None:
    r = run(["bash", str(SCRIPTS / sched / "submit_pipeline.sh"), "--dry-run", *args], env_file)
    assert r.returncode == 64, (r.stdout, r.stderr)
    assert not _commands(r.stderr, "qsub") and not _commands(r.stderr, "sbatch")


def test_a_spooled_copy_finds_env_sh_in_the_submit_directory(tmp_path, env_file) -> None:
    # what a scheduler runs: a copy of the script somewhere else, started in the submit dir
    spool = tmp_path / "spool" / "job_scripts"
    spool.mkdir(parents=True)
    copy = spool / "4711"
    shutil.copy(SCRIPTS / "sge/status_report.sh", copy)
    r = run(["bash", str(copy)], cwd=tmp_path)
    assert r.returncode == 2 and "cannot find env.sh" in r.stderr, r.stderr
    (tmp_path / "scripts").mkdir()
    shutil.copy(env_file, tmp_path / "scripts" / "env.sh")
    r = run(["bash", str(copy)], cwd=tmp_path)
    # found it: the report then says the database does not exist (exit 3)
    assert r.returncode == 3 and "database not found" in r.stderr, r.stderr


def test_a_stage_after_a_failed_one_does_not_run(tmp_path, env_file) -> None:
    pipeline = tmp_path / "pipeline"
    pipeline.mkdir()
    (pipeline / "units").write_text("ingest 11\ndownload.1 12.1\nfinalize 13\nreport 14\n")
    (pipeline / "ingest.failed").write_text("SGE job 11 on n1: exit 2\n")
    (pipeline / "download.1.skipped").write_text("SGE job 12.1 on n1: not run\n")
    r = run(["bash", str(SCRIPTS / "sge/finalize.sh")], env_file, PIPELINE_DIR=str(pipeline),
            JOB_ID="13", SGE_ROOT="/nonexistent", SGE_TASK_ID="undefined")
    assert r.returncode == 1, r.stderr
    assert "not running finalize" in r.stderr and "running:" not in r.stderr
    assert "ingest         FAILED: SGE job 11 on n1: exit 2" in r.stderr
    assert (pipeline / "finalize.skipped").read_text().startswith("SGE job 13 on ")
    # the report runs anyway, prints the verdict first, and exits 1
    r = run(["bash", str(SCRIPTS / "slurm/status_report.sh")], env_file,
            PIPELINE_DIR=str(pipeline))
    assert r.returncode == 1
    assert r.stdout.index("FAILED") < r.stdout.index("A STAGE DID NOT END OK")
    assert "finalize       not run:" in r.stdout
    assert (pipeline / "report.failed").is_file() and not (pipeline / "report.ok").exists()


def test_a_stage_after_ok_ones_runs_and_records_its_outcome(tmp_path, env_file) -> None:
    pipeline = tmp_path / "pipeline"
    pipeline.mkdir()
    (pipeline / "units").write_text("ingest 11\nfinalize 13\n")
    (pipeline / "ingest.ok").write_text("SGE job 11: exit 0\n")
    # finalize runs its command; there is no database, so it fails with exit 3, recorded
    r = run(["bash", str(SCRIPTS / "slurm/finalize.sh")], env_file, PIPELINE_DIR=str(pipeline))
    assert r.returncode == 3, r.stderr
    assert "running: python" in r.stderr and "--finalize-only" in r.stderr
    assert "exit 3" in (pipeline / "finalize.failed").read_text()


def test_a_skipped_stage_is_in_runs_and_on_slack_and_the_report_shows_it(tmp_path,
                                                                          env_file) -> None:
    """The gate's skip goes through `gbif-download-db event`: a prerequisite_failed row (the
    main database stays frozen for array tasks) and a Slack post; the report job posts the
    verdict and its PIPELINE section, from the database, names the stage not run."""
    from download_db.arrays.plan import is_frozen
    from tests.helpers import SECRET, Webhook, make_db, q

    db = make_db(tmp_path, ["http://127.0.0.9/a.jpg"])
    assert db == tmp_path / "d.db" and is_frozen(db)  # the DB env_file names
    pipeline = tmp_path / "pipeline"
    pipeline.mkdir()
    (pipeline / "units").write_text("ingest 11\ndownload.1 12.1\nfinalize 13\nreport 14\n")
    (pipeline / "ingest.ok").write_text("SGE job 11 on n1: exit 0\n")
    (pipeline / "download.1.failed").write_text("SGE job 12.1 on n1: exit 73\n")
    hook = Webhook()
    no_proxy = {k: "" for k in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY")}
    try:
        r = run(["bash", str(SCRIPTS / "sge/finalize.sh")], env_file,
                PIPELINE_DIR=str(pipeline), JOB_ID="13", SGE_ROOT="/nonexistent",
                SGE_TASK_ID="undefined", SLACK_WEBHOOK_URL=hook.url, **no_proxy)
        assert r.returncode == 1, r.stderr
        (text,) = hook.wait_for(1)
        assert "finalize not run" in text and "download.1 FAILED: SGE job 12.1" in text, text
        ((outcome, message, depends_on),) = q(db, "SELECT outcome, message, depends_on FROM "
                                                  "runs WHERE stage = 'finalize'")
        assert (outcome, depends_on) == ("prerequisite_failed", "download")
        assert "exit 73" in message and is_frozen(db)
        r = run(["bash", str(SCRIPTS / "slurm/status_report.sh")], env_file,
                PIPELINE_DIR=str(pipeline), SLACK_WEBHOOK_URL=hook.url, **no_proxy)
        assert r.returncode == 1, r.stderr
        texts = hook.wait_for(2)
        assert "pipeline ended, a stage did not end ok" in texts[1]
        assert "download.1 FAILED" in texts[1] and "finalize not run" in texts[1]
        report = r.stdout.split("PIPELINE\n--------\n", 1)[1]
        assert report.index("NOT RUN: finalize") < report.index("GBIFID PROGRESS")
        assert "SECRET" not in r.stdout + r.stderr
        assert SECRET not in str(q(db, "SELECT * FROM runs"))
    finally:
        hook.close()


def test_verify_array_scripts_run_tasks_that_a_merge_applies(tmp_path, env_file) -> None:
    db, root = _saved(tmp_path, 5)  # the env file's DB and INSTALL_PATH
    assert main_cli(["finalize", "--db", str(db), "--no-bar"]) == 0  # frozen
    r = run(["bash", str(SCRIPTS / "slurm/verify.sh"), "--threads", "1"], env_file,
            SLURM_ARRAY_TASK_ID="2", SLURM_ARRAY_TASK_MIN="1", SLURM_ARRAY_TASK_COUNT="2",
            SLURM_ARRAY_TASK_MAX="2")
    assert r.returncode == 0, r.stderr
    assert "running: python -m download_db verify" in r.stderr
    r = run(["bash", str(SCRIPTS / "sge/verify.sh")], env_file, SGE_TASK_ID="1",
            SGE_TASK_FIRST="1", SGE_TASK_LAST="2", SGE_TASK_STEPSIZE="1")
    assert r.returncode == 0, r.stderr
    tasks = sorted(p.name for p in Path(f"{db}.tasks").glob("verify-*.db"))
    assert tasks == ["verify-0001-of-0002.db", "verify-0002-of-0002.db"]
    assert main_cli(["merge", "--db", str(db)]) == 0
    assert q(db, "SELECT count(*) FROM images WHERE last_checked IS NULL") == [(0,)]
