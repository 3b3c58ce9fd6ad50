"""Host policy (web/policy.py): parsing, precedence, bad files, and limits held end to end."""

from __future__ import annotations

import sqlite3 as stdlib_sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from download_db.cli.main import main
from download_db.config import DownloadConfig
from download_db.download.stage import run_download
from download_db.errors import InputError
from download_db.web import policy
from download_db.web.policy import HostLimits, HostPolicy
from download_db.web.politeness import HostGate, Politeness
from tests.helpers import row, write_multimedia
from tests.imageserver import ImageServer

FLAGS = HostLimits(max_at_once=4, max_rate=5.0)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "limits.toml"
    path.write_text(text, encoding="utf-8")
    return path


# -- the shipped policy ---------------------------------------------------------------------


def test_shipped_policy_parses_and_every_entry_cites_its_source():
    default, entries = policy.parse(policy.SHIPPED, policy.SHIPPED_NAME)
    assert default == {} and entries
    blocks = policy.SHIPPED.split("\n\n")
    assert len(blocks) == len(entries)
    for block in blocks:  # each table is preceded by a comment naming its source
        comment = "".join(line for line in block.splitlines() if line.startswith("#"))
        assert "." in comment and "(" in comment, block


def test_shipped_limits_without_a_user_file():
    p = policy.load(None, FLAGS)
    assert p.limits("api.gbif.org") == HostLimits(1, 5.0)
    assert p.limits("inaturalist-open-data.s3.amazonaws.com") == HostLimits(32, 0.0, True, 4)
    assert p.limits("s3.amazonaws.com") == FLAGS  # the glob needs a label before it
    assert p.limits("images.example.org") == FLAGS
    assert p.largest() == 32


# -- the user's file -------------------------------------------------------------------------


def test_user_file_overrides_shipped_entries_key_by_key_and_sets_defaults(tmp_path):
    path = write(tmp_path, """
[default]
max_rate = 2

[hosts."api.gbif.org"]
max_rate = 0.5

[hosts."images.example.org"]
max_at_once = 2
""")
    p = policy.load(path, FLAGS)
    assert p.limits("api.gbif.org") == HostLimits(1, 0.5)  # max_at_once still the shipped 1
    assert p.limits("images.example.org") == HostLimits(2, 2.0)  # rate from [default]
    assert p.limits("other.example.org") == HostLimits(4, 2.0)  # flags, then [default]


def test_adaptive_and_start_per_host_and_by_default(tmp_path):
    path = write(tmp_path, """
[default]
adaptive = true
[hosts."fragile.org"]
adaptive = false
max_at_once = 2
[hosts."strong.org"]
max_at_once = 40
start = 8
""")
    p = policy.load(path, FLAGS)
    assert p.limits("fragile.org") == HostLimits(2, 5.0, False, 2)
    assert p.limits("strong.org") == HostLimits(40, 5.0, True, 8)
    assert p.limits("other.org") == HostLimits(4, 5.0, True, 2)
    # --adaptive: unknown hosts adapt within [1, 16] from 2, no rate of their own
    assert policy.load(None, policy.ADAPTIVE_DEFAULT).limits("x.org") == HostLimits(
        16, 0.0, True, 2)


def test_most_specific_pattern_wins(tmp_path):
    path = write(tmp_path, """
[hosts.".example.org"]
max_at_once = 1
[hosts."*.img.example.org"]
max_at_once = 2
[hosts."a.img.example.org"]
max_at_once = 3
[hosts."*.example.org"]
max_at_once = 5
[hosts."A.IMG.EXAMPLE.ORG."]
max_rate = 9
""")
    p = policy.load(path, FLAGS)
    assert p.limits("a.img.example.org") == HostLimits(3, 9.0)  # exact (case, dot folded)
    assert p.limits("b.img.example.org").max_at_once == 2  # the longer glob
    assert p.limits("www.example.org").max_at_once == 1  # suffix beats a glob as long
    assert p.limits("example.org").max_at_once == 1  # a suffix covers the domain itself
    assert p.limits("EXAMPLE.ORG").max_at_once == 1
    assert p.pattern("b.img.example.org") == "*.img.example.org"
    assert p.pattern("example.net") is None


@st.composite
def patterns(draw):
    labels = st.sampled_from(["a", "b", "img", "example", "org", "s3"])
    name = ".".join(draw(st.lists(labels, min_size=1, max_size=4)))
    kind = draw(st.sampled_from(["exact", "suffix", "glob"]))
    return {"exact": name, "suffix": "." + name, "glob": "*." + name}[kind]


@given(st.lists(patterns(), max_size=8, unique=True),
       st.lists(st.sampled_from(["a", "b", "img", "example", "org", "s3"]), min_size=1,
                max_size=5))
def test_the_chosen_pattern_matches_and_none_matching_is_more_specific(pats, labels):
    host = ".".join(labels)
    p = HostPolicy(FLAGS, {pat: {"max_at_once": i + 1} for i, pat in enumerate(pats)})
    chosen = p.pattern(host)
    matching = [pat for pat in pats if policy.matches(pat, host)]
    if chosen is None:
        assert matching == [] and p.limits(host) == FLAGS
    else:
        assert chosen in matching
        assert all(policy.specificity(m) <= policy.specificity(chosen) for m in matching)
        assert p.limits(host).max_at_once == pats.index(chosen) + 1


