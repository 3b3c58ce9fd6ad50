"""Docs match code: flags documented, README commands = CI, README SQL runs."""

from __future__ import annotations

import re
import sqlite3 as stdlib_sqlite3
from pathlib import Path

import pytest

from download_db.cli.main import _download_parser, _init_parser
from download_db.cli.report import _parser as _status_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
DEPLOYMENT = (ROOT / "DEPLOYMENT.md").read_text(encoding="utf-8")
SETUP_RUN = (
    "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/python init_download_db.py "
    "--reset --multimedia examples/multimedia_sample.txt && .venv/bin/python image_install_db.py "
    "--max-images 50"
)
SETUP_TEST = (
    "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest"
)


def _flags(parser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--")}


@pytest.mark.parametrize("flag", sorted(_flags(_init_parser()) - {"--help"}))
def test_every_init_flag_is_documented(flag: str) -> None:
    assert re.search(rf"`{re.escape(flag)}\b", README), f"{flag} is not documented in README.md"


@pytest.mark.parametrize("flag", sorted(_flags(_download_parser()) - {"--help"}))
def test_every_download_flag_is_documented(flag: str) -> None:
    section = README.split("## `image_install_db.py`", 1)[-1]
    assert re.search(rf"`{re.escape(flag)}\b", section), \
        f"{flag} is not documented in the image_install_db.py section of README.md"


@pytest.mark.parametrize("flag", sorted(_flags(_status_parser()) - {"--help"}))
def test_every_status_report_flag_is_documented(flag: str) -> None:
    section = README.split("## `status_report.py`", 1)[-1].split("\n## ", 1)[0]
    assert re.search(rf"`{re.escape(flag)}\b", section), \
        f"{flag} is not documented in the status_report.py section of README.md"


def test_every_flag_has_help_text() -> None:
    for parser in (_init_parser(), _download_parser(), _status_parser()):
        for a in parser._actions:
            assert a.help, a.option_strings


def test_readme_opens_with_the_two_newcomer_commands() -> None:
    blocks = re.findall(r"```(?:bash|sh|shell)?\n(.*?)```", README, re.S)
    assert blocks[0].strip() == SETUP_RUN
    assert blocks[1].strip() == SETUP_TEST


def test_ci_runs_the_readme_test_command() -> None:
    assert SETUP_TEST in (ROOT / ".ci" / "run").read_text()


def test_sample_file_exists() -> None:
    assert (ROOT / "examples" / "multimedia_sample.txt").is_file()


def test_deployment_has_a_troubleshooting_table() -> None:
    assert re.search(r"\|\s*Symptom\s*\|\s*Cause\s*\|\s*Fix\s*\|", DEPLOYMENT, re.I)


def test_readme_sql_examples_run(build) -> None:
    code, db = build(ROOT / "examples" / "multimedia_sample.txt")
    assert code == 0
    blocks = re.findall(r"```sql\n(.*?)```", README, re.S)
    assert blocks, "README has no ```sql examples"
    conn = stdlib_sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    for block in blocks:
        for stmt in filter(None, (s.strip() for s in block.split(";"))):
            if stmt.lower().startswith(("update", "delete", "insert")):
                continue  # write examples are documented for operators, not run here
            conn.execute(stmt).fetchall()
    conn.close()
