"""Docs match code: flags and defaults, README = CI, SQL runs, links resolve, module map."""

from __future__ import annotations

import argparse
import ast
import re
import sqlite3 as stdlib_sqlite3
from pathlib import Path

import pytest

from download_db.cli.main import parsers

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PACKAGE = ROOT / "download_db"
MARKDOWN = [ROOT / "README.md", ROOT / "DEPLOYMENT.md", *sorted(DOCS.glob("*.md"))]
SETUP_RUN = (
    "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/gbif-download-db ingest "
    "--reset --multimedia examples/multimedia_sample.txt && .venv/bin/gbif-download-db download "
    "--max-images 50 --max-runtime 120"
)
SETUP_TEST = (
    "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest"
)
COMMAND = "gbif-download-db"


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _outside_fences(text: str) -> list[str]:
    """The lines of a markdown text, with fenced code blocks blanked (a `# comment` is no
    heading, and a link in a code block is no link)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            lines.append("")
        else:
            lines.append("" if fenced else line)
    return lines


def _headings(text: str) -> list[tuple[int, int, str]]:
    """(line index, level, title) of every heading outside code blocks."""
    out = []
    for i, line in enumerate(_outside_fences(text)):
        m = re.match(r"(#{1,6}) (.+?)\s*$", line)
        if m:
            out.append((i, len(m.group(1)), m.group(2)))
    return out


def section(text: str, heading: str) -> str:
    """The body under the one heading whose line is exactly `heading` (e.g. "## Tables"), up to
    the next heading of the same or a higher level. Missing or repeated headings fail loudly:
    a renamed heading must never silently hand back the whole file."""
    level, title = len(heading) - len(heading.lstrip("#")), heading.lstrip("#").strip()
    hits = [(i, lv) for i, lv, t in _headings(text) if lv == level and t == title]
    assert len(hits) == 1, f"expected exactly one heading {heading!r}, found {len(hits)}"
    start = hits[0][0]
    lines = text.splitlines()
    end = next((i for i, lv, _ in _headings(text) if i > start and lv <= level), len(lines))
    return "\n".join(lines[start + 1:end])


def test_section_lookup_fails_on_a_missing_heading() -> None:
    with pytest.raises(AssertionError, match="exactly one heading"):
        section("# A\n## B\ntext\n", "## C")
    assert section("# A\n## B\nb\n### B1\nb1\n## C\nc\n", "## B") == "b\n### B1\nb1"


# -- docs/commands.md against the argparse parsers ------------------------------------------

COMMANDS_MD = _read(DOCS / "commands.md")
PARSERS = parsers()


def _parser_flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--")}


def _table_rows(body: str) -> list[list[str]]:
    """Rows of the flag tables in a section: tables headed `| Flag | Default | Meaning |`."""
    rows, in_flags = [], False
    for line in body.splitlines():
        if not line.startswith("|"):
            in_flags = False
        elif re.fullmatch(r"\|\s*Flag\s*\|\s*Default\s*\|\s*Meaning\s*\|", line.strip()):
            in_flags = True
        elif in_flags and not line.startswith("|-") and not line.startswith("|--"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            assert cells[0].startswith("`-"), f"flag table row without a flag: {line[:60]}"
            rows.append(cells)
    return rows


def _command_heading(name: str) -> str:
    return f"## {name}" if name.startswith(COMMAND) else f"### {name}"


def _documented_flags(name: str) -> set[str]:
    """Flags in the section's table, plus those of the commands its "Flags: those of" line
    names (the alias scripts take a subcommand's flags)."""
    body = section(COMMANDS_MD, _command_heading(name))
    flags = {f for row in _table_rows(body) for f in re.findall(r"`(--[\w-]+)", row[0])}
    for line in body.splitlines():
        if line.startswith("Flags: those of"):
            for ref in re.findall(rf"`({COMMAND} [\w-]+)`", line):
                flags |= _documented_flags(ref)
    return flags


def test_every_command_has_a_section_and_no_section_lacks_a_command() -> None:
    documented = {t for _, lv, t in _headings(COMMANDS_MD) if lv == 2 and t.startswith(COMMAND)}
    assert documented == {n for n in PARSERS if n.startswith(COMMAND)}
    aliases = section(COMMANDS_MD, "## The alias scripts")
    assert {t for _, lv, t in _headings(aliases) if lv == 3} == \
        {n for n in PARSERS if not n.startswith(COMMAND)}


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_documented_flags_are_the_parser_flags(name: str) -> None:
    """Both ways: every flag the parser takes is documented, and no documented flag is
    missing from the parser."""
    parser, documented = _parser_flags(PARSERS[name]), _documented_flags(name)
    assert parser - documented == set(), f"{name}: flags not documented in docs/commands.md"
    assert documented - parser == set(), f"{name}: documented flags the parser does not have"


def _default_forms(value: object) -> set[str]:
    """How a default may be written in the Default column."""
    if isinstance(value, Path):
        return {value.name}
    if isinstance(value, tuple):
        return {",".join(f"{v:g}" for v in value)}
    if isinstance(value, (int, float)):
        forms = {f"{value:g}" if isinstance(value, float) else str(value)}
        if value >= 2**20:
            forms |= {f"{value / 2**20:g}M", f"{value / 2**30:g}G"}
        return forms
    return {str(value)}


@pytest.mark.parametrize("name", sorted(n for n in PARSERS if n.startswith(COMMAND)))
def test_documented_defaults_are_the_parser_defaults(name: str) -> None:
    actions = {s: a for a in PARSERS[name]._actions for s in a.option_strings}
    rows = _table_rows(section(COMMANDS_MD, _command_heading(name)))
    checked = 0
    for row in rows:
        flag = re.search(r"`(--[\w-]+)", row[0]).group(1)
        default = actions[flag].default
        if default in (None, False, "", argparse.SUPPRESS) or isinstance(default, bool):
            continue
        cell = row[1].replace("`", "").replace(",", "")
        assert any(form.replace(",", "") in cell for form in _default_forms(default)), \
            f"{name} {flag}: documented default {row[1]!r}, parser default {default!r}"
        checked += 1
    assert checked or all(a.default in (None, False, argparse.SUPPRESS) for a in actions.values())


def test_every_flag_has_help_text() -> None:
    for name, parser in PARSERS.items():
        for a in parser._actions:
            assert a.help or not a.option_strings, (name, a.option_strings)


def test_the_pipeline_table_lists_every_subcommand() -> None:
    table = section(README, "## The pipeline")
    for name in PARSERS:
        if name.startswith(f"{COMMAND} "):
            assert f"`{name.split()[1]}`" in table, f"{name} missing from the README pipeline"


# -- README ---------------------------------------------------------------------------------

README = _read(ROOT / "README.md")


def test_the_package_tour_lists_every_folder() -> None:
    tour = section(README, "## A tour of the package")
    listed = set(re.findall(r"^\| `(\w+)/` \|", tour, re.M))
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert listed - {"download_db"} == folders


def test_readme_opens_with_the_two_newcomer_commands() -> None:
    blocks = re.findall(r"```(?:bash|sh|shell)?\n(.*?)```", README, re.S)
    assert blocks[0].strip() == SETUP_RUN
    assert blocks[1].strip() == SETUP_TEST


def test_ci_runs_the_readme_test_command() -> None:
    assert SETUP_TEST in _read(ROOT / ".ci" / "run")


def test_readme_stays_short() -> None:
    assert len(README.splitlines()) <= 200


def test_sample_file_exists() -> None:
    assert (ROOT / "examples" / "multimedia_sample.txt").is_file()


def test_deployment_has_a_troubleshooting_table() -> None:
    table = section(_read(ROOT / "DEPLOYMENT.md"), "## Troubleshooting")
    assert re.search(r"\|\s*Symptom\s*\|\s*Cause\s*\|\s*Fix\s*\|", table, re.I)
    assert table.count("\n| ") >= 20


# -- links ----------------------------------------------------------------------------------

def _slug(title: str) -> str:
    """GitHub's anchor for a heading."""
    title = re.sub(r"[^\w\- ]", "", title.strip().lower())
    return title.replace(" ", "-")


def _links() -> list[tuple[Path, str]]:
    out = []
    for md in MARKDOWN:
        for line in _outside_fences(_read(md)):
            line = re.sub(r"`[^`]*`", "", line)  # a `[x](y)` in code is no link
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if not re.match(r"[a-z]+:", target):
                    out.append((md, target))
    return out


def test_docs_link_to_each_other() -> None:
    targets = {(md.name, t) for md, t in _links()}
    assert ("README.md", "DEPLOYMENT.md") in targets
    assert {f"docs/{n}" for n in ("commands.md", "database.md", "design.md",
                                  "architecture.md")} <= {t for md, t in targets}


@pytest.mark.parametrize("md, target", _links(),
                         ids=lambda v: v.name if isinstance(v, Path) else v)
def test_relative_link_resolves(md: Path, target: str) -> None:
    path, _, anchor = target.partition("#")
    dest = (md.parent / path).resolve() if path else md
    assert dest.exists(), f"{md.name}: link to missing file {target}"
    if anchor:
        slugs = {_slug(t) for _, _, t in _headings(_read(dest))}
        assert anchor in slugs, f"{md.name}: no heading for #{anchor} in {dest.name}"


def test_slug_matches_github() -> None:
    assert _slug("`status_report.py`") == "status_reportpy"
    assert _slug("gbif-download-db ingest") == "gbif-download-db-ingest"
    assert _slug("Between arrays: retries, N, and other changes") == \
        "between-arrays-retries-n-and-other-changes"


# -- docs/database.md: every statement of the SQL cookbook runs -----------------------------

DATABASE_MD = _read(DOCS / "database.md")
WRITES = ("update", "delete", "insert", "replace")


def test_error_type_table_matches_the_vocabulary() -> None:
    """Transient in the table = transient in states.py, plus `other` (an unexpected error is
    recorded as failed_transient so that it is retried, though it is no network symptom)."""
    from download_db.states import TRANSIENT_ERRORS

    rows = re.findall(r"^\| `([\w<>]+)` \| (yes|no) \|", section(DATABASE_MD, "## Error types"),
                      re.M)
    transient = {name for name, verdict in rows if verdict == "yes"}
    assert transient == TRANSIENT_ERRORS | {"other"}
    assert {"http_<code>", "invalid_content_type", "not_an_image"} <= {n for n, _ in rows}


def test_every_table_and_column_is_documented(build) -> None:
    code, db = build(ROOT / "examples" / "multimedia_sample.txt")
    assert code == 0
    tables = section(DATABASE_MD, "## Tables")
    conn = stdlib_sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    names = [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type IN "
                                        "('table', 'view') AND name NOT LIKE 'sqlite_%'")]
    assert "images" in names
    missing = [f"{t}.{c}" for t in names
               for c in [t, *(r[1] for r in conn.execute(f"PRAGMA table_info({t})"))]
               if f"`{c}`" not in tables]
    conn.close()
    assert missing == [], "not in the Tables section of docs/database.md"


