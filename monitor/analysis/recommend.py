"""What to do with a fine-tune: keep it, roll it back, re-train it, re-base it onto a newer base, or retire it.

The decision is made from evidence the monitor already stores: regression
verdicts against the baseline, input drift findings, and challenger runs (a
newer base release and the old base, evaluated with the same prompts on the
fine-tune's golden eval sets).  :func:`decide` is a pure function of that
evidence so that each path can be tested on constructed cases.

The rules, in order (the first that holds wins):

0. ``rollback``: a regression against the baseline is confirmed, and every run
   of the confirming streak differs from the baseline's run in model
   fingerprint or serving settings (prompt, few-shot, decoding, multiple-choice
   method): a bad deploy, fixed by serving the baseline's weights and settings
   again, not by training.  It comes first because the fine-tune's current
   scores, against which retire is weighed, are then those of the bad deploy.
1. ``retire``: a newer base with a few-shot prompt is, on every golden eval set,
   non-inferior to the fine-tune within ``retire_margin``, significantly: the
   lower bound of the paired confidence interval of (challenger - fine-tune)
   lies above ``-retire_margin``, and (when ``costs:`` are configured) few-shot
   costs no more over the first year than the cheapest qualifying option that
   keeps a trained model: the fine-tune no longer pays for itself.  When it is as
   good but dearer, the next rules decide and the memo says why.
2. ``rebase``: a newer base beats the old base by more than ``rebase_margin``
   under the same prompt, significantly (the interval's lower bound above the
   margin), on some golden eval set and worse on none: an adapter trained on it
   is expected to beat the current fine-tune.
3. ``retrain``: a regression against the baseline is confirmed, or input drift
   is confirmed while the golden scores fall (a negative delta, suspect or worse).
4. ``keep``: none of these.

Each option also has a quality condition (:func:`option_conditions`), used by
the cost case (:mod:`monitor.analysis.costs`): an option that fails it is
shown as ruled out and never called the cheapest.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from monitor.analysis.costs import Condition
    from monitor.config import MonitorConfig
    from monitor.store import Store
    from monitor.store.tables import RecommendationRecord

ACTIONS = ("keep", "rollback", "retrain", "rebase", "retire")


@dataclass(frozen=True)
class Interval:
    """A paired difference with its confidence interval and p-value."""

    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int


@dataclass(frozen=True)
class RegressionEvidence:
    evalset: str
    metric: str
    state: str
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    #: The run the verdict is about, and the pinned baseline's run.
    run_id: int | None = None
    baseline_run_id: int | None = None
    #: Slices of the eval set (tags, slice_by values) whose own verdict is suspect or regressed,
    #: as ``(slice, state, delta)``.
    slices: tuple[tuple[str, str, float | None], ...] = ()


@dataclass(frozen=True)
class DeployEvidence:
    """What the model served in a confirmed regression's runs against what its baseline ran."""

    evalset: str
    baseline_run_id: int
    baseline_fingerprint: str | None
    baseline_settings_digest: str
    #: When the baseline run finished (ISO 8601), as the baseline file says.
    baseline_finished_at: str | None
    #: The fingerprint and settings digest of the newest run.
    fingerprint: str | None
    settings_digest: str
    #: The first run since the baseline that differs from it, and when it started (ISO 8601).
    changed_run_id: int | None
    changed_at: str | None
    #: ``fingerprint``, ``settings`` or both, for the newest run.
    changed: tuple[str, ...]
    #: Whether every run of the confirming streak differs from the baseline.
    whole_streak: bool


@dataclass(frozen=True)
class DriftEvidence:
    source: str
    drifted: bool
    score: float | None


@dataclass(frozen=True)
class ChallengerEvidence:
    """A newer base release on one golden eval set under one prompt strategy."""

    release: str
    strategy: str
    evalset: str
    metric: str
    challenger_score: float
    finetune_score: float
    #: challenger minus the fine-tune, paired on the same items
    vs_finetune: Interval | None
    #: challenger minus the old base under the same strategy, paired
    vs_old_base: Interval | None
    #: The runs compared: ``challenger``, ``finetune`` and (when comparable) ``old_base``.
    runs: dict[str, int] = field(default_factory=dict)
    #: The challenger's score under each draw of its few-shot examples (``fewshot.draws``).
    draw_scores: tuple[float, ...] = ()

    def draws_note(self) -> str:
        """How much the challenger's score depends on the examples drawn ("" with one draw)."""
        if len(self.draw_scores) < 2:
            return ""
        n = len(self.draw_scores)
        sd = statistics.stdev(self.draw_scores)
        return (
            f"; over {n} draws of the few-shot examples it scored {min(self.draw_scores):.3f} to "
            f"{max(self.draw_scores):.3f} (sd {sd:.3f})"
        )


