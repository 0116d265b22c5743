"""The CI gate: a candidate model against the pinned baseline (or another model) on the golden sets.

One decision, three outcomes, each an exit code for a CI job:

* ``passed`` (0): no comparison shows a drop beyond the tolerance, and every eval set
  is large enough to see one (its minimum detectable difference at the stated power is
  at most the tolerance);
* ``regressed`` (1): some metric dropped beyond the tolerance, significantly after
  Holm's correction across every metric and eval set of the gate, with the whole
  interval below 0 (:func:`monitor.analysis.stats.regression_decision`);
* ``inconclusive`` (6): no regression, but some eval set cannot detect a drop the size
  of the tolerance, or the candidate's runs cannot be compared with the reference
  (other prompt or decoding settings): a pass would mean nothing.

A run of the candidate or the reference that fails is ``error`` (7).  Exit codes 2 to
5 keep their meaning from :mod:`monitor.errors` (bad input, a model that cannot load,
the database, the lease).  The gate is one look, so it tests at ``alpha`` itself, not
at a share spent over nightly looks.

Runs are recorded in the store the caller passes (a throwaway SQLite file by
default, in the CLI); runs there of the reference's own model (same fingerprint and
settings) give the run-to-run disagreement the minimum detectable difference needs,
else ``prior_discordance``, else the two runs are taken as independent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any
from xml.etree import ElementTree

from monitor.analysis.baselines import Baseline, BaselineItem
from monitor.analysis.regression import (
    Comparison,
    RegressionPolicy,
    baseline_era_runs,
    compare_run,
    design_noise,
    detectable_sentence,
    duplicate_groups,
)
from monitor.analysis.stats import holm, regression_decision
from monitor.backends import ModelSpec
from monitor.evals.evalset import EvalSet, parse_strategy, strategy_name
from monitor.service.plan import RunPlan
from monitor.service.runs import JudgeSpecs, ModelPool, execute_run
from monitor.store import RunRecord, Store, as_utc, utcnow

GATE_PASSED = 0
GATE_REGRESSED = 1
GATE_INCONCLUSIVE = 6
GATE_ERROR = 7

#: Exit code of each outcome (``monitor gate``).
EXIT_CODES = {
    "passed": GATE_PASSED,
    "regressed": GATE_REGRESSED,
    "inconclusive": GATE_INCONCLUSIVE,
    "error": GATE_ERROR,
}
GATE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Contender:
    """A model the gate runs: a name for its runs, how to load it, its prompt strategy (``5-shot``...).

    The strategy applies to the reference model of ``against``; the candidate is
    always run with the reference's shot count, so that the two are comparable.
    """

    name: str
    spec: ModelSpec
    strategy: str = "zero-shot"
    model_version: str | None = None


@dataclass(frozen=True)
class GateCheck:
    """One metric of one eval set: the candidate against the reference."""

    evalset: str
    strategy: str
    metric: str
    outcome: str
    message: str
    mode: str | None = None
    method: str | None = None
    delta: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    adjusted_p: float | None = None
    min_detectable: float | None = None
    baseline_mean: float | None = None
    current_mean: float | None = None
    n: int | None = None
    candidate_run: int | None = None
    reference_run: int | None = None


@dataclass(frozen=True)
class GateReport:
    """What the gate decided, and every comparison behind it."""

    candidate: str
    reference: str
    tolerance: float
    alpha: float
    power: float
    outcome: str
    summary: str
    checks: tuple[GateCheck, ...] = ()
    created_at: str = field(default_factory=lambda: utcnow().isoformat())

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.outcome]

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-safe data (no infinities: a set that cannot see any drop reads None)."""
        data = asdict(self)
        data["checks"] = [
            {k: None if isinstance(v, float) and math.isinf(v) else v for k, v in asdict(c).items()}
            for c in self.checks
        ]
        return {"format_version": GATE_FORMAT_VERSION, "exit_code": self.exit_code, **data}

    def junit_xml(self) -> str:
        """JUnit XML: one test case per check; a regression fails, an inconclusive check is skipped."""
        suite = ElementTree.Element(
            "testsuite",
            name=f"monitor gate: {self.candidate} against {self.reference}",
            tests=str(len(self.checks)),
            failures=str(sum(c.outcome == "regressed" for c in self.checks)),
            errors=str(sum(c.outcome == "error" for c in self.checks)),
            skipped=str(sum(c.outcome == "inconclusive" for c in self.checks)),
            timestamp=self.created_at,
        )
        for check in self.checks:
            case = ElementTree.SubElement(
                suite,
                "testcase",
                classname=f"gate.{check.evalset}",
                name=f"{check.metric} ({check.strategy})",
            )
            tag = {"regressed": "failure", "error": "error", "inconclusive": "skipped"}.get(check.outcome)
            if tag is not None:
                ElementTree.SubElement(case, tag, message=check.message).text = check.message
            else:
                ElementTree.SubElement(case, "system-out").text = check.message
        root = ElementTree.Element("testsuites", name="monitor gate")
        root.append(suite)
        ElementTree.indent(root)
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(root, encoding="unicode") + "\n"
        )


