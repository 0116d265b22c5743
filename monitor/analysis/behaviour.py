"""Behaviour: item-level differences between runs, flaky items, behaviour drift and integrity canaries.

Accuracy can hold while behaviour moves: a silently updated endpoint, a new
serving stack or a quantised rebuild changes *which* items pass and what the
model says.  These checks look at the per-item predictions, not the means.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

#: Below this share of identical predictions against the baseline, behaviour has moved.
DEFAULT_MIN_AGREEMENT = 0.9


@dataclass(frozen=True)
class ItemOutcome:
    """What one run said about one item."""

    id: str
    prediction: str | None
    correct: bool | None
    error: str | None = None


@dataclass(frozen=True)
class RunDiff:
    """Item-level differences between run A and run B."""

    common: int
    agreement: float | None
    newly_broken: tuple[str, ...]
    newly_fixed: tuple[str, ...]
    changed_predictions: tuple[str, ...]
    only_in_a: tuple[str, ...]
    only_in_b: tuple[str, ...]
    failed_in_b: tuple[str, ...]


def diff_outcomes(a: Sequence[ItemOutcome], b: Sequence[ItemOutcome]) -> RunDiff:
    """Compare two runs item by item (items that failed in either run are not compared)."""
    by_a = {o.id: o for o in a}
    by_b = {o.id: o for o in b}
    common = [i for i in by_a if i in by_b and not by_a[i].error and not by_b[i].error]
    broken = tuple(i for i in common if by_a[i].correct is True and by_b[i].correct is False)
    fixed = tuple(i for i in common if by_a[i].correct is False and by_b[i].correct is True)
    changed = tuple(i for i in common if by_a[i].prediction != by_b[i].prediction)
    agreement = 1 - len(changed) / len(common) if common else None
    return RunDiff(
        common=len(common),
        agreement=agreement,
        newly_broken=broken,
        newly_fixed=fixed,
        changed_predictions=changed,
        only_in_a=tuple(i for i in by_a if i not in by_b),
        only_in_b=tuple(i for i in by_b if i not in by_a),
        failed_in_b=tuple(i for i in by_b if by_b[i].error),
    )


def flaky_items(
    history: Sequence[Mapping[str, bool | None]],
    min_flips: int = 2,
    *,
    keys: Sequence[Hashable] | None = None,
) -> dict[str, int]:
    """Items whose correctness flipped at least ``min_flips`` times between runs of the same model.

    ``history`` holds one ``{item id: correct}`` per run, oldest first.  An item is
    flaky when its outcome changes from one run to the next *of the same model under
    the same settings*: ``keys`` gives each run's identity, e.g. ``(model fingerprint,
    settings digest)``, and a flip is counted only against the previous run with the
    same key.  An item that changed because other weights were deployed (and changed
    back after a rollback) is a change of the model, not noise.  Without ``keys``
    every run is taken to be of the same model.

    Raises:
        ValueError: ``keys`` not one per run.
    """
    if keys is not None and len(keys) != len(history):
        raise ValueError(f"keys must give one key per run: {len(keys)} keys for {len(history)} runs")
    flips: Counter[str] = Counter()
    previous: dict[tuple[Hashable, str], bool] = {}
    for index, run in enumerate(history):
        key = keys[index] if keys is not None else None
        for item, correct in run.items():
            if correct is None:
                continue
            last = previous.get((key, item))
            if last is not None and last != correct:
                flips[item] += 1
            previous[(key, item)] = correct
    return {item: n for item, n in sorted(flips.items()) if n >= min_flips}


def run_identity(fingerprint: str | None, settings_digest: str | None) -> tuple[str | None, str | None]:
    """What makes two runs repeats of each other for :func:`flaky_items`: the weights and the settings."""
    return (fingerprint, settings_digest)


@dataclass(frozen=True)
class BehaviourDrift:
    """How far a run's behaviour moved from its baseline's, on the items both answered."""

    agreement: float | None
    n: int
    #: p-value of a test that the distribution of predicted labels (or output lengths) changed
    p_value: float | None
    test: str
    drifted: bool
    reasons: tuple[str, ...]
    details: dict[str, Any] = field(default_factory=dict)


def behaviour_drift(
    baseline: Sequence[ItemOutcome],
    current: Sequence[ItemOutcome],
    *,
    task: str,
    alpha: float = 0.01,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
) -> BehaviourDrift:
    """Agreement with the baseline's predictions, and a test for a change in what the model outputs.

    Multiple choice: a chi-square test of homogeneity on the predicted-label counts
    (baseline vs current). Generation: a two-sample Kolmogorov-Smirnov test on
    output lengths.
    """
    diff = diff_outcomes(baseline, current)
    base = {o.id: o for o in baseline if not o.error}
    cur = {o.id: o for o in current if not o.error}
    common = [i for i in base if i in cur]
    reasons = []
    p_value: float | None = None
    details: dict[str, Any] = {}
    if task == "multiple_choice":
        test = "chi2 homogeneity of predicted labels"
        labels = sorted({str(base[i].prediction) for i in common} | {str(cur[i].prediction) for i in common})
        table = np.array(
            [
                [sum(1 for i in common if str(base[i].prediction) == label) for label in labels],
                [sum(1 for i in common if str(cur[i].prediction) == label) for label in labels],
            ]
        )
        table = table[:, table.sum(axis=0) > 0]
        details["labels"] = {
            "baseline": dict(zip(labels, table[0].tolist(), strict=False)),
            "current": dict(zip(labels, table[1].tolist(), strict=False)),
        }
        if table.shape[1] >= 2:
            p_value = float(stats.chi2_contingency(table, correction=False).pvalue)
        else:
            p_value = 1.0
    else:
        test = "KS on output lengths"
        a = [len(base[i].prediction or "") for i in common]
        b = [len(cur[i].prediction or "") for i in common]
        details["mean_length"] = {
            "baseline": float(np.mean(a)) if a else None,
            "current": float(np.mean(b)) if b else None,
        }
        p_value = float(stats.ks_2samp(a, b).pvalue) if len(a) >= 2 and a != b else 1.0
    if diff.agreement is not None and diff.agreement < min_agreement:
        reasons.append(
            f"only {diff.agreement:.1%} of predictions agree with the baseline (< {min_agreement:.0%})"
        )
    if p_value is not None and p_value < alpha:
        reasons.append(f"the distribution of outputs changed ({test}, p={p_value:.2g} < {alpha})")
    return BehaviourDrift(
        agreement=diff.agreement,
        n=len(common),
        p_value=p_value,
        test=test,
        drifted=bool(reasons),
        reasons=tuple(reasons),
        details=details,
    )


@dataclass(frozen=True)
class CanaryFinding:
    """An integrity problem: a name for it and the evidence."""

    kind: str
    message: str


def adapter_not_applied(
    finetune: Mapping[str, Sequence[float] | None],
    base: Mapping[str, Sequence[float] | None],
    tol: float = 1e-6,
) -> CanaryFinding | None:
    """The fine-tune scores every common item exactly as its base model does: the adapter is not applied.

    Compares per-choice log-likelihoods of runs made with the same prompt strategy.
    """
    common = [i for i in finetune if i in base and finetune[i] is not None and base[i] is not None]
    if not common:
        return None
    for item in common:
        a, b = finetune[item], base[item]
        assert a is not None and b is not None
        if len(a) != len(b) or any(abs(x - y) > tol for x, y in zip(a, b, strict=True)):
            return None
    return CanaryFinding(
        "adapter_not_applied",
        f"the fine-tune's log-likelihoods equal its base model's on all {len(common)} common items: "
        "the adapter is not applied",
    )


def fingerprint_changed(
    baseline_fingerprint: str | None,
    current_fingerprint: str | None,
    baseline_version: str | None,
    current_version: str | None,
) -> CanaryFinding | None:
    """New weights under the same model version (or with no version at all)."""
    if not baseline_fingerprint or not current_fingerprint or baseline_fingerprint == current_fingerprint:
        return None
    if baseline_version is not None and current_version is not None and baseline_version != current_version:
        return None
    return CanaryFinding(
        "fingerprint_changed",
        f"the model's weights changed (fingerprint {baseline_fingerprint[:12]} -> {current_fingerprint[:12]}) "
        f"without a new model version ({current_version or 'unversioned'})",
    )


#: How many changed stack entries a finding names before counting the rest.
MAX_STACK_CHANGES = 4


def stack_changed(
    reference: Mapping[str, str] | None, current: Mapping[str, str] | None, reference_label: str
) -> CanaryFinding | None:
    """The serving stack around the weights changed: tokenizer files, special tokens, the chat
    template, the generation config, or what a server says of itself (its version, the template it
    renders).  ``reference_label`` says what the stack is compared with ("the baseline run 12").

    Entries only one side knows (a server asked for less) are not a change; a changed value is.
    """
    if not reference or not current:
        return None
    changed = sorted(k for k in reference.keys() & current.keys() if reference[k] != current[k])
    if not changed:
        return None
    shown = [f"{k} {_short(reference[k])} -> {_short(current[k])}" for k in changed[:MAX_STACK_CHANGES]]
    more = len(changed) - len(shown)
    return CanaryFinding(
        "stack_changed",
        f"the serving stack changed since {reference_label}: {'; '.join(shown)}"
        + (f" (and {more} more)" if more else ""),
    )


def _short(value: str) -> str:
    """A digest cut to ``sha256:`` and 12 hex digits; any other value as it is (cut at 40 characters)."""
    if value.startswith("sha256:"):
        return value[:19]
    return value if len(value) <= 40 else value[:39] + "…"
