"""Licence normalisation: every licence string of the real multimedia files, GBIF's forms, fuzz."""

from __future__ import annotations

import csv

import pytest
from hypothesis import given
from hypothesis import strategies as st

from download_db.export import licences
from download_db.export.licences import SHORT_FORMS, normalise, parse_filter
from tests.helpers import MULTIMEDIA

# Every distinct licence value in tests/data/multimedia/*.txt, and what it means.
REAL = {
    "": "unknown",
    "??": "unknown",
    "J.A. Cooper": "unknown",  # a name in the licence field states no terms
    "S. Hunter": "unknown",
    "All rights reserved": "other",
    "© All rights reserved": "other",
    "© all rights reserved": "other",
    "© The Board of Trustees of the Royal Botanic Gardens, Kew.": "other",
    "cc-by": "CC-BY",
    "CC BY-SA 4.0": "CC-BY-SA",
    "(c) Field Museum of Natural History - CC BY-NC 4.0": "CC-BY-NC",
    "http://creativecommons.org/publicdomain/zero/1.0/": "CC0",
    "http://creativecommons.org/licenses/by/4.0/": "CC-BY",
    "http://creativecommons.org/licenses/by-sa/4.0/": "CC-BY-SA",
    "http://creativecommons.org/licenses/by-nc/3.0/": "CC-BY-NC",
    "http://creativecommons.org/licenses/by-nc/4.0/": "CC-BY-NC",
    "http://creativecommons.org/licenses/by-nc-sa/3.0/": "CC-BY-NC-SA",
    "http://creativecommons.org/licenses/by-nc-sa/4.0/": "CC-BY-NC-SA",
    "http://creativecommons.org/licenses/by-nc-nd/2.5/": "CC-BY-NC-ND",
    "http://creativecommons.org/licenses/by-nc-nd/4.0/": "CC-BY-NC-ND",
}


def _real_values() -> set[str]:
    values = set()
    for path in sorted(MULTIMEDIA.glob("*.txt")):
        with open(path, encoding="utf-8", newline="") as f:
            for rec in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                values.add(rec["license"])
    return values


def test_every_real_licence_string_is_known_and_normalised():
    values = _real_values()
    assert values == set(REAL), "a data file has a licence string this table does not cover"
    assert {v: normalise(v) for v in values} == {v: REAL[v] for v in values}


@pytest.mark.parametrize(("text", "short"), [
    # GBIF's own enumeration (the occurrence API and registry write these)
    ("CC_BY_4_0", "CC-BY"), ("CC_BY_NC_4_0", "CC-BY-NC"), ("CC0_1_0", "CC0"),
    # https, no trailing slash, odd case, the old by-nd-nc order
    ("https://creativecommons.org/licenses/by-nd/4.0", "CC-BY-ND"),
    ("HTTPS://CreativeCommons.org/licenses/BY-SA/2.0/", "CC-BY-SA"),
    ("http://creativecommons.org/licenses/by-nd-nc/1.0/", "CC-BY-NC-ND"),
    ("http://creativecommons.org/licenses/sampling/1.0/", "other"),
    # long names and free text
    ("Creative Commons Attribution-NonCommercial-ShareAlike 4.0 International", "CC-BY-NC-SA"),
    ("Attribution-NoDerivatives 4.0", "CC-BY-ND"),
    ("Creative Commons Attribution 4.0", "CC-BY"),
    ("CC BY NC ND", "CC-BY-NC-ND"),
    ("cc0", "CC0"),
    ("CC0 1.0 Universal Public Domain Dedication", "CC0"),
    ("Public Domain Mark 1.0", "PD"),
    ("https://creativecommons.org/publicdomain/mark/1.0/", "PD"),
    ("No known copyright restrictions", "PD"),
    ("Copyright 2019 Natural History Museum", "other"),
    ("Usage subject to terms of use", "other"),
    ("   ", "unknown"),
    (None, "unknown"),
])
def test_forms_beyond_the_sample_files(text, short):
    assert normalise(text) == short


@given(st.text(max_size=200))
def test_never_raises_and_always_one_of_the_set(text):
    assert normalise(text) in SHORT_FORMS


@given(st.sampled_from(sorted(REAL)), st.text(max_size=20))
def test_real_strings_with_noise_stay_in_the_set(text, noise):
    assert normalise(noise + text + noise) in SHORT_FORMS


def test_filter_names():
    assert parse_filter("CC0,cc-by, CC-BY-NC-SA") == ["CC0", "CC-BY", "CC-BY-NC-SA"]
    assert parse_filter("other,unknown,PD") == ["other", "unknown", "PD"]
    with pytest.raises(ValueError, match="unknown licence 'CC-BY-4.0'"):
        parse_filter("CC0,CC-BY-4.0")
    assert len(set(SHORT_FORMS)) == 10 and licences.UNKNOWN in SHORT_FORMS