@dataclass(frozen=True)
class Evidence:
    finetune: str
    evalsets: tuple[str, ...]
    regressions: tuple[RegressionEvidence, ...] = ()
    drift: tuple[DriftEvidence, ...] = ()
    challengers: tuple[ChallengerEvidence, ...] = ()
    #: For each confirmed regression: whether its runs served what the baseline served.
    deploys: tuple[DeployEvidence, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    action: str
    reasons: tuple[str, ...]
    #: the challenger release and strategy behind a retire or rebase
    release: str | None = None
    strategy: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _pct(x: float) -> str:
    return f"{x * 100:+.1f} points"


def short_fingerprint(digest: str | None) -> str:
    """A fingerprint as people quote it: its first 12 hex digits."""
    if not digest:
        return "unknown"
    return digest.split(":", 1)[-1][:12]


def bad_deploys(evidence: Evidence) -> list[DeployEvidence]:
    """The confirmed regressions whose whole confirming streak served other weights or settings than
    the baseline."""
    confirmed = {r.evalset for r in evidence.regressions if r.state == "regressed"}
    return [d for d in evidence.deploys if d.evalset in confirmed and d.whole_streak and d.changed]


def _rollback_reason(d: DeployEvidence, regression: RegressionEvidence | None) -> str:
    what = " and ".join({"fingerprint": "weights", "settings": "serving settings"}[c] for c in d.changed)
    drop = ""
    if regression is not None and regression.delta is not None:
        drop = f" ({_pct(regression.delta)} on {regression.metric})"
    since = ""
    if d.changed_run_id is not None:
        since = f" since run #{d.changed_run_id}" + (f" ({d.changed_at})" if d.changed_at else "")
    pinned = f" (run #{d.baseline_run_id}" + (
        f", {d.baseline_finished_at})" if d.baseline_finished_at else ")"
    )
    now = (
        f"fingerprint {short_fingerprint(d.fingerprint)}"
        if "fingerprint" in d.changed
        else f"settings {d.settings_digest}"
    )
    return (
        f"confirmed regression on {d.evalset}{drop} with other {what} than the baseline's: the baseline "
        f"ran fingerprint {short_fingerprint(d.baseline_fingerprint)} with settings "
        f"{d.baseline_settings_digest}{pinned}, the model serves {now}{since}; roll back to the "
        "baseline's weights and settings"
    )


def decide(
    evidence: Evidence,
    *,
    retire_margin: float = 0.02,
    rebase_margin: float = 0.02,
    retire_costs_more: str | None = None,
) -> Decision:
    """Apply the rules of this module to ``evidence``.

    ``retire_costs_more``: why retiring would not save money (from the cost case: few-shot on the
    newer base costs more over the first year than an option that keeps a trained model); the retire
    rule is then skipped, and the reason is given with the decision taken instead.
    """
    deploys = bad_deploys(evidence)
    if deploys:
        by_evalset = {r.evalset: r for r in evidence.regressions if r.state == "regressed"}
        first = deploys[0]
        return Decision(
            "rollback",
            tuple(_rollback_reason(d, by_evalset.get(d.evalset)) for d in deploys),
            details={
                "baseline_fingerprint": first.baseline_fingerprint,
                "baseline_settings_digest": first.baseline_settings_digest,
                "baseline_run_id": first.baseline_run_id,
                "changed_run_id": first.changed_run_id,
                "changed_at": first.changed_at,
            },
        )
    retire = None if retire_costs_more else _retire_candidate(evidence, retire_margin)
    if retire is not None:
        return retire
    decision = _after_retire(evidence, rebase_margin)
    if retire_costs_more:
        decision = replace(decision, reasons=(*decision.reasons, retire_costs_more))
    return decision


def _after_retire(evidence: Evidence, rebase_margin: float) -> Decision:
    rebase = _rebase_candidate(evidence, rebase_margin)
    if rebase is not None:
        return rebase
    reasons = []
    confirmed = [r for r in evidence.regressions if r.state == "regressed"]
    for r in confirmed:
        ci = (
            f" (95% CI {_pct(r.ci_low)} to {_pct(r.ci_high)})"
            if r.ci_low is not None and r.ci_high is not None
            else ""
        )
        reasons.append(
            f"confirmed regression on {r.evalset} {r.metric}: {_pct(r.delta or 0.0)} against the baseline{ci}"
        )
    drifted = [d for d in evidence.drift if d.drifted]
    falling = [
        r
        for r in evidence.regressions
        if r.delta is not None and r.delta < 0 and r.state in ("suspect", "regressed")
    ]
    if drifted and falling and not confirmed:
        sources = ", ".join(d.source for d in drifted)
        reasons.append(
            f"production inputs drifted ({sources}) while golden scores fall "
            f"({', '.join(f'{r.evalset} {_pct(r.delta or 0.0)}' for r in falling)})"
        )
    if reasons:
        return Decision("retrain", tuple(reasons))
    return Decision(
        "keep", ("no confirmed regression, no drift with falling scores, no newer base that does better",)
    )


def _retire_candidate(evidence: Evidence, margin: float) -> Decision | None:
    by_release: dict[tuple[str, str], list[ChallengerEvidence]] = {}
    for c in evidence.challengers:
        if c.strategy != "zero-shot":
            by_release.setdefault((c.release, c.strategy), []).append(c)
    best: tuple[float, Decision] | None = None
    for (release, strategy), items in sorted(by_release.items()):
        covered = {c.evalset for c in items if c.vs_finetune is not None}
        if not set(evidence.evalsets) <= covered:
            continue
        comparisons = [c for c in items if c.vs_finetune is not None]
        if not all(c.vs_finetune.ci_low > -margin for c in comparisons):  # type: ignore[union-attr]
            continue
        worst = min(c.vs_finetune.ci_low for c in comparisons)  # type: ignore[union-attr]
        reasons = tuple(
            f"{release} with a {strategy} prompt on {c.evalset}: {c.challenger_score:.3f} against the fine-tune's "
            f"{c.finetune_score:.3f} ({_pct(c.vs_finetune.delta)}, 95% CI {_pct(c.vs_finetune.ci_low)} to "  # type: ignore[union-attr]
            f"{_pct(c.vs_finetune.ci_high)}), within the {margin * 100:.0f}-point margin"  # type: ignore[union-attr]
            f"{c.draws_note()}"
            for c in comparisons
        )
        decision = Decision("retire", reasons, release, strategy)
        if best is None or worst > best[0]:
            best = (worst, decision)
    return best[1] if best else None


def _rebase_candidate(evidence: Evidence, margin: float) -> Decision | None:
    by_release: dict[tuple[str, str], list[ChallengerEvidence]] = {}
    for c in evidence.challengers:
        if c.vs_old_base is not None:
            by_release.setdefault((c.release, c.strategy), []).append(c)
    best: tuple[float, Decision] | None = None
    for (release, strategy), items in sorted(by_release.items()):
        better = [c for c in items if c.vs_old_base.ci_low > margin]  # type: ignore[union-attr]
        worse = [c for c in items if c.vs_old_base.ci_high < 0]  # type: ignore[union-attr]
        if not better or worse:
            continue
        gain = max(c.vs_old_base.delta for c in better)  # type: ignore[union-attr]
        reasons = tuple(
            f"{release} beats the current base by {_pct(c.vs_old_base.delta)} on {c.evalset} with a {strategy} prompt "  # type: ignore[union-attr]
            f"(95% CI {_pct(c.vs_old_base.ci_low)} to {_pct(c.vs_old_base.ci_high)}, p={c.vs_old_base.p_value:.2g}): "  # type: ignore[union-attr]
            "an adapter trained on it is expected to beat the current fine-tune"
            f"{c.draws_note()}"
            for c in better
        )
        decision = Decision("rebase", reasons, release, strategy, {"base_gain": gain})
        if best is None or gain > best[0]:
            best = (gain, decision)
    return best[1] if best else None


def option_conditions(
    evidence: Evidence,
    release: str | None,
    strategy: str | None,
    *,
    retire_margin: float = 0.02,
) -> dict[str, Condition]:
    """Each option's quality condition on ``evidence``, for the challenger ``release`` prompted with
    ``strategy`` (retire) and re-based onto (rebase).  ``rollback`` is there only after a bad deploy.

    The conditions agree with :func:`decide`: the option it picks always qualifies.
    """
    from monitor.analysis.costs import Condition

    out: dict[str, Condition] = {}
    confirmed = [r for r in evidence.regressions if r.state == "regressed"]
    drifted = [d.source for d in evidence.drift if d.drifted]
    falling = [
        r
        for r in evidence.regressions
        if r.delta is not None and r.delta < 0 and r.state in ("suspect", "regressed")
    ]
    if confirmed:
        found = "; ".join(f"{r.evalset} {r.metric} {_pct(r.delta or 0.0)}" for r in confirmed)
        out["keep"] = Condition(
            False, f"needs no confirmed regression against the baseline, and has one: {found}"
        )
    elif drifted and falling:
        found = ", ".join(f"{r.evalset} {_pct(r.delta or 0.0)}" for r in falling)
        out["keep"] = Condition(
            False,
            f"needs golden scores that hold while inputs drift ({', '.join(drifted)}), and they fall: {found}",
        )
    else:
        out["keep"] = Condition(True, "no confirmed regression against the baseline")
    deploys = bad_deploys(evidence)
    if deploys:
        out["rollback"] = Condition(
            True,
            "serves the weights and settings the baseline was accepted with (fingerprint "
            f"{short_fingerprint(deploys[0].baseline_fingerprint)})",
        )
    out["retrain"] = Condition(True, "a re-train on fresh data is expected to restore the baseline's quality")
    out["rebase"] = _rebase_condition(evidence, release)
    out["retire"] = _retire_condition(evidence, release, strategy, retire_margin)
    return out


def _rebase_condition(evidence: Evidence, release: str | None) -> Condition:
    from monitor.analysis.costs import Condition

    paired = [c for c in evidence.challengers if c.release == release and c.vs_old_base is not None]
    if release is None or not paired:
        return Condition(
            False,
            "needs a newer base no worse than the old base under the same prompt, and that was not measured "
            "(no run of the old base with the same prompt and settings)",
        )
    by_strategy: dict[str, list[ChallengerEvidence]] = {}
    for c in paired:
        by_strategy.setdefault(c.strategy, []).append(c)
    for strategy, items in sorted(by_strategy.items()):
        if not any(c.vs_old_base.ci_high < 0 for c in items):  # type: ignore[union-attr]
            best = max(items, key=lambda c: c.vs_old_base.delta)  # type: ignore[union-attr]
            return Condition(
                True,
                f"{release} is no worse than the old base with a {strategy} prompt on any golden set "
                f"({best.evalset}: {_pct(best.vs_old_base.delta)})",  # type: ignore[union-attr]
            )
    worst = min(paired, key=lambda c: c.vs_old_base.ci_high)  # type: ignore[union-attr]
    return Condition(
        False,
        f"needs {release} no worse than the old base under the same prompt, and it is worse: {worst.evalset} "
        f"{_pct(worst.vs_old_base.delta)} with a {worst.strategy} prompt "  # type: ignore[union-attr]
        f"(95% CI up to {_pct(worst.vs_old_base.ci_high)})",  # type: ignore[union-attr]
    )


def _retire_condition(
    evidence: Evidence, release: str | None, strategy: str | None, margin: float
) -> Condition:
    from monitor.analysis.costs import Condition

    need = (
        f"needs few-shot on {release} ({strategy}) within {margin * 100:g} points of the fine-tune on every "
        "golden set (the 95% interval's lower bound above the margin)"
    )
    items = {
        c.evalset: c
        for c in evidence.challengers
        if c.release == release and c.strategy == strategy and c.vs_finetune is not None
    }
    missing = [e for e in evidence.evalsets if e not in items]
    if release is None or strategy is None or strategy == "zero-shot" or missing:
        unmeasured = f"not measured on {', '.join(missing)}" if missing else "no few-shot run to weigh"
        return Condition(False, f"{need}, and it was {unmeasured}")
    failing = [c for c in items.values() if c.vs_finetune.ci_low <= -margin]  # type: ignore[union-attr]
    if not failing:
        return Condition(
            True, f"few-shot on {release} ({strategy}) is within {margin * 100:g} points of the fine-tune"
        )
    found = "; ".join(
        f"{c.evalset}: {c.challenger_score:.3f} against {c.finetune_score:.3f} "
        f"(lower bound {_pct(c.vs_finetune.ci_low)})"  # type: ignore[union-attr]
        for c in failing
    )
    return Condition(False, f"{need}, and it is not: {found}")


def summarize(decision: Decision) -> str:
    """One line for tables, webhooks and the memo's first paragraph."""
    fingerprint = short_fingerprint(decision.details.get("baseline_fingerprint"))
    head = {
        "keep": "keep the fine-tune",
        "rollback": f"roll the fine-tune back to the baseline's weights (fingerprint {fingerprint})",
        "retrain": "re-train the fine-tune on fresh data",
        "rebase": f"re-base the adapter onto {decision.release}",
        "retire": f"retire the fine-tune in favour of {decision.release} with a {decision.strategy} prompt",
    }[decision.action]
    return f"{head}: {decision.reasons[0]}" if decision.reasons else head


def actions() -> Sequence[str]:
    return ACTIONS


# --- evidence from the store ---------------------------------------------------------------------


def paired_interval(
    store: Store, run_a: Any, run_b: Any, metric: str, alpha: float = 0.05
) -> Interval | None:
    """``run_b - run_a`` on ``metric``, paired item by item; None unless both ran the same eval set version."""
    from monitor.analysis.stats import mcnemar_exact, paired_bootstrap

    if run_a is None or run_b is None or run_a.evalset_version != run_b.evalset_version:
        return None
    a = {r.item_id: (r.scores or {}).get(metric) for r in store.item_results(run_a.id) if not r.error}
    b = {r.item_id: (r.scores or {}).get(metric) for r in store.item_results(run_b.id) if not r.error}
    ids = [i for i in a if i in b and a[i] is not None and b[i] is not None]
    if len(ids) < 2:
        return None
    xa, xb = [float(a[i]) for i in ids], [float(b[i]) for i in ids]  # type: ignore[arg-type]
    if all(v in (0.0, 1.0) for v in xa + xb):
        result = mcnemar_exact([v == 1.0 for v in xa], [v == 1.0 for v in xb], alpha=alpha)
    else:
        result = paired_bootstrap(xa, xb, alpha=alpha, n_resamples=2000, seed=0)
    return Interval(result.delta, result.ci_low, result.ci_high, result.p_value, result.n)


def _latest_run(store: Store, model: str, evalset: str, strategy: str | None) -> Any:
    for run, _ in store.runs(model=model, evalset=evalset, status="succeeded", limit=50):
        if strategy is None or run.strategy == strategy:
            return run
    return None


def _draw_scores(run: Any, metric: str) -> tuple[float, ...]:
    """The run's score on ``metric`` under each few-shot draw (empty when it drew once)."""
    spread = (run.backend_info or {}).get("fewshot_draws") or {}
    found = (spread.get("metrics") or {}).get(metric) or {}
    return tuple(float(x) for x in found.get("scores") or ())


def _primary(run: Any) -> tuple[str, float] | None:
    if run is None or not run.metrics:
        return None
    name = next(iter(run.metrics))
    value = run.metrics[name].get("value")
    return (name, float(value)) if value is not None else None


def gather_evidence(store: Store, cfg: MonitorConfig, finetune: str) -> Evidence:
    """Everything :func:`decide` needs about one configured fine-tune, read from the store."""
    ft = cfg.finetunes[finetune]
    try:
        model_id = store.get_model(ft.model).id
    except Exception:
        return Evidence(finetune, tuple(ft.evalsets))
    verdicts = [v for v in store.latest_verdicts(model_id) if v.evalset_name in ft.evalsets]
    regressions = tuple(
        RegressionEvidence(
            v.evalset_name,
            v.metric,
            v.state,
            v.delta,
            v.ci_low,
            v.ci_high,
            v.run_id,
            v.baseline_run_id,
            tuple(
                (str(sv.get("slice")), str(sv.get("state")), sv.get("delta"))
                for sv in (v.details or {}).get("slices") or []
                if sv.get("metric") == v.metric and sv.get("state") in ("suspect", "regressed")
            ),
        )
        for v in verdicts
    )
    deploys = []
    seen: set[str] = set()
    for v in verdicts:
        if v.state == "regressed" and v.evalset_name not in seen:
            seen.add(v.evalset_name)
            found = deploy_evidence(store, cfg.baselines_dir(), ft.model, v)
            if found is not None:
                deploys.append(found)
    drift = tuple(
        DriftEvidence(record.source, record.drifted, record.score)
        for record, name in store.latest_findings()
        if name == ft.model and record.kind == "input"
    )
    challengers = []
    for evalset in ft.evalsets:
        ft_run = _latest_run(store, ft.model, evalset, None)
        ft_score = _primary(ft_run)
        if ft_score is None:
            continue
        metric = ft_score[0]
        for release in ft.challengers:
            for strategy in ft.strategies:
                run = _latest_run(store, release, evalset, strategy)
                score = _primary(run)
                if score is None:
                    continue
                base_run = _latest_run(store, ft.base_model, evalset, strategy)
                same_settings = base_run is not None and base_run.settings_digest == run.settings_digest
                challengers.append(
                    ChallengerEvidence(
                        release=release,
                        strategy=strategy,
                        evalset=evalset,
                        metric=metric,
                        challenger_score=score[1],
                        finetune_score=ft_score[1],
                        vs_finetune=paired_interval(store, ft_run, run, metric),
                        vs_old_base=paired_interval(store, base_run, run, metric) if same_settings else None,
                        runs={
                            "challenger": run.id,
                            "finetune": ft_run.id,
                            **({"old_base": base_run.id} if same_settings and base_run is not None else {}),
                        },
                        draw_scores=_draw_scores(run, metric),
                    )
                )
    return Evidence(finetune, tuple(ft.evalsets), regressions, drift, tuple(challengers), tuple(deploys))


def deploy_evidence(store: Store, baselines_dir: Path, model: str, verdict: Any) -> DeployEvidence | None:
    """What the runs of a regression ``verdict`` served against what its baseline ran.

    The baseline's facts come from its pinned file (``baselines/<model>/<evalset>.json``) when it is
    the verdict's baseline, else from the baseline run in the store; ``None`` when neither is there.
    """
    from monitor.analysis.baselines import BaselineError, baseline_path, load_baseline
    from monitor.errors import NotFoundError

    facts: tuple[int, str | None, str, str | None] | None = None
    try:
        pinned = load_baseline(baseline_path(baselines_dir, model, verdict.evalset_name))
        if verdict.baseline_run_id in (None, pinned.run_id):
            facts = (pinned.run_id, pinned.model_fingerprint, pinned.settings_digest, pinned.run_finished_at)
    except BaselineError:
        pass
    if facts is None and verdict.baseline_run_id is not None:
        try:
            run = store.get_run(verdict.baseline_run_id)
        except NotFoundError:
            return None
        finished = run.finished_at.isoformat() if run.finished_at else None
        facts = (verdict.baseline_run_id, run.model_fingerprint, run.settings_digest, finished)
    if facts is None:
        return None
    baseline_run, fingerprint, digest, finished_at = facts

    def differs(run: Any) -> tuple[str, ...]:
        changed = []
        if fingerprint and run.model_fingerprint and run.model_fingerprint != fingerprint:
            changed.append("fingerprint")
        if run.settings_digest != digest:
            changed.append("settings")
        return tuple(changed)

    since = [
        run
        for run, _ in store.runs(model=model, evalset=verdict.evalset_name, status="succeeded", limit=200)
        if run.strategy == verdict.strategy and run.id is not None and run.id > baseline_run
    ]
    since.sort(key=lambda run: run.id or 0, reverse=True)
    if not since:
        return None
    latest = since[0]
    streak = since[: max(1, verdict.consecutive)]
    # When it changed: the oldest run of the newest unbroken stretch of runs that differ.
    changed_run = None
    for run in since:
        if not differs(run):
            break
        changed_run = run
    return DeployEvidence(
        evalset=verdict.evalset_name,
        baseline_run_id=baseline_run,
        baseline_fingerprint=fingerprint,
        baseline_settings_digest=digest,
        baseline_finished_at=_when(finished_at),
        fingerprint=latest.model_fingerprint,
        settings_digest=latest.settings_digest,
        changed_run_id=None if changed_run is None else changed_run.id,
        changed_at=None if changed_run is None else _when(changed_run.started_at),
        changed=differs(latest),
        whole_streak=all(differs(run) for run in streak),
    )


def _when(value: Any) -> str | None:
    """A moment as the memo prints it: ``2026-12-02 14:03 UTC``."""
    from datetime import datetime, timezone

    if value is None:
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return str(moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


# --- recording -------------------------------------------------------------------------------------


def record_recommendation(
    store: Store,
    model_name: str,
    decision: Decision,
    evidence: Evidence,
    costs: dict[str, Any] | None = None,
    on_change: Any = None,
) -> Any:
    """Store the recommendation; a change from the previous one is an event.

    ``on_change(session, record)`` runs inside the same transaction as the new
    row (the webhook outbox writes its event there), so the event exists if and
    only if the recommendation does.
    """
    model_id = store.get_model(model_name).id
    assert model_id is not None
    return store.add_recommendation(
        model_id,
        action=decision.action,
        summary=summarize(decision),
        reasons=decision.reasons,
        evidence={"finetune": evidence.finetune, **evidence.to_dict(), "decision": asdict(decision)},
        costs=costs,
        on_change=on_change,
    )


def latest_recommendations(store: Store) -> list[tuple[RecommendationRecord, str]]:
    """The newest recommendation of every model, with the model's name (:meth:`Store.latest_recommendations`)."""
    return store.latest_recommendations()


# --- the memo --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Assessment:
    """Everything said about one fine-tune: the decision, its evidence and its cost case."""

    finetune: str
    decision: Decision
    evidence: Evidence
    costs: Any = None

    def memo(self, when: str = "") -> str:
        """The one-page Markdown memo (:func:`render_memo`) with the cost table, sentences and assumptions."""
        cost_text = ""
        if self.costs is not None:
            assumptions = "\n".join(f"- {line}" for line in self.costs.assumptions)
            cost_text = (
                self.costs.markdown_table()
                + "\n"
                + " ".join(self.costs.sentences)
                + "\n\nAssumptions:\n\n"
                + assumptions
            )
        return render_memo(self.finetune, self.decision, self.evidence, cost_text, when=when)


def assess_finetune(store: Store, cfg: MonitorConfig, finetune: str) -> Assessment:
    """Gather the evidence of a configured fine-tune, decide, and price the options (nothing is stored)."""
    ft = cfg.finetunes[finetune]
    evidence = gather_evidence(store, cfg, finetune)
    decision = decide(evidence, retire_margin=ft.retire_margin, rebase_margin=ft.rebase_margin)
    case = cost_case_for(store, cfg, finetune, decision, evidence)
    costs_more = retire_costs_more(case) if decision.action == "retire" else None
    if costs_more is not None:
        # As good but dearer: the fine-tune still pays for itself, so the next rule decides.
        decision = decide(
            evidence,
            retire_margin=ft.retire_margin,
            rebase_margin=ft.rebase_margin,
            retire_costs_more=costs_more,
        )
        case = cost_case_for(store, cfg, finetune, decision, evidence)
    return Assessment(finetune, decision, evidence, case)


def retire_costs_more(case: Any) -> str | None:
    """Why retiring does not pay, when few-shot on the newer base costs more over the first year than
    the cheapest option that qualifies and keeps a trained model; ``None`` when it pays (or no case)."""
    from monitor.analysis.costs import format_money

    if case is None:
        return None
    retire = case.option("retire")
    trained = [
        cost
        for cost in case.options
        if cost.option != "retire" and cost.qualifies and cost.annual < retire.annual
    ]
    if not trained:
        return None
    cheaper = min(trained, key=lambda cost: cost.annual)
    return (
        f"{retire.label} would do as well but costs {format_money(retire.annual - cheaper.annual, case.currency)} "
        f"more over the first year than {cheaper.option} ({cheaper.label}): the fine-tune still pays for itself"
    )


DECIDED_HOW = (
    "Roll back when a confirmed regression came with other weights or serving settings than the "
    "baseline's (every run of the confirming streak); retire when few-shot prompting on a newer base is "
    "non-inferior to the fine-tune within the margin on every golden eval set (the lower bound of the "
    "paired 95% interval above minus the margin); re-base when a newer base beats the old one by more "
    "than the margin under the same prompt; re-train on a confirmed regression, or on input drift while "
    "golden scores fall; otherwise keep. Costs are weighed only among the options that meet their quality "
    "condition."
)


def render_memo(
    finetune: str, decision: Decision, evidence: Evidence, cost_text: str = "", when: str = ""
) -> str:
    """A one-page Markdown memo a team can defend: diagnosis, options, numbers, recommendation.

    No sentence is said twice: a reason already given in the recommendation's first line is not
    listed again, and repeated reasons or sentences are dropped.
    """
    lines = [f"# {finetune}: {decision.action}", ""]
    if when:
        lines += [f"_Prepared by the model-aging monitor on {when}._", ""]
    lines += ["## Recommendation", "", summarize(decision) + ".", ""]
    said = {decision.reasons[0]} if decision.reasons else set()
    for reason in decision.reasons[1:]:
        if reason not in said:
            said.add(reason)
            lines.append(f"- {reason}")
    lines += ["", "## Diagnosis", ""]
    if evidence.regressions:
        lines += [
            "| eval set | metric | state | vs baseline | 95% CI | runs (latest vs baseline) |",
            "|---|---|---|---|---|---|",
        ]
        for r in evidence.regressions:
            delta = "-" if r.delta is None else f"{r.delta:+.3f}"
            ci = "-" if r.ci_low is None or r.ci_high is None else f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}]"
            runs = f"#{r.run_id} vs #{r.baseline_run_id}" if r.run_id and r.baseline_run_id else "-"
            lines.append(f"| {r.evalset} | {r.metric} | {r.state} | {delta} | {ci} | {runs} |")
        for r in evidence.regressions:
            for name, state, slice_delta in r.slices:
                change = "" if slice_delta is None else f" ({slice_delta:+.3f})"
                lines.append(f"\nSlice {name} of {r.evalset} ({r.metric}): {state}{change}.")
    else:
        lines.append("No verdict against a baseline yet (pin one with `monitor baseline pin`).")
    lines.append("")
    for deploy in evidence.deploys:
        since = (
            f" since run #{deploy.changed_run_id} ({deploy.changed_at})"
            if deploy.changed_run_id is not None
            else ""
        )
        state = (
            f"differs in {' and '.join(deploy.changed)}{since}"
            if deploy.changed
            else "serves the baseline's weights and settings"
        )
        lines.append(
            f"- deployed model on {deploy.evalset}: the baseline (run #{deploy.baseline_run_id}) ran fingerprint "
            f"{short_fingerprint(deploy.baseline_fingerprint)}, settings {deploy.baseline_settings_digest}; the latest "
            f"run ran fingerprint {short_fingerprint(deploy.fingerprint)}, settings {deploy.settings_digest}: {state}"
        )
    if evidence.deploys:
        lines.append("")
    if evidence.drift:
        for d in evidence.drift:
            state = "drifted" if d.drifted else "stable"
            score = "" if d.score is None else f" (score {d.score:.3f})"
            lines.append(f"- production inputs from {d.source}: {state}{score}")
        lines.append("")
    lines += ["## Options", ""]
    if evidence.challengers:
        lines += [
            "| release | prompt | eval set | score | fine-tune | vs fine-tune (95% CI) | vs old base (95% CI) "
            "| runs (release, fine-tune, old base) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in evidence.challengers:
            runs = ", ".join(
                f"#{c.runs[k]}" if k in c.runs else "-" for k in ("challenger", "finetune", "old_base")
            )
            lines.append(
                f"| {c.release} | {c.strategy} | {c.evalset} | {c.challenger_score:.3f} | {c.finetune_score:.3f} | "
                f"{_fmt_interval(c.vs_finetune)} | {_fmt_interval(c.vs_old_base)} | {runs} |"
            )
    else:
        lines.append("No challenger has been evaluated yet.")
    lines.append("")
    if cost_text:
        lines += ["## The numbers", "", cost_text.strip(), ""]
    lines += ["## How this was decided", "", DECIDED_HOW, ""]
    return "\n".join(lines)


def memo_sentences(memo: str) -> list[str]:
    """The memo's prose sentences (tables and headings left out), for the test that none repeats."""
    import re

    out = []
    for line in memo.splitlines():
        text = line.strip().removeprefix("- ")
        if not text or text.startswith(("|", "#", "_")):
            continue
        out += [part.strip() for part in re.split(r"(?<=[.:;])\s+(?=[A-Z])", text) if part.strip()]
    return out


def _fmt_interval(interval: Interval | None) -> str:
    if interval is None:
        return "not paired"
    return f"{interval.delta:+.3f} [{interval.ci_low:+.3f}, {interval.ci_high:+.3f}]"


# --- the cost case ---------------------------------------------------------------------------------


def token_profile(run: Any, label: str) -> Any:
    """Mean prompt and completion tokens per request in ``run``, measured, not assumed."""
    from monitor.analysis.costs import TokenProfile

    if run is None or not run.items_done:
        return None
    done = max(1, run.items_done - run.items_failed)
    # a run over several few-shot draws sent each item once per draw: a request is one draw's prompt
    draws = max(1, int((run.settings or {}).get("fewshot_draws") or 1))
    over = f", the mean over {draws} few-shot draws" if draws > 1 else ""
    try:
        return TokenProfile(
            run.prompt_tokens / done / draws,
            run.completion_tokens / done / draws,
            f"{label}: run {run.id} on {run.evalset_name}{over}",
        )
    except ValueError:
        return None


def rebased_profile(store: Store, release: str, evalset: str, finetune_run: Any, fine: Any) -> Any:
    """Tokens a request of the fine-tune's own prompt on ``release``: the prompt as the release's run
    with the fine-tune's strategy counted it (its tokenizer), the completions the fine-tune's, scaled by
    the two tokenizers' ratio on that prompt.  ``None`` when the release has no such run."""
    from monitor.analysis.costs import TokenProfile

    if finetune_run is None or fine is None:
        return None
    run = _latest_run(store, release, evalset, finetune_run.strategy)
    measured = token_profile(run, release)
    if measured is None:
        return None
    ratio = measured.prompt_tokens / fine.prompt_tokens if fine.prompt_tokens else 1.0
    try:
        return TokenProfile(
            measured.prompt_tokens,
            fine.completion_tokens * ratio,
            f"the fine-tune's prompt under {release}'s tokenizer: run {run.id} ({run.strategy}); "
            f"completions the fine-tune's, scaled by the tokenizers' ratio ({ratio:.2f})",
        )
    except ValueError:
        return None


def cost_case_for(
    store: Store, cfg: MonitorConfig, finetune: str, decision: Decision, evidence: Evidence
) -> Any:
    """The cost case of every option, from the token counts of the fine-tune's and the challenger's runs,
    with each option's quality condition and the recommended action."""
    from monitor.analysis.costs import cost_case

    ft = cfg.finetunes[finetune]
    if ft.costs is None or not evidence.evalsets:
        return None
    evalset = evidence.evalsets[0]
    candidates = [c for c in evidence.challengers if c.strategy != "zero-shot" and c.evalset == evalset]
    if decision.release is not None:
        candidates = (
            [c for c in candidates if c.release == decision.release and c.strategy == decision.strategy]
            or [c for c in candidates if c.release == decision.release]
            or candidates
        )
    if not candidates:
        return None
    chosen = candidates[0]
    ft_run = _latest_run(store, ft.model, evalset, None)
    fine = token_profile(ft_run, f"{ft.model} (fine-tune)")
    few = token_profile(
        _latest_run(store, chosen.release, evalset, chosen.strategy), f"{chosen.release} {chosen.strategy}"
    )
    if fine is None or few is None:
        return None
    deploys = bad_deploys(evidence)
    rollback = (
        f"the baseline's weights (fingerprint {short_fingerprint(deploys[0].baseline_fingerprint)})"
        if deploys
        else None
    )
    conditions = option_conditions(evidence, chosen.release, chosen.strategy, retire_margin=ft.retire_margin)
    case = cost_case(
        ft.costs,
        fine,
        few,
        rebased_profile(store, chosen.release, evalset, ft_run, fine),
        challenger=chosen.release,
        rollback=rollback,
        conditions=conditions,
        recommended=decision.action,
    )
    judged = judge_tokens_note(store, ft.model, evidence.evalsets)
    return replace(case, assumptions=(*case.assumptions, judged)) if judged else case


def judge_tokens_note(store: Store, model: str, evalsets: Sequence[str]) -> str | None:
    """What the judges of the fine-tune's latest runs cost in tokens each evaluation cycle (None: no judge).

    The same for every option (the monitor judges whatever is deployed), so it is stated, not priced.
    """
    usage: dict[str, list[int]] = {}
    for evalset in evalsets:
        run = _latest_run(store, model, evalset, None)
        for judge, used in ((run.backend_info or {}).get("judge_usage") or {}).items() if run else ():
            total = usage.setdefault(str(judge), [0, 0, 0])
            for i, key in enumerate(("requests", "prompt_tokens", "completion_tokens")):
                total[i] += int(used.get(key) or 0)
    if not usage:
        return None
    parts = [
        f"{judge}: {requests:,} requests, {prompt:,} prompt and {completion:,} completion tokens"
        for judge, (requests, prompt, completion) in sorted(usage.items())
    ]
    return (
        f"judging the eval sets of {model} each cycle takes {'; '.join(parts)} (the latest runs, calibration "
        "included); the same for every option, so not priced here"
    )
