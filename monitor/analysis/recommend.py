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
from typing import Any

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