def run_gate(
    store: Store,
    pool: ModelPool,
    candidate: Contender,
    evalsets: Sequence[EvalSet],
    *,
    baselines: dict[str, Baseline] | None = None,
    against: Contender | None = None,
    policy: RegressionPolicy | None = None,
    chunk_size: int = 64,
    judge_specs: JudgeSpecs | None = None,
) -> GateReport:
    """Run ``candidate`` on every eval set and judge it against ``baselines`` (by eval set) or ``against``.

    Exactly one of ``baselines`` and ``against`` is given.  ``judge_specs`` gives the models of
    the eval sets' ``judge`` metrics (:func:`monitor.service.runs.judge_specs`).
    """
    if (baselines is None) == (against is None):
        raise ValueError("give exactly one reference: the pinned baselines or another model")
    policy = replace(policy or RegressionPolicy(), sequential=False)
    reference_name = (
        f"{against.name}" if against is not None else f"the pinned baseline of {_baseline_model(baselines)}"
    )
    pending: list[tuple[Comparison, RunRecord, Baseline]] = []
    checks: list[GateCheck] = []
    for es in evalsets:
        if against is not None:
            reference_run = _run(
                store, pool, against, es, parse_strategy(against.strategy, es), chunk_size, judge_specs
            )
            if reference_run.status != "succeeded":
                checks.append(_failed(es, reference_run, f"the reference {against.name}"))
                continue
            baseline = baseline_of_run(store, reference_run, against.name)
            k = reference_run.fewshot_k
        else:
            assert baselines is not None
            baseline = baselines[es.name]
            k = baseline.fewshot_k
        run = _run(store, pool, candidate, es, k, chunk_size, judge_specs)
        if run.status != "succeeded":
            checks.append(_failed(es, run, f"the candidate {candidate.name}"))
            continue
        assert run.id is not None
        repeats = baseline_era_runs(store, baseline, exclude=[run.id], limit=policy.design_runs)
        noise = design_noise(baseline, [store.item_results(r.id) for r in repeats if r.id is not None])
        duplicates = duplicate_groups(es)
        comparisons = compare_run(run, store.item_results(run.id), baseline, policy, noise, duplicates)
        if not comparisons:
            checks.append(
                GateCheck(
                    es.name, run.strategy, "-", "inconclusive", "no metric in common with the reference"
                )
            )
        pending.extend((c, run, baseline) for c in comparisons)
    tested = [c.result.p_value for c, _, _ in pending if c.result is not None]
    adjusted = iter(holm(tested))
    for c, run, baseline in pending:
        checks.append(_check(c, next(adjusted) if c.result is not None else None, run, baseline, policy))
    return _report(candidate.name, reference_name, checks, policy)


def _baseline_model(baselines: dict[str, Baseline] | None) -> str:
    names = sorted({b.model for b in (baselines or {}).values()})
    return ", ".join(names) or "?"


def _run(
    store: Store,
    pool: ModelPool,
    who: Contender,
    es: EvalSet,
    k: int,
    chunk_size: int,
    judge_specs: JudgeSpecs | None = None,
) -> RunRecord:
    es.render_fewshot_prefix(k)  # an impossible shot count is an input error, before loading anything
    plan = RunPlan(who.name, who.spec, es, k, trigger="gate", model_version=who.model_version)
    return execute_run(store, pool, plan, chunk_size=chunk_size, judge_specs=judge_specs)


def baseline_of_run(store: Store, run: RunRecord, model: str) -> Baseline:
    """A run as a :class:`Baseline` (not written anywhere), for comparing with another model's run."""
    assert run.id is not None
    finished = as_utc(run.finished_at)
    return Baseline(
        model=model,
        evalset=run.evalset_name,
        evalset_version=run.evalset_version,
        strategy=run.strategy,
        fewshot_k=run.fewshot_k,
        settings_digest=run.settings_digest,
        settings=dict(run.settings),
        model_fingerprint=run.model_fingerprint,
        run_id=run.id,
        run_finished_at=finished.isoformat() if finished else None,
        pinned_at=utcnow().isoformat(),
        metrics=dict(run.metrics),
        items=tuple(
            BaselineItem(r.item_id, r.prediction, r.correct, r.score, dict(r.scores or {}))
            for r in store.item_results(run.id)
            if not r.error
        ),
        model_version=run.model_version,
    )


