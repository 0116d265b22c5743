"""What to do with a fine-tune: keep it, re-train it, re-base it onto a newer base, or retire it.

The decision is made from evidence the monitor already stores: regression
verdicts against the baseline, input drift findings, and challenger runs (a
newer base release and the old base, evaluated with the same prompts on the
fine-tune's golden eval sets).  :func:`decide` is a pure function of that
evidence so that each path can be tested on constructed cases.

The rules, in order (the first that holds wins):

1. ``retire``: a newer base with a few-shot prompt is, on every golden eval set,
   non-inferior to the fine-tune within ``retire_margin``, significantly: the
   lower bound of the paired confidence interval of (challenger - fine-tune)
   lies above ``-retire_margin``.  The fine-tune no longer pays for itself.
2. ``rebase``: a newer base beats the old base by more than ``rebase_margin``
   under the same prompt, significantly (the interval's lower bound above the
   margin), on some golden eval set and worse on none: an adapter trained on it
   is expected to beat the current fine-tune.
3. ``retrain``: a regression against the baseline is confirmed, or input drift
   is confirmed while the golden scores fall (a negative delta, suspect or worse).
4. ``keep``: none of these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from monitor.config import MonitorConfig
    from monitor.store import Store
    from monitor.store.tables import RecommendationRecord

ACTIONS = ("keep", "retrain", "rebase", "retire")


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


@dataclass(frozen=True)
class Evidence:
    finetune: str
    evalsets: tuple[str, ...]
    regressions: tuple[RegressionEvidence, ...] = ()
    drift: tuple[DriftEvidence, ...] = ()
    challengers: tuple[ChallengerEvidence, ...] = ()

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


def decide(evidence: Evidence, *, retire_margin: float = 0.02, rebase_margin: float = 0.02) -> Decision:
    """Apply the rules of this module to ``evidence``."""
    retire = _retire_candidate(evidence, retire_margin)
    if retire is not None:
        return retire
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
            for c in better
        )
        decision = Decision("rebase", reasons, release, strategy, {"base_gain": gain})
        if best is None or gain > best[0]:
            best = (gain, decision)
    return best[1] if best else None


def summarize(decision: Decision) -> str:
    """One line for tables, webhooks and the memo's first paragraph."""
    head = {
        "keep": "keep the fine-tune",
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
    regressions = tuple(
        RegressionEvidence(
            v.evalset_name, v.metric, v.state, v.delta, v.ci_low, v.ci_high, v.run_id, v.baseline_run_id
        )
        for v in store.latest_verdicts(model_id)
        if v.evalset_name in ft.evalsets
    )
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
                    )
                )
    return Evidence(finetune, tuple(ft.evalsets), regressions, drift, tuple(challengers))


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
        """The one-page Markdown memo (:func:`render_memo`) with the cost table and sentences."""
        cost_text = (
            self.costs.markdown_table() + "\n\n" + " ".join(self.costs.sentences) if self.costs else ""
        )
        return render_memo(self.finetune, self.decision, self.evidence, cost_text, when=when)


def assess_finetune(store: Store, cfg: MonitorConfig, finetune: str) -> Assessment:
    """Gather the evidence of a configured fine-tune, decide, and price the options (nothing is stored)."""
    ft = cfg.finetunes[finetune]
    evidence = gather_evidence(store, cfg, finetune)
    decision = decide(evidence, retire_margin=ft.retire_margin, rebase_margin=ft.rebase_margin)
    return Assessment(finetune, decision, evidence, cost_case_for(store, cfg, finetune, decision, evidence))


#: The old name of :func:`assess_finetune`, kept until the CLI and the demo call the new one.


def render_memo(
    finetune: str, decision: Decision, evidence: Evidence, cost_text: str = "", when: str = ""
) -> str:
    """A one-page Markdown memo a team can defend: diagnosis, options, numbers, recommendation."""
    lines = [f"# {finetune}: {decision.action}", ""]
    if when:
        lines += [f"_Prepared by the model-aging monitor on {when}._", ""]
    lines += ["## Recommendation", "", summarize(decision) + ".", ""]
    for reason in decision.reasons[1:]:
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
    else:
        lines.append("No verdict against a baseline yet (pin one with `monitor baseline pin`).")
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
    lines += [
        "## How this was decided",
        "",
        "Retire when few-shot prompting on a newer base is non-inferior to the fine-tune within the margin on "
        "every golden eval set (the lower bound of the paired 95% interval above minus the margin); re-base "
        "when a newer base beats the old one by more than the margin under the same prompt; re-train on a "
        "confirmed regression, or on input drift while golden scores fall; otherwise keep.",
        "",
    ]
    return "\n".join(lines)


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
    try:
        return TokenProfile(
            run.prompt_tokens / done,
            run.completion_tokens / done,
            f"{label}: run {run.id} on {run.evalset_name}",
        )
    except ValueError:
        return None


def cost_case_for(
    store: Store, cfg: MonitorConfig, finetune: str, decision: Decision, evidence: Evidence
) -> Any:
    """The cost case of every option, from the token counts of the fine-tune's and the challenger's runs."""
    from monitor.analysis.costs import cost_case

    ft = cfg.finetunes[finetune]
    if ft.costs is None or not evidence.evalsets:
        return None
    evalset = evidence.evalsets[0]
    candidates = [c for c in evidence.challengers if c.strategy != "zero-shot" and c.evalset == evalset]
    if decision.release is not None:
        candidates = [c for c in candidates if c.release == decision.release] or candidates
    if not candidates:
        return None
    chosen = candidates[0]
    fine = token_profile(_latest_run(store, ft.model, evalset, None), f"{ft.model} (fine-tune)")
    few = token_profile(
        _latest_run(store, chosen.release, evalset, chosen.strategy), f"{chosen.release} {chosen.strategy}"
    )
    zero = token_profile(
        _latest_run(store, chosen.release, evalset, "zero-shot"), f"{chosen.release} zero-shot"
    )
    if fine is None or few is None:
        return None
    return cost_case(ft.costs, fine, few, zero, challenger=chosen.release)
