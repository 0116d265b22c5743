"""The judge metric and the calibrated judge: the strict parse, the rubric, agreement, the canary, runs.

Judges here are real Backend implementations: a scripted judge that follows its rubric to the
letter (tests/fixtures/judge/scripted.py) and the tiny random GPT-2 of the session fixtures,
whose answers are checked against the parser.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from monitor.analysis.baselines import pin_baseline
from monitor.analysis.judge import (
    JudgePolicy,
    agreement,
    check_judges,
    cohen_kappa,
    judge_canary,
    unreliable_reason,
)
from monitor.analysis.regression import RegressionPolicy, assess_run, comparability
from monitor.backends import ModelSpec, load_backend
from monitor.backends.base import GREEDY, Backend, GenerationRequest
from monitor.config import MonitorConfig
from monitor.errors import EvalSetError
from monitor.evals.evalset import load_evalset
from monitor.evals.judge import (
    JudgeModels,
    JudgeScorer,
    load_rubric,
    make_judge,
    normalise,
    parse_human_label,
    parse_verdict,
)
from monitor.evals.loop import evaluate
from monitor.evals.scorers import ScoreError, ScorerContext
from monitor.events import JUDGE_DRIFTED, Event
from monitor.service.plan import plan_runs
from monitor.service.runs import ModelPool, execute_run, judge_specs
from monitor.store import Store
from tests.conftest import TinyModels
from tests.fixtures.judge.scripted import ScriptedJudge, ScriptedStudent
from tests.fixtures.judge.sets import GARBAGE, STUDENT, calibration_lines, judge_set

# --- the strict parse ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("PASS", 1),
        ("fail", 0),
        ("Verdict: PASS", 1),
        ("The output names the same category.\n\nVerdict: **FAIL**.", 0),
        ("[[PASS]]", 1),
        ("  yes  ", 1),
        ("Answer = no", 0),
        ("`correct`", 1),
        ("1", 1),
        ("0\n", 0),
    ],
)
def test_binary_verdicts_parse(answer: str, label: int) -> None:
    assert parse_verdict(answer, "binary") == label


@pytest.mark.parametrize(
    ("answer", "label"),
    [("4", 4), ("Score: 5", 5), ("[[2]]", 2), ("Rating: 3/5", 3), ("reasons...\nScore: 1 out of 5", 1)],
)
def test_five_point_verdicts_parse(answer: str, label: int) -> None:
    assert parse_verdict(answer, "1-5") == label
    assert normalise(label, "1-5") == (label - 1) / 4


@pytest.mark.parametrize(
    ("answer", "scale"),
    [
        ("", "binary"),
        ("   \n ", "binary"),
        ("PASS, mostly", "binary"),
        ("Verdict: PASS\nthough I am not sure", "binary"),
        ("maybe", "binary"),
        ("The answer is PASS", "binary"),
        ("6", "1-5"),
        ("0", "1-5"),
        ("4.5", "1-5"),
        ("Score: 3 or 4", "1-5"),
        ("PASS", "1-5"),
    ],
)
def test_anything_else_is_an_item_error_never_a_score(answer: str, scale: str) -> None:
    with pytest.raises(ScoreError, match="expected"):
        parse_verdict(answer, scale)


def test_human_labels() -> None:
    assert [parse_human_label(v, "binary") for v in (True, False, 1, 0, "PASS", "fail")] == [1, 0, 1, 0, 1, 0]
    assert [parse_human_label(v, "1-5") for v in (1, 5, "3")] == [1, 5, 3]
    for bad, scale in ((2, "binary"), ("maybe", "binary"), (0, "1-5"), (True, "1-5"), (4.0, "1-5")):
        with pytest.raises(ValueError, match="not on the"):
            parse_human_label(bad, scale)


# --- the rubric ----------------------------------------------------------------------------------------


def test_rubric_from_a_file_or_inline(tmp_path: Path) -> None:
    from monitor.evals.evalset import EvalItem

    (tmp_path / "r.txt").write_text("Q: {input}\nRef: {reference}\nOut: {output}\n{{literal}}")
    item = EvalItem("a", {"input": "hi", "target": "x"}, "x")
    from_file = load_rubric("r.txt", tmp_path)
    assert from_file.source == "r.txt" and from_file.fields == {"input"}
    assert from_file.render("yo", item) == "Q: hi\nRef: x\nOut: yo\n{literal}"
    inline = load_rubric("Judge {output} against {reference}", tmp_path)
    assert inline.source == "inline" and inline.sha256 != from_file.sha256
    with pytest.raises(ScoreError, match=r"rubric field \{input\} is not in item 'b'"):
        from_file.render("yo", EvalItem("b", {"target": "x"}, "x"))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "rubric: give the judge's rubric"),
        ("missing.txt", "rubric: file .*missing.txt not found"),
        ("../outside.txt", "must be inside the eval set folder"),
        ("Grade {reference} only", "never shows the judge the output"),
        ("Grade {output} {", "not a valid format string"),
        ("Grade {} {output}", "must be named"),
    ],
)
def test_bad_rubrics_are_refused_with_the_field(tmp_path: Path, value: Any, message: str) -> None:
    (tmp_path.parent / "outside.txt").write_text("{output}")
    with pytest.raises(ValueError, match=message):
        load_rubric(value, tmp_path)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "model: name the judge"),
        ({"model": "nobody", "rubric": "rubric.txt"}, "model: judge model 'nobody' is not configured"),
        ({"model": "judge-a", "rubric": "rubric.txt", "scale": "1-10"}, "scale: '1-10' is not a judge scale"),
        ({"model": "judge-a", "rubric": "rubric.txt", "max_new_tokens": 0}, "max_new_tokens"),
        ({"model": "judge-a", "rubric": "rubric.txt", "min_agreement": 2}, "min_agreement"),
        (
            {"model": "judge-a", "rubric": "rubric.txt", "temperature": 1},
            "temperature: unknown option of judge",
        ),
        ({"model": "judge-a", "rubric": "rubric.txt", "calibration": "none.jsonl"}, "calibration: file"),
    ],
)
def test_bad_judge_options(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    path = judge_set(tmp_path)
    with pytest.raises(ValueError, match=message):
        make_judge(options, ScorerContext(path, models=("judge-a", "student")))


def test_a_broken_calibration_file_is_one_located_line(tmp_path: Path) -> None:
    lines = calibration_lines(2, 0, 0, 2)
    lines[2]["label"] = "maybe"
    path = judge_set(tmp_path, calibration=lines)
    with pytest.raises(EvalSetError) as caught:
        load_evalset(path)
    (problem,) = caught.value.problems
    assert "evalset.yaml" in problem.location
    assert (
        "metrics.1.calibration:" in problem.message
        and "calibration.jsonl:3: label 'maybe'" in problem.message
    )


# --- agreement -----------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # statsmodels' variance of a degenerate table
def test_kappa_matches_sklearn_and_statsmodels() -> None:
    from sklearn.metrics import cohen_kappa_score
    from statsmodels.stats.inter_rater import cohens_kappa

    rng = random.Random(5)
    for trial in range(60):
        k = rng.choice([2, 3, 5])
        n = rng.randint(5, 80)
        a = [rng.randrange(k) for _ in range(n)]
        b = [x if rng.random() < 0.6 else rng.randrange(k) for x in a]
        if len(set(a) | set(b)) < 2:
            continue
        assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12), trial
        for weights in ("linear", "quadratic"):
            assert cohen_kappa(a, b, weights=weights) == pytest.approx(
                cohen_kappa_score(a, b, weights=weights), abs=1e-12
            ), (trial, weights)
        cats = sorted(set(a) | set(b))
        table = [[sum(1 for x, y in zip(a, b, strict=True) if (x, y) == (i, j)) for j in cats] for i in cats]
        found = cohens_kappa(table)
        assert cohen_kappa(a, b) == pytest.approx(found.kappa, abs=1e-12)
    # every label the same single value: kappa is undefined
    assert cohen_kappa([1, 1, 1], [1, 1, 1]) is None


def test_agreement_by_hand() -> None:
    # 5 both pass, 1 judge pass / people fail, 1 judge fail / people pass, 3 both fail
    human = [1] * 5 + [0] + [1] + [0] * 3
    judge: list[int | None] = [1] * 5 + [1] + [0] + [0] * 3
    found = agreement(human, judge)
    assert (found.n, found.agree, found.accuracy) == (10, 8, 0.8)
    # chance agreement 0.6 * 0.6 + 0.4 * 0.4 = 0.52; kappa (0.8 - 0.52) / 0.48 = 7/12
    assert found.kappa == pytest.approx(7 / 12)
    assert found.kappa_stderr == pytest.approx((0.8 * 0.2 / (10 * 0.48**2)) ** 0.5)
    # an answer off the scale is a disagreement of its own category
    off = agreement([1, 1, 0, 0], [1, None, 0, 0])
    assert (off.agree, off.off_scale) == (3, 1)
    from sklearn.metrics import cohen_kappa_score

    assert off.kappa == pytest.approx(cohen_kappa_score(["1", "1", "0", "0"], ["1", "x", "0", "0"]))
    ordinal = agreement([1, 3, 5, 4], [1, 3, 4, 4], ordinal=True)
    assert ordinal.kappa_quadratic == pytest.approx(
        cohen_kappa_score([1, 3, 5, 4], [1, 3, 4, 4], weights="quadratic")
    )


# --- the canary ------------------------------------------------------------------------------------


def record(
    human: list[int], judge: list[int | None], *, floor: float = 0.6, sha: str = "sha256:f"
) -> dict[str, Any]:
    from monitor.analysis.judge import calibration_record

    return calibration_record(
        ids=[f"c{i}" for i in range(len(human))],
        human=human,
        judge=judge,
        scale="binary",
        file="calibration.jsonl",
        file_sha256=sha,
        min_agreement=floor,
    )


def noisy_judge(human: list[int], rate: float, rng: random.Random) -> list[int | None]:
    return [h if rng.random() < rate else 1 - h for h in human]


def test_the_canary_fires_below_the_floor_and_on_a_significant_drop_only() -> None:
    rng = random.Random(1)
    human = [rng.randrange(2) for _ in range(100)]
    good = record(human, list(human))
    # the same answers as before: no drop, well above the floor
    same = judge_canary("judge", record(human, list(human)), good)
    assert not same.drifted and same.p_value == 1.0 and same.reason is None
    # 20 lines lost, none gained: a significant drop (the floor disabled to see the test alone)
    dropped = [1 - h if i < 20 else h for i, h in enumerate(human)]
    canary = judge_canary("judge", record(human, dropped, floor=-1.0), record(human, list(human), floor=-1.0))
    assert canary.drifted and (canary.lost, canary.gained) == (20, 0)
    assert canary.reason is not None and "dropped: accuracy 100.0% -> 80.0%" in canary.reason
    # below the floor, whatever the previous run
    low = judge_canary("judge", record(human, noisy_judge(human, 0.6, rng)), None)
    assert low.drifted and low.reason is not None and "below the floor" in low.reason
    # a previous run on another calibration file is not compared line by line
    other = judge_canary(
        "judge", record(human, dropped, floor=-1.0), record(human, human, floor=-1.0, sha="x")
    )
    assert not other.drifted and other.p_value is None
    # a rise is no alarm
    up = judge_canary("judge", record(human, list(human), floor=-1.0), record(human, dropped, floor=-1.0))
    assert not up.drifted and up.gained == 20


def test_the_drop_test_keeps_its_false_alarm_rate_on_no_change_data() -> None:
    """A judge of unchanged quality (90% agreement, independent mistakes) re-scored run after run:
    the drop alarm rings at most at alpha (McNemar's exact test is conservative)."""
    rng = random.Random(7)
    alpha = 0.05
    human = [rng.randrange(2) for _ in range(120)]
    alarms = 0
    trials = 1500
    policy = JudgePolicy(min_agreement=-1.0, alpha=alpha)
    for _ in range(trials):
        before = record(human, noisy_judge(human, 0.9, rng), floor=-1.0)
        after = record(human, noisy_judge(human, 0.9, rng), floor=-1.0)
        alarms += judge_canary("judge", after, before, policy).drifted
    assert alarms / trials <= alpha


def test_the_drop_test_has_power_against_a_real_drop() -> None:
    rng = random.Random(8)
    human = [rng.randrange(2) for _ in range(120)]
    policy = JudgePolicy(min_agreement=-1.0, alpha=0.05)
    hits = sum(
        judge_canary(
            "judge",
            record(human, noisy_judge(human, 0.7, rng), floor=-1.0),
            record(human, noisy_judge(human, 0.9, rng), floor=-1.0),
            policy,
        ).drifted
        for _ in range(300)
    )
    assert hits / 300 >= 0.8


def test_unreliable_below_the_floor_only_with_a_calibration() -> None:
    assert unreliable_reason(None) is None
    assert unreliable_reason({"model": "j"}) is None  # no calibration file: nothing to say
    judge = {"model": "j", "calibration": {"kappa": 0.55, "min_agreement": 0.6, "n": 40}}
    why = unreliable_reason(judge)
    assert why is not None and "kappa 0.55 < 0.60 on 40 calibration lines" in why
    assert unreliable_reason({"model": "j", "calibration": {"kappa": 0.61, "min_agreement": 0.6}}) is None
    assert (
        unreliable_reason({"model": "j", "calibration": {"error": "down", "min_agreement": 0.6}}) is not None
    )


# --- the scorer on a scripted judge --------------------------------------------------------------------


def scripted_context(path: Path, judges: dict[str, Backend]) -> tuple[ScorerContext, JudgeModels]:
    models = JudgeModels(lambda name: judges[name], known=tuple(judges))
    return ScorerContext(path, backend_for=models, models=tuple(judges)), models


def test_scores_errors_batches_greedy_settings_and_tokens(tmp_path: Path) -> None:
    path = judge_set(tmp_path)
    es = load_evalset(path)
    judge = ScriptedJudge(garbage=[GARBAGE], reasoning=True)
    calls: list[list[GenerationRequest]] = []
    original = judge.generate

    def recording(requests: Any, *, progress: Any = None) -> Any:
        calls.append(list(requests))
        return original(requests, progress=progress)

    judge.generate = recording  # type: ignore[method-assign]
    context, models = scripted_context(path, {"judge-a": judge})
    outcome = evaluate(ScriptedStudent(STUDENT), es, scorer_context=context, chunk_size=100)  # type: ignore[arg-type]
    by_id = {r.item_id: r for r in outcome.results}
    assert by_id["t0"].scores == {"exact_match": 1.0, "judge": 1.0}
    assert by_id["t2"].scores == {"exact_match": 0.0, "judge": 0.0}
    # the answer off the scale: an item error on the judge metric, no score on it
    assert "judge" not in (by_id["t5"].scores or {})
    assert by_id["t5"].metric_errors is not None
    assert "not a verdict: 'I would rather not say.'" in by_id["t5"].metric_errors["judge"]
    # one batch for the chunk, greedy, the rubric filled with the item, its output and reference
    assert len(calls) == 1 and len(calls[0]) == len(es.items)
    assert all(r.sampling == GREEDY for r in calls[0])
    assert "Ticket: I was charged twice\nReference: billing\nOutput: billing\n" in calls[0][0].prompt
    assert models.usage()["judge-a"]["requests"] == len(es.items)
    assert models.usage()["judge-a"]["prompt_tokens"] == sum(len(r.prompt.split()) for r in calls[0])
    scorer = make_judge(es.metric_specs[1].options, context)
    settings = scorer.settings()
    assert settings["judge_fingerprint"] == "sha256:scripted-scripted-judge-1"
    assert settings["scale"] == "binary" and settings["rubric_sha256"].startswith("sha256:")
    # at load (no backends) the settings carry what the eval set says, and are in its digest
    assert "judge_fingerprint" not in es.scorer_settings()["judge"]


def test_a_changed_rubric_or_scale_changes_the_digest(tmp_path: Path) -> None:
    first = load_evalset(judge_set(tmp_path / "a"))
    other_rubric = load_evalset(
        judge_set(
            tmp_path / "b", rubric=(tmp_path / "a" / "tickets" / "rubric.txt").read_text() + "Be strict.\n"
        )
    )
    assert first.settings_digest(0) != other_rubric.settings_digest(0)
    other_judge = load_evalset(judge_set(tmp_path / "c", judge="judge-b"))
    assert first.settings_digest(0) != other_judge.settings_digest(0)


def test_calibration_counts_duplicates_once(tmp_path: Path) -> None:
    lines = calibration_lines(5, 1, 1, 3)
    path = judge_set(tmp_path, calibration=lines + [dict(line, id=f"{line['id']}-again") for line in lines])
    es = load_evalset(path)
    context, _ = scripted_context(path, {"judge-a": ScriptedJudge()})
    scorer = make_judge(es.metric_specs[1].options, context)
    found = scorer.calibrate()
    assert found is not None and len(found.ids) == 10 and found.duplicates == 10
    assert agreement(list(found.human), list(found.judge)).kappa == pytest.approx(7 / 12)


def test_a_judge_model_that_cannot_be_loaded_here_says_so(tmp_path: Path) -> None:
    es = load_evalset(judge_set(tmp_path))
    scorer = es.scorers()["judge"]
    assert isinstance(scorer, JudgeScorer)
    with pytest.raises(EvalSetError, match="judge model 'judge-a' cannot be loaded here"):
        scorer.score("billing", es.items[0])
    models = JudgeModels(lambda name: ScriptedJudge(), known=("judge-a",))  # type: ignore[arg-type,return-value]
    with pytest.raises(EvalSetError, match="'judge-x' is not configured; configured models: judge-a"):
        models("judge-x")


# --- the tiny hf model as a judge --------------------------------------------------------------------------


def test_a_tiny_hf_judge_answers_are_what_the_parser_says(tiny_models: TinyModels, tmp_path: Path) -> None:
    """A random tiny model does not follow a rubric: whatever it answers, each item gets exactly the
    parser's reading of that answer (a score, or the item error), through the batched judge."""
    path = judge_set(tmp_path, options="max_new_tokens: 3")
    es = load_evalset(path)
    hf = load_backend(ModelSpec("hf", str(tiny_models.gpt2), device="cpu", dtype="float32"))
    try:
        context, models = scripted_context(path, {"judge-a": hf})
        scorer = make_judge(es.metric_specs[1].options, context)
        outputs = [STUDENT[item.fields["input"]] for item in es.items]
        labels = scorer.score_batch(outputs, list(es.items))
        raw = hf.generate(
            [GenerationRequest(scorer.rubric.render(o, i), 3) for o, i in zip(outputs, es.items, strict=True)]
        )
        for got, answer in zip(labels, raw, strict=True):
            try:
                expected: float | str = normalise(parse_verdict(answer.text, "binary"), "binary")
            except ScoreError as exc:
                expected = str(exc)
            assert (str(got) if isinstance(got, ScoreError) else got) == expected
        assert scorer.settings()["judge_fingerprint"] == hf.fingerprint().digest
        assert models.usage()["judge-a"]["completion_tokens"] == sum(r.completion_tokens for r in raw)
        outcome = evaluate(hf, es, scorer_context=context)
        for result in outcome.results:
            has_score = "judge" in (result.scores or {})
            has_error = "judge" in (result.metric_errors or {})
            assert has_score != has_error
    finally:
        hf.close()


# --- recorded runs: settings, calibration, pairing, verdicts, the canary -----------------------------


class Harness:
    """A configuration with a scripted student and judges, a real SQLite store, real runs."""

    def __init__(self, tmp_path: Path, **set_options: Any) -> None:
        self.tmp = tmp_path
        self.backends: dict[str, Any] = {
            "student": ScriptedStudent(STUDENT),
            "judge-a": ScriptedJudge(garbage=[GARBAGE]),
            "judge-b": ScriptedJudge(name="other", garbage=[GARBAGE]),
        }
        self.evalset = judge_set(tmp_path / "evals", **set_options)
        for name in self.backends:
            (tmp_path / name).mkdir(exist_ok=True)
        self.cfg = MonitorConfig.model_validate(
            {
                "database": f"sqlite:///{tmp_path / 'monitor.db'}",
                "models": {name: {"base": str(tmp_path / name)} for name in self.backends},
                "evalsets": {"tickets": str(self.evalset)},
                "jobs": {"j": {"models": ["student"], "evalsets": ["tickets"]}},
                "root": tmp_path,
            }
        )
        self.store = Store.open(self.cfg.database_url())
        self.root = tmp_path / "baselines"
        self.events: list[Event] = []

    def pool(self) -> ModelPool:
        return ModelPool(loader=lambda spec: self.backends[Path(spec.base).name], max_models=3)

    def run(self) -> Any:
        (plan,) = plan_runs(self.cfg, ["j"], trigger="test")
        with self.pool() as pool:
            run = execute_run(self.store, pool, plan, judge_specs=judge_specs(self.cfg))
        assert run.status == "succeeded", run.error
        return run

    def notify(self, session: Any, event: Event) -> None:
        self.events.append(event)


def test_a_run_records_the_judge_its_calibration_and_its_tokens(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    run = h.run()
    judge = run.backend_info["judges"]["judge"]
    assert judge["model"] == "judge-a" and judge["fingerprint"] == "sha256:scripted-scripted-judge-1"
    cal = judge["calibration"]
    assert (cal["n"], cal["agree"], cal["accuracy"]) == (10, 8, 0.8)
    assert cal["kappa"] == pytest.approx(7 / 12) and cal["min_agreement"] == 0.6
    assert judge["calibration_tokens"]["requests"] == 10
    # the judge's tokens: 8 items scored and 10 calibration lines, apart from the student's
    assert run.backend_info["judge_usage"]["judge-a"]["requests"] == 8 + 10
    assert run.settings["judges"]["judge"]["judge_fingerprint"] == judge["fingerprint"]
    assert run.settings["scorers"]["judge"]["judge_model"] == "judge-a"
    details = h.store.item_details(run.id)
    assert "not a verdict" in details["t5"]["metric_errors"]["judge"]
    assert run.metrics["judge"]["n"] == 7  # the unparseable answer is not scored


def test_a_changed_judge_never_pairs(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    first = h.run()
    baseline = pin_baseline(h.store, h.root, "student", "tickets", first.id)
    again = h.run()
    assert comparability(again, baseline)[0] == "paired"
    assert again.settings_digest == first.settings_digest
    # the same judge name, other weights behind it (a new fingerprint)
    h.backends["judge-a"] = ScriptedJudge(version="2", garbage=[GARBAGE])
    changed = h.run()
    mode, reason = comparability(changed, baseline)
    assert mode == "refused" and reason is not None and "judges differ" in reason
    assert changed.settings_digest != first.settings_digest
    # another judge model, or another rubric: refused too
    for label, options in (
        ("model", {"judge": "judge-b"}),
        ("rubric", {"rubric": "Grade it.\nReference: {reference}\nOutput: {output}\n"}),
    ):
        other = Harness(tmp_path / label, **options)
        run = other.run()
        other_baseline = pin_baseline(other.store, other.root, "student", "tickets", run.id)
        assert comparability(run, other_baseline)[0] == "paired"
        mode, reason = comparability(run, baseline)
        assert mode == "refused" and reason is not None and "scorers" in reason


def test_verdicts_on_a_judged_metric_are_marked_unreliable_below_the_floor(tmp_path: Path) -> None:
    h = Harness(tmp_path)  # kappa 7/12 < the default 0.6
    baseline = pin_baseline(h.store, h.root, "student", "tickets", h.run().id)
    run = h.run()
    verdicts = {v.metric: v for v in assess_run(h.store, run.id, baseline, RegressionPolicy())}
    judged = verdicts["judge"]
    assert judged.details["judge"]["unreliable"] is True
    assert (
        judged.reason is not None
        and "unreliable: the judge (judge-a) agrees with people at kappa 0.58" in judged.reason
    )
    assert "judge" not in verdicts["exact_match"].details
    trusted = Harness(tmp_path / "trusted", options="min_agreement: 0.5")
    baseline = pin_baseline(trusted.store, trusted.root, "student", "tickets", trusted.run().id)
    verdict = next(
        v
        for v in assess_run(trusted.store, trusted.run().id, baseline, RegressionPolicy())
        if v.metric == "judge"
    )
    assert verdict.details["judge"]["unreliable"] is False and verdict.reason is None


def test_the_canary_after_runs_fires_once_on_a_drop_and_not_without_change(tmp_path: Path) -> None:
    lines = calibration_lines(20, 0, 0, 20)  # the scripted judge agrees with people on every line
    h = Harness(tmp_path, calibration=lines, options="min_agreement: 0.3")
    first = h.run()
    assert check_judges(h.store, first.id, h.notify)[0].drifted is False
    second = h.run()
    (canary,) = check_judges(h.store, second.id, h.notify)
    assert not canary.drifted and canary.p_value == 1.0 and h.events == []
    # the judge drifts: it now judges 10 of the passing outputs the wrong way round
    h.backends["judge-a"] = ScriptedJudge(wrong=[f"answer {i}" for i in range(10)], garbage=[GARBAGE])
    third = h.run()
    (canary,) = check_judges(h.store, third.id, h.notify)
    assert canary.drifted and canary.lost == 10 and canary.gained == 0
    assert canary.kappa == pytest.approx(0.5)  # above its floor of 0.3: the drop, not the floor, rang
    (event,) = h.events
    assert event.type == JUDGE_DRIFTED and event.data["metric"] == "judge" and event.data["run"] == third.id
    assert event.data["summary"] is not None and "dropped" in event.data["summary"]
    finding = h.store.previous_finding(third.model_id, "canary", "judge:tickets/judge")
    assert finding is not None and finding.drifted and finding.run_id == third.id
    # the next run, as bad: still compared with the last run before the drift, still drifted, no new event
    fourth = h.run()
    (canary,) = check_judges(h.store, fourth.id, h.notify)
    assert canary.drifted and canary.lost == 10 and len(h.events) == 1
    # the judge is mended: clear again
    h.backends["judge-a"] = ScriptedJudge(garbage=[GARBAGE])
    fifth = h.run()
    (canary,) = check_judges(h.store, fifth.id, h.notify)
    assert not canary.drifted and len(h.events) == 1


def test_a_run_without_configured_judges_fails_with_the_reason(tmp_path: Path) -> None:
    h = Harness(tmp_path, judge="nobody")
    (plan,) = plan_runs(h.cfg, ["j"], trigger="test")
    with h.pool() as pool:
        run = execute_run(h.store, pool, plan, judge_specs=judge_specs(h.cfg))
    assert run.status == "failed" and run.error is not None
    assert "judge failed to load" in run.error and "'nobody' is not configured" in run.error
    json.dumps(run.backend_info)  # what was recorded is JSON