def _cookbook() -> list[str]:
    blocks = re.findall(r"```sql\n(.*?)```", section(DATABASE_MD, "## Ad hoc SQL"), re.S)
    return [s for b in blocks for s in (s.strip() for s in b.split(";")) if s]


def test_cookbook_sql_runs(build, tmp_path) -> None:
    """Reads on a read-only connection to a freshly built database; writes on a copy where
    the rows they target exist, and each must change at least one row."""
    code, db = build(ROOT / "examples" / "multimedia_sample.txt")
    assert code == 0
    stmts = _cookbook()
    reads = [s for s in stmts if not s.lower().startswith(WRITES)]
    writes = [s for s in stmts if s.lower().startswith(WRITES)]
    assert len(reads) >= 20 and writes, "the cookbook lost its examples"
    ro = stdlib_sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    for stmt in reads:
        ro.execute(stmt).fetchall()
    copy = stdlib_sqlite3.connect(tmp_path / "copy.db")
    ro.backup(copy)
    ro.close()
    # give every host named in a write something for it to undo
    for host in set(re.findall(r"host = '([^']+)'", " ".join(writes))):
        (hid,) = copy.execute("SELECT host_id FROM hosts WHERE host = ?", (host,)).fetchone()
        copy.execute("UPDATE images SET status = 'failed_permanent', attempts = 1, "
                     "error_type = 'http_404' WHERE host_id = ?", (hid,))
        copy.execute("UPDATE hosts SET breaker_state = 'open', quarantined = 1, "
                     "quarantined_at = 1, cooldown_until = 9e9 WHERE host_id = ?", (hid,))
    copy.commit()
    for stmt in writes:
        before = copy.total_changes
        copy.execute(stmt)
        assert copy.total_changes > before, f"changed nothing: {stmt[:80]}"
    copy.commit()
    copy.close()


# -- docs/architecture.md: one line per module, equal to (or containing) its docstring ------

def _module_map() -> dict[str, str]:
    rows = re.findall(r"^\| `(download_db/[\w/]+\.py)` \| (.+?) \|$",
                      _read(DOCS / "architecture.md"), re.M)
    return dict(rows)


def test_module_map_lists_every_module_once() -> None:
    documented = _module_map()
    actual = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")}
    assert sorted(actual - documented.keys()) == [], "modules missing from docs/architecture.md"
    assert sorted(documented.keys() - actual) == [], "docs/architecture.md lists no such module"


def test_module_map_lines_match_the_docstrings() -> None:
    for path, line in _module_map().items():
        doc = ast.get_docstring(ast.parse(_read(ROOT / path)))
        assert doc, f"{path} has no module docstring"
        first = doc.strip().splitlines()[0].strip()
        assert first.replace("|", "\\|") in line, f"{path}: {line!r} lacks {first!r}"
