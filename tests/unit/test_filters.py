"""Extraction filters: each filter, lm-eval's regex filter side by side, and bad filters at load."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.errors import EvalSetError
from monitor.evals.evalset import load_evalset
from monitor.evals.filters import FALLBACK, apply_filters, parse_filters


def chain(*raw: object) -> list:
    return list(parse_filters(list(raw)))


def test_simple_filters() -> None:
    assert apply_filters(chain("strip"), "  B \n") == "B"
    assert apply_filters(chain("lowercase"), "AbC") == "abc"
    assert apply_filters(chain("uppercase"), "AbC") == "ABC"
    assert apply_filters(chain("strip", "lowercase"), "  The B ") == "the b"


def test_regex_takes_the_first_or_last_match_and_falls_back() -> None:
    text = "The answer is (B). No wait, the answer is C."
    first = chain({"regex": r"answer is \(?([A-D])\)?"})
    last = chain({"regex": r"answer is \(?([A-D])\)?", "take": "last"})
    assert apply_filters(first, text) == "B"
    assert apply_filters(last, text) == "C"
    assert apply_filters(first, "no idea") == FALLBACK == "[invalid]"
    assert apply_filters(chain({"regex": "x(y)", "fallback": "none"}), "abc") == "none"
    # group: N keeps that group of each match (0: the whole match)
    assert apply_filters(chain({"regex": r"(\d+)-(\d+)", "group": 2}), "1-2 and 3-4") == "2"
    assert apply_filters(chain({"regex": r"(\d+)-(\d+)", "group": 0, "take": "last"}), "1-2 and 3-4") == "3-4"


@pytest.mark.parametrize(
    ("pattern", "take", "text"),
    [
        (r"#### (\-?[0-9\.\,]+)", "first", "so #### 42 and #### 7"),
        (r"#### (\-?[0-9\.\,]+)", "last", "so #### 42 and #### 7"),
        (r"answer is \(?([A-D])\)?", "first", "nothing here"),
        (r"(A)|(B)", "first", "then B"),
        (r"[A-D]", "last", "A then D "),
    ],
)
def test_regex_matches_lm_eval_regex_filter(pattern: str, take: str, text: str) -> None:
    extraction = pytest.importorskip("lm_eval.filters.extraction")
    theirs = extraction.RegexFilter(regex_pattern=pattern, group_select=0 if take == "first" else -1)
    expected = theirs.apply([[text]], [{}])[0][0]
    assert apply_filters(chain({"regex": pattern, "take": take}), text) == expected


def test_json_extract() -> None:
    f = chain({"json_extract": "a.b"})
    assert apply_filters(f, '```json\n{"a": {"b": "yes"}}\n```') == "yes"
    assert apply_filters(f, '{"a": {"b": {"c": 1}}}') == '{"c":1}'
    assert apply_filters(chain({"json_extract": "items.1"}), '{"items": [1, 2]}') == "2"
    assert apply_filters(f, "not json") == FALLBACK
    assert apply_filters(f, '{"a": {}}') == FALLBACK


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([{"regex": "(unclosed"}], "filters[0].regex: does not compile"),
        (["casefold"], "filters[0]: unknown filter 'casefold'"),
        ([{"regex": "a", "take": "middle"}], "filters[0].take: must be first or last"),
        ([{"regex": "(a)", "group": 2}], "filters[0].group: the pattern has 1 groups"),
        ([{"json_extract": "a..b"}], "filters[0].json_extract"),
        ([{"regex": "a", "flags": "i"}], "filters[0].flags: unknown option"),
    ],
)
def test_bad_filters_are_refused(raw: list, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        parse_filters(raw)


def test_a_regex_that_does_not_compile_is_a_located_load_error(tmp_path: Path) -> None:
    (tmp_path / "evalset.yaml").write_text(
        "name: t\ntask: generate\nprompt: '{input}'\nmetrics:\n  - exact_match\n"
        "  - name: exact_match\n    key: letter\n    filters:\n      - {regex: '(B'}\n",
        encoding="utf-8",
    )
    (tmp_path / "data.jsonl").write_text('{"id": 1, "input": "q", "target": "B"}\n', encoding="utf-8")
    with pytest.raises(EvalSetError) as exc:
        load_evalset(tmp_path)
    (problem,) = exc.value.problems
    assert problem.location.endswith("evalset.yaml:8")
    assert problem.message.startswith("metrics.1.filters[0].regex: does not compile")