def _failed(es: EvalSet, run: RunRecord, who: str) -> GateCheck:
    return GateCheck(
        es.name,
        strategy_name(run.fewshot_k),
        "-",
        "error",
        f"{who}'s run on {es.name} {run.status}: {run.error or 'no reason stored'}",
        candidate_run=run.id,
    )


def _check(
    c: Comparison, adjusted_p: float | None, run: RunRecord, baseline: Baseline, policy: RegressionPolicy
) -> GateCheck:
    r = c.result
    where = f"{c.evalset} {c.metric}"
    points = 100 * policy.tolerance
    if r is None or c.mode == "refused":
        outcome, message = "inconclusive", f"{where}: not compared: {c.reason}"
    elif regression_decision(r, tolerance=policy.tolerance, alpha=policy.alpha, adjusted_p=adjusted_p):
        outcome = "regressed"
        message = (
            f"{where}: regressed {100 * r.delta:+.1f} points ({100 * r.baseline_mean:.1f}% -> "
            f"{100 * r.current_mean:.1f}%), {100 * r.confidence:.0f}% CI {100 * r.ci_low:+.1f} to "
            f"{100 * r.ci_high:+.1f}, Holm p {adjusted_p:.2g}; tolerance {points:g} points"
        )
    elif c.min_detectable is None or c.min_detectable > policy.tolerance:
        outcome = "inconclusive"
        can = detectable_sentence(c.min_detectable, policy.power).replace("this set can", "it can")
        message = (
            f"{where}: this set cannot detect the configured tolerance of {points:g} points: {can}; "
            f"change {100 * r.delta:+.1f} points, {100 * r.confidence:.0f}% CI {100 * r.ci_low:+.1f} to "
            f"{100 * r.ci_high:+.1f}; add items or raise the tolerance"
        )
    else:
        outcome = "passed"
        message = (
            f"{where}: no regression: change {100 * r.delta:+.1f} points, {100 * r.confidence:.0f}% CI "
            f"{100 * r.ci_low:+.1f} to {100 * r.ci_high:+.1f}; {detectable_sentence(c.min_detectable, policy.power)}"
        )
    if c.mode == "unpaired" and c.reason:
        message += f" ({c.reason})"
    return GateCheck(
        evalset=c.evalset,
        strategy=c.strategy,
        metric=c.metric,
        outcome=outcome,
        message=message,
        mode=c.mode,
        method=r.method if r else None,
        delta=r.delta if r else None,
        ci_low=r.ci_low if r else None,
        ci_high=r.ci_high if r else None,
        p_value=r.p_value if r else None,
        adjusted_p=adjusted_p,
        min_detectable=c.min_detectable,
        baseline_mean=r.baseline_mean if r else None,
        current_mean=r.current_mean if r else None,
        n=r.n if r else None,
        candidate_run=run.id,
        reference_run=baseline.run_id,
    )


def _report(candidate: str, reference: str, checks: list[GateCheck], policy: RegressionPolicy) -> GateReport:
    outcomes = {c.outcome for c in checks}
    if not checks:
        outcome, summary = "inconclusive", "nothing was compared"
    elif "regressed" in outcomes:
        outcome = "regressed"
        summary = "regression: " + "; ".join(c.message for c in checks if c.outcome == "regressed")
    elif "error" in outcomes:
        outcome = "error"
        summary = "error: " + "; ".join(c.message for c in checks if c.outcome == "error")
    elif "inconclusive" in outcomes:
        outcome = "inconclusive"
        summary = "inconclusive: " + "; ".join(c.message for c in checks if c.outcome == "inconclusive")
    else:
        outcome = "passed"
        plural = "s" if len(checks) != 1 else ""
        summary = (
            f"passed: no regression beyond {100 * policy.tolerance:g} points on {len(checks)} check{plural}"
        )
    return GateReport(
        candidate=candidate,
        reference=reference,
        tolerance=policy.tolerance,
        alpha=policy.alpha,
        power=policy.power,
        outcome=outcome,
        summary=summary,
        checks=tuple(checks),
    )
