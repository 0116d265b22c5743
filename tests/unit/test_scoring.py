"""Scoring: multiple-choice decisions, generation metrics and standard errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monitor.evals.evalset import EvalItem
from monitor.evals.scoring import (
    aggregate,
    mean_stderr,
    normalize_text,
    score_generation,
    score_multiple_choice,
)


def mc_item(target: str = "b", choices: tuple[str, ...] = ("a", "b", "ccc")) -> EvalItem:
    return EvalItem("i", {"input": "x"}, target, choices)


def gen_item(target: object, **fields: object) -> EvalItem:
    return EvalItem("g", {"input": "x", **fields}, target)


def test_acc_picks_highest_loglikelihood_first_on_ties() -> None:
    scored = score_multiple_choice(mc_item(), [-3.0, -1.0, -2.0], ["acc"])
    assert scored.prediction == "b" and scored.scores == {"acc": 1.0}
    # numpy.argmax semantics (lm-eval): the first of equal maxima wins.
    tie = score_multiple_choice(mc_item(), [-1.0, -1.0, -2.0], ["acc"])
    assert tie.prediction == "a" and tie.scores["acc"] == 0.0
    assert int(np.argmax([-1.0, -1.0, -2.0])) == 0


def test_acc_norm_divides_by_choice_length() -> None:
    # "ccc" has the lowest total but the highest per-character log-likelihood.
    scored = score_multiple_choice(mc_item(target="ccc"), [-2.0, -1.5, -3.0], ["acc", "acc_norm"])
    assert scored.scores == {"acc": 0.0, "acc_norm": 1.0}


def test_mean_stderr_matches_lm_eval_convention() -> None:
    values = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    got = mean_stderr(values)
    arr = np.array(values)
    assert got.value == pytest.approx(arr.mean())
    assert got.stderr == pytest.approx(arr.std(ddof=1) / math.sqrt(len(arr)))
    assert got.n == 7
    assert math.isnan(mean_stderr([1.0]).stderr)
    assert mean_stderr([]).n == 0


def test_aggregate_skips_missing_scores() -> None:
    out = aggregate([{"acc": 1.0}, {"acc": 0.0}, {}], ["acc"])
    assert out["acc"].n == 2 and out["acc"].value == 0.5


def test_normalisation_is_squad_style() -> None:
    assert normalize_text("  The  Billing, team! ") == "billing team"


@pytest.mark.parametrize(
    ("prediction", "target", "expected"),
    [
        ("Billing.", "billing", 1.0),
        ("the billing", "Billing", 1.0),
        ("billing team", "billing", 0.0),
    ],
)
def test_exact_match_text(prediction: str, target: str, expected: float) -> None:
    assert score_generation(gen_item(target), prediction, ["exact_match"]).scores["exact_match"] == expected


def test_exact_match_json_target_compares_objects() -> None:
    item = gen_item({"category": "billing", "priority": "high"})
    assert (
        score_generation(item, '{"priority": "high", "category": "billing"}', ["exact_match"]).scores[
            "exact_match"
        ]
        == 1.0
    )
    assert score_generation(item, '{"category": "billing"}', ["exact_match"]).scores["exact_match"] == 0.0


def test_contains_and_token_f1() -> None:
    item = gen_item("reset the password")
    scores = score_generation(item, "Please reset your password now", ["contains", "token_f1"]).scores
    assert scores["contains"] == 0.0
    # prediction tokens: please reset your password now (5); gold: reset password (2, "the" dropped); common 2
    precision, recall = 2 / 5, 2 / 2
    assert scores["token_f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert score_generation(item, "ok, reset the password.", ["contains"]).scores["contains"] == 1.0


def test_regex_uses_pattern_field_or_target() -> None:
    assert score_generation(gen_item("x", pattern=r"TCK-\d+"), " TCK-123 ", ["regex"]).scores["regex"] == 1.0
    assert score_generation(gen_item(r"\d{3}"), "12", ["regex"]).scores["regex"] == 0.0
    assert score_generation(gen_item("(unclosed"), "x", ["regex"]).scores["regex"] == 0.0


def test_json_metrics() -> None:
    item = gen_item({"category": "billing", "priority": "high", "meta": {"lang": "en"}})
    good = '```json\n{"category": "billing", "priority": "low", "meta": {"lang": "en"}}\n```'
    scores = score_generation(item, good, ["json_valid", "json_fields"]).scores
    assert scores["json_valid"] == 1.0
    assert scores["json_fields"] == pytest.approx(2 / 3)
    bad = score_generation(item, '{"category": "billing"', ["json_valid", "json_fields"]).scores
    assert bad == {"json_valid": 0.0, "json_fields": 0.0}
    not_object = score_generation(item, "[1, 2]", ["json_fields"]).scores
    assert not_object["json_fields"] == 0.0
