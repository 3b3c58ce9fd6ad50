"""gbif-download-db: every subcommand's help, --version, usage errors, the stages end to end
through `python -m download_db` and the console script, and the aliases' flags."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from download_db import __version__
from download_db.cli.main import COMMANDS, PROG, main, parsers
from tests.helpers import q, row, write_multimedia
from tests.imageserver import ImageServer

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
CONSOLE = Path(sys.executable).parent / PROG
PARSERS = parsers()


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--")}


def _run(*cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SLACK_WEBHOOK_URL"}
    return subprocess.run(list(cmd), capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=100)


def _module(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return _run(sys.executable, "-m", "download_db", *args, cwd=cwd)


def test_parsers_cover_every_command_and_alias() -> None:
    assert set(PARSERS) == {PROG, *(f"{PROG} {c}" for c in COMMANDS),
                            "init_download_db.py", "image_install_db.py", "status_report.py"}
    for name, parser in PARSERS.items():
        assert parser.prog == name


@pytest.mark.parametrize("command", COMMANDS)
def test_each_subcommand_help_lists_its_flags_and_examples(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {PROG} {command} ")
    flags = _flags(PARSERS[f"{PROG} {command}"])
    assert "--db" in flags
    for flag in flags:
        assert flag in out, f"{command} --help does not show {flag}"
    assert "examples:" in out and f"{PROG} {command}" in out.split("examples:")[1]


def test_top_level_help_lists_every_subcommand() -> None:
    p = _module("--help", cwd=ROOT)
    assert p.returncode == 0, p.stderr
    listed = re.findall(r"^    (\w+)  ", p.stdout, re.M)
    assert listed == list(COMMANDS)
    assert "examples:" in p.stdout


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"{PROG} {__version__}"


@pytest.mark.parametrize("args", [["frobnicate"], [], ["report", "--no-such-flag"]])
def test_usage_errors_exit_2_with_one_error_line(args: list[str]) -> None:
    p = _module(*args, cwd=ROOT)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    lines = p.stderr.splitlines()
    assert lines[0].startswith(f"usage: {PROG}")
    errors = [ln for ln in lines if ": error: " in ln]
    assert len(errors) == 1 and errors[0] == lines[-1], p.stderr


def test_a_domain_error_is_one_line_and_its_exit_code(tmp_path) -> None:
    p = _module("report", "--db", str(tmp_path / "none.db"), cwd=tmp_path)
    assert p.returncode == 3
    assert p.stderr.strip() == f"{PROG} report: error: database not found: " \
                               f"{tmp_path / 'none.db'}"


@pytest.mark.parametrize(("alias", "commands", "extra"), [
    ("init_download_db.py", ["ingest"], {"--version"}),
    ("image_install_db.py", ["download"], {"--version"}),
    ("status_report.py", ["report", "check"], {"--version", "--check"}),
])
def test_aliases_take_their_subcommands_flags(alias: str, commands: list[str],
                                              extra: set[str]) -> None:
    expected = set().union(*(_flags(PARSERS[f"{PROG} {c}"]) for c in commands)) | extra
    assert _flags(PARSERS[alias]) == expected


@pytest.fixture(scope="module")
def server():
    with ImageServer("127.0.0.6") as s:
        yield s


def test_every_stage_end_to_end(tmp_path, server) -> None:
    """ingest with python -m, download with the console script against the loopback server,
    then report, check, finalize and merge: each exits 0 and does its job."""
    if not CONSOLE.exists():
        pytest.skip(f"console script not installed: {CONSOLE} (pip install -e .)")
    urls = [server.url(f"/img/cli{i}.jpg") for i in range(3)] + [server.url("/status/404")]
    mm = write_multimedia(tmp_path / "m.txt", [row(2001 + i, u) for i, u in enumerate(urls)])
    db = tmp_path / "d.db"
    where = ("--db", str(db))

    p = _module("ingest", *where, "--multimedia", str(mm), "--no-bar", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert q(db, "SELECT count(*) FROM images") == [(4,)]

    p = _run(str(CONSOLE), "download", *where, "--install-path", str(tmp_path / "images"),
             "--lock-dir", str(tmp_path / "locks"), "--no-bar", "--per-host-rate", "0",
             "--timeout", "2,2", "--deadline", "5", "--lease", "30", "--wait-for-retries", "0",
             "--contact", "tests@example.org", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    assert q(db, "SELECT status, count(*) FROM images GROUP BY status ORDER BY status") == \
        [("failed_permanent", 1), ("success", 3)]
    assert len(list((tmp_path / "images").rglob("*.jpg"))) == 3

    p = _module("report", *where, "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert '"success": 3' in p.stdout

    p = _module("check", *where, "--install-path", str(tmp_path / "images"), cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.splitlines()[-1].startswith("OK in ")

    p = _module("finalize", *where, "--no-bar", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert q(db, "SELECT gbif_id, status FROM gbif_ids ORDER BY gbif_id") == \
        [(2001, "done"), (2002, "done"), (2003, "done"), (2004, "failed")]

    p = _module("merge", *where, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert q(db, "SELECT stage, outcome FROM runs ORDER BY run_id") == \
        [("ingest", "ok"), ("download", "ok"), ("finalize", "ok"), ("merge", "ok")]


def test_check_finds_a_missing_file_and_exits_1(tmp_path, server) -> None:
    mm = write_multimedia(tmp_path / "m.txt", [row(3001, server.url("/img/gone.jpg"))])
    db = tmp_path / "d.db"
    assert main(["ingest", "--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
    images = tmp_path / "images"
    assert main(["download", "--db", str(db), "--install-path", str(images), "--lock-dir",
                 str(tmp_path / "locks"), "--no-bar", "--per-host-rate", "0",
                 "--wait-for-retries", "0", "--contact", "tests@example.org"]) == 0
    for f in images.rglob("*.jpg"):
        f.unlink()
    assert main(["check", "--db", str(db), "--install-path", str(images)]) == 1
    assert main(["check", "--db", str(db), "--no-files"]) == 0