# -- bad files: one line naming the file and the problem --------------------------------------


@pytest.mark.parametrize(("text", "problem"), [
    ("[hosts.x\nmax_at_once = 1", "not valid TOML"),
    ("[limits]\nx = 1", "unknown table [limits]"),
    ('[hosts."a.org"]\nmax_concurrency = 2', "unknown key 'max_concurrency'"),
    ('[hosts."a.org"]\nmax_at_once = 0', "max_at_once must be an integer >= 1, not 0"),
    ('[hosts."a.org"]\nmax_at_once = 2.5', "max_at_once must be an integer >= 1"),
    ('[hosts."a.org"]\nmax_at_once = true', "max_at_once must be an integer >= 1"),
    ('[hosts."a.org"]\nmax_rate = -1', "max_rate must be a number >= 0"),
    ('[hosts."a.org"]\nmax_rate = "fast"', "max_rate must be a number >= 0"),
    ("[default]\nmax_at_once = 0", "[default]: max_at_once must be"),
    ('[hosts."https://a.org/"]\nmax_at_once = 1', "not a host name or pattern"),
    ('[hosts."*"]\nmax_at_once = 1', "not a host name or pattern"),
    ('hosts = 3', "hosts must be tables"),
    ('[hosts."a.org"]\nadaptive = 1', "adaptive must be true or false, not 1"),
    ('[hosts."a.org"]\nstart = 0', "start must be an integer >= 1, not 0"),
    ('[hosts]\n"a.org" = 3', "must be a table of keys"),
])
def test_a_bad_file_is_one_line_naming_the_file_and_the_problem(tmp_path, text, problem):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as e:
        policy.load(path, FLAGS)
    message = str(e.value)
    assert message.startswith(f"--host-policy {path}: ") and problem in message
    assert "\n" not in message and e.value.exit_code == 2


def test_a_missing_or_binary_file(tmp_path):
    with pytest.raises(InputError, match=r"cannot read it: No such file"):
        policy.load(tmp_path / "nope.toml", FLAGS)
    path = tmp_path / "bin.toml"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InputError, match="cannot read it"):
        policy.load(path, FLAGS)


def test_the_cli_exits_2_with_one_line_before_touching_anything(tmp_path, capsys):
    path = write(tmp_path, '[hosts."a.org"]\nmax_at_once = 0\n')
    code = main(["download", "--db", str(tmp_path / "none.db"), "--host-policy", str(path),
                 "--no-bar"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert [line for line in err if "error" in line] == [
        f"gbif-download-db download: error: --host-policy {path}: [hosts.\"a.org\"]: "
        "max_at_once must be an integer >= 1, not 0"]
    assert not (tmp_path / "none.db").exists()


# -- the gate and the downloader follow the policy ---------------------------------------------


def test_the_gate_gives_each_host_its_own_slots_and_split_shares(tmp_path):
    p = HostPolicy(HostLimits(2, 0.0), {"big.org": {"max_at_once": 6, "max_rate": 10.0}})
    gate = HostGate(tmp_path / "locks", Politeness(concurrency=2), hosts=p,
                    split={"big.org": (1, 3)})
    try:
        assert (gate.concurrency("big.org"), gate.rate("big.org")) == (2, 10.0 / 3)
        assert (gate.concurrency("small.org"), gate.most_at_once()) == (2, 6)
        slots = [gate.acquire("other.org", 0.0) for _ in range(3)]
        assert [isinstance(s, float) for s in slots] == [False, False, True]
    finally:
        gate.close()


def test_max_at_once_per_host_holds_end_to_end(tmp_path):
    with ImageServer("127.0.0.14") as one, ImageServer("127.0.0.15") as three:
        urls = [s.url(f"/slow/p{i}.jpg?delay=0.4&w=64&h=64") for s in (one, three)
                for i in range(9)]
        mm = write_multimedia(tmp_path / "m.txt", [row(1001 + i, u) for i, u in enumerate(urls)])
        db = tmp_path / "d.db"
        assert main(["ingest", "--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
        path = write(tmp_path, f"""
[hosts."{one.host}"]
max_at_once = 1
[hosts."{three.host}"]
max_at_once = 3
""")
        cfg = DownloadConfig(db=db, install_path=tmp_path / "images", threads=8,
                             per_host_concurrency=2, per_host_rate=0, connect_timeout=2,
                             read_timeout=3, deadline=6, lease=30, wait_for_retries=0,
                             lock_dir=tmp_path / "locks", progress_every=1000, bar=False,
                             user_agent="gbif-download-db-tests", host_policy=path)
        run_download(replace(cfg, processes=1))
        assert one.stats()["max_concurrent"] == 1
        # above the flag's 2: the policy raises a host's limit as well as lowering it
        assert three.stats()["max_concurrent"] == 3
    c = stdlib_sqlite3.connect(db)
    try:
        assert c.execute("SELECT count(*) FROM images WHERE status = 'success'").fetchone()[0] \
            == len(urls)
    finally:
        c.close()
