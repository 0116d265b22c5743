"""The calibrated judge: how well an LLM judge agrees with people, and when to stop trusting it.

A ``judge`` metric may carry a human-labelled calibration file.  Each run has the
judge label every line of it again; this module turns the two columns (people's
labels, the judge's) into agreement (:func:`agreement`: accuracy and Cohen's kappa
with its standard error), decides the "judge drifted" canary against the previous
run's calibration (:func:`judge_canary`) and says when a verdict on a judged metric
is unreliable (:func:`unreliable_reason`).

Everything but :func:`check_judges` is a pure function of plain data: the calibration
record a run keeps in ``backend_info["judges"][metric]`` (:func:`calibration_record`
builds it).  :func:`check_judges` reads the previous run from the store and stores each
judge's canary as a finding (kind ``canary``, source ``judge:<evalset>/<metric>``), with a
``judge.drifted`` event when a judge newly drifted, in the findings' transaction.

An answer the judge gave off its scale (``None``) counts against it: it is its own
category, which never matches a human label, so a judge that stops following the
rubric loses agreement instead of leaving the sample.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from monitor import events
from monitor.analysis.stats import mcnemar_exact
from monitor.errors import NotFoundError
from monitor.events import Notify
from monitor.store import RunRecord, Store, utcnow
from monitor.store.tables import DriftRecord

#: The version of the calibration record kept in a run's ``backend_info``.
CALIBRATION_FORMAT_VERSION = 1
#: The kappa below which a judge counts as drifted, and its verdicts unreliable, unless configured.
DEFAULT_MIN_AGREEMENT = 0.6
#: The category an unparseable judge answer falls in (never a human label).
_OFF_SCALE = "off-scale"


@dataclass(frozen=True)
class Agreement:
    """How often the judge gave the human label, over ``n`` calibration lines.

    Attributes:
        n: lines compared.
        agree: lines where the judge gave the human label.
        accuracy: ``agree / n``.
        kappa: Cohen's kappa (chance-corrected agreement); None when undefined
            (every label, of people and judge, the same single value).
        kappa_stderr: the large-sample standard error of kappa (Cohen 1960), None with kappa.
        kappa_quadratic: quadratic-weighted kappa, for an ordinal scale (1-5); None otherwise.
        off_scale: lines whose judge answer did not parse (counted as disagreements).
    """

    n: int
    agree: int
    accuracy: float
    kappa: float | None
    kappa_stderr: float | None
    kappa_quadratic: float | None
    off_scale: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "agree": self.agree,
            "accuracy": self.accuracy,
            "kappa": self.kappa,
            "kappa_stderr": self.kappa_stderr,
            "kappa_quadratic": self.kappa_quadratic,
            "off_scale": self.off_scale,
        }


def cohen_kappa(
    first: Sequence[Any],
    second: Sequence[Any],
    *,
    weights: str | None = None,
    categories: Sequence[Any] | None = None,
) -> float | None:
    """Cohen's kappa of two raters' labels on the same items, as ``sklearn.metrics.cohen_kappa_score``.

    ``weights``: None (agreement or not), ``linear`` or ``quadratic`` (disagreement
    weighted by the distance between the categories' positions in ``categories``,
    default: the sorted labels seen).  None when kappa is undefined (chance agreement 1).

    Raises:
        ValueError: different lengths, no items, or an unknown weighting.
    """
    if len(first) != len(second):
        raise ValueError(f"the two raters labelled {len(first)} and {len(second)} items")
    if not first:
        raise ValueError("no items to compare")
    if weights not in (None, "linear", "quadratic"):
        raise ValueError(f"weights must be None, linear or quadratic, not {weights!r}")
    cats = list(categories) if categories is not None else sorted(set(first) | set(second), key=_sort_key)
    index = {c: i for i, c in enumerate(cats)}
    k = len(cats)
    n = len(first)
    observed = [[0.0] * k for _ in range(k)]
    for a, b in zip(first, second, strict=True):
        observed[index[a]][index[b]] += 1.0
    rows = [sum(observed[i]) for i in range(k)]
    cols = [sum(observed[i][j] for i in range(k)) for j in range(k)]

    def weight(i: int, j: int) -> float:
        if weights is None:
            return 0.0 if i == j else 1.0
        distance = abs(i - j)
        return float(distance if weights == "linear" else distance**2)

    disagreement = math.fsum(weight(i, j) * observed[i][j] for i in range(k) for j in range(k)) / n
    expected = math.fsum(weight(i, j) * rows[i] * cols[j] for i in range(k) for j in range(k)) / (n * n)
    if expected == 0.0:
        return None
    return 1.0 - disagreement / expected


def _sort_key(value: Any) -> tuple[int, Any]:
    # numbers before the off-scale category, each in their own order
    return (0, value) if isinstance(value, int | float) else (1, str(value))


def agreement(human: Sequence[int], judge: Sequence[int | None], *, ordinal: bool = False) -> Agreement:
    """Agreement of the judge's labels with people's on the same lines (``None``: an off-scale answer).

    ``ordinal`` (a 1-5 scale) adds the quadratic-weighted kappa, where an off-scale
    answer counts as the furthest possible category.

    Raises:
        ValueError: different lengths or no lines.
    """
    if len(human) != len(judge):
        raise ValueError(f"{len(human)} human labels but {len(judge)} judge labels")
    if not human:
        raise ValueError("no calibration lines to compare")
    n = len(human)
    rated: list[Any] = [_OFF_SCALE if j is None else j for j in judge]
    agree = sum(1 for h, j in zip(human, rated, strict=True) if h == j)
    accuracy = agree / n
    kappa = cohen_kappa(list(human), rated)
    stderr = None
    if kappa is not None:
        expected = _chance_agreement(list(human), rated)
        stderr = math.sqrt(accuracy * (1.0 - accuracy) / (n * (1.0 - expected) ** 2))
    weighted = None
    if ordinal:
        scale = sorted(set(human) | {j for j in judge if j is not None})
        # off-scale answers sit one step beyond the top of the scale: the furthest from most labels
        far = max(scale) + 1
        weighted = cohen_kappa(
            list(human),
            [far if j is None else j for j in judge],
            weights="quadratic",
            categories=[*scale, far],
        )
    return Agreement(n, agree, accuracy, kappa, stderr, weighted, sum(1 for j in judge if j is None))


def _chance_agreement(first: Sequence[Any], second: Sequence[Any]) -> float:
    n = len(first)
    counts_first: dict[Any, int] = {}
    counts_second: dict[Any, int] = {}
    for a in first:
        counts_first[a] = counts_first.get(a, 0) + 1
    for b in second:
        counts_second[b] = counts_second.get(b, 0) + 1
    return math.fsum(counts_first[c] * counts_second.get(c, 0) for c in counts_first) / (n * n)


def calibration_record(
    *,
    ids: Sequence[str],
    human: Sequence[int],
    judge: Sequence[int | None],
    scale: str,
    file: str,
    file_sha256: str,
    min_agreement: float,
    duplicates: int = 0,
) -> dict[str, Any]:
    """The calibration of one judge in one run, as kept in ``backend_info["judges"][metric]["calibration"]``.

    It keeps each line's judge label (``None``: off scale), so the next run's canary
    can compare line by line (:func:`judge_canary`).
    """
    found = agreement(human, judge, ordinal=scale != "binary")
    return {
        "format_version": CALIBRATION_FORMAT_VERSION,
        "file": file,
        "file_sha256": file_sha256,
        "scale": scale,
        "min_agreement": min_agreement,
        "duplicates": duplicates,
        **found.to_dict(),
        "ids": list(ids),
        "human": list(human),
        "judge": list(judge),
    }


@dataclass(frozen=True)
class JudgePolicy:
    """When a judge counts as drifted.

    Attributes:
        min_agreement: the kappa below which the judge is not trusted (its verdicts unreliable).
        alpha: the level of the test of a drop of agreement against the previous run's.
    """

    min_agreement: float = DEFAULT_MIN_AGREEMENT
    alpha: float = 0.05


@dataclass(frozen=True)
class JudgeCanary:
    """The "judge drifted" canary of one judged metric in one run."""

    metric: str
    drifted: bool
    reason: str | None
    kappa: float | None
    accuracy: float
    n: int
    min_agreement: float
    previous_kappa: float | None = None
    previous_accuracy: float | None = None
    #: The two-sided exact McNemar p-value of the change of per-line agreement (None: not tested).
    p_value: float | None = None
    #: Lines the judge agreed on before and not now, and the reverse.
    lost: int | None = None
    gained: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def judge_canary(
    metric: str,
    current: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    policy: JudgePolicy | None = None,
) -> JudgeCanary:
    """Did the judge of ``metric`` drift?  ``current`` and ``previous`` are calibration records
    (:func:`calibration_record`; ``previous``: the previous run's, None when there is none).

    Drifted when its kappa is below ``min_agreement`` (the record's own, else the
    policy's; an undefined kappa counts as 0), or when its per-line agreement with
    people dropped significantly against the previous run on the same calibration
    lines: an exact McNemar test of the lines agreed on before and not now against
    the reverse, two-sided at ``alpha`` (a drop only).  A previous run on other lines
    (the file changed) is not compared line by line.
    """
    policy = policy or JudgePolicy()
    floor = float(current.get("min_agreement", policy.min_agreement))
    kappa = _number(current.get("kappa"))
    accuracy = float(current.get("accuracy") or 0.0)
    n = int(current.get("n") or 0)
    reasons = []
    if kappa is None or kappa < floor:
        shown = "undefined" if kappa is None else f"{kappa:.2f}"
        reasons.append(
            f"judge agreement with people fell below the floor: kappa {shown} < {floor:.2f} "
            f"(accuracy {accuracy:.1%}, n={n})"
        )
    canary = JudgeCanary(metric, False, None, kappa, accuracy, n, floor)
    if previous is not None:
        canary = _against_previous(canary, current, previous, policy, reasons)
    return JudgeCanary(**{**canary.__dict__, "drifted": bool(reasons), "reason": "; ".join(reasons) or None})


def _against_previous(
    canary: JudgeCanary,
    current: Mapping[str, Any],
    previous: Mapping[str, Any],
    policy: JudgePolicy,
    reasons: list[str],
) -> JudgeCanary:
    before = _number(previous.get("kappa"))
    found: dict[str, Any] = {
        "previous_kappa": before,
        "previous_accuracy": _number(previous.get("accuracy")),
    }
    if previous.get("file_sha256") == current.get("file_sha256"):
        pairs = _paired_agreement(current, previous)
        if pairs:
            was, now = zip(*pairs, strict=True)
            test = mcnemar_exact(list(was), list(now), alpha=policy.alpha)
            found.update(p_value=test.p_value, lost=test.pass_to_fail, gained=test.fail_to_pass)
            if test.delta < 0 and test.p_value < policy.alpha:
                reasons.append(
                    f"judge agreement with people dropped: accuracy {test.baseline_mean:.1%} -> "
                    f"{test.current_mean:.1%} on the same {test.n} calibration lines "
                    f"({test.pass_to_fail} lost, {test.fail_to_pass} gained, McNemar p={test.p_value:.3g})"
                )
    return JudgeCanary(**{**canary.__dict__, **found})


def _paired_agreement(current: Mapping[str, Any], previous: Mapping[str, Any]) -> list[tuple[bool, bool]]:
    """(agreed in the previous run, agrees now) for every calibration line both runs judged."""

    def agreed(record: Mapping[str, Any]) -> dict[str, bool]:
        ids, human, judge = record.get("ids") or [], record.get("human") or [], record.get("judge") or []
        if not (len(ids) == len(human) == len(judge)):
            return {}
        return {str(i): h == j for i, h, j in zip(ids, human, judge, strict=True)}

    was, now = agreed(previous), agreed(current)
    return [(was[i], now[i]) for i in now if i in was]


def unreliable_reason(judge: Mapping[str, Any] | None) -> str | None:
    """Why verdicts on a judged metric cannot be trusted in this run, or None.

    ``judge`` is the metric's entry of the run's ``backend_info["judges"]`` (None: not
    a judged metric).  Unreliable when the judge's calibration kappa is below its
    ``min_agreement`` (an undefined kappa counts as below).  A judge without a
    calibration file is not marked: nothing says how well it agrees with people.
    """
    if not judge:
        return None
    calibration = judge.get("calibration")
    if not isinstance(calibration, Mapping):
        return None
    floor = float(calibration.get("min_agreement", DEFAULT_MIN_AGREEMENT))
    kappa = _number(calibration.get("kappa"))
    if kappa is not None and kappa >= floor:
        return None
    shown = "undefined" if kappa is None else f"{kappa:.2f}"
    return (
        f"unreliable: the judge ({judge.get('model') or '?'}) agrees with people at kappa {shown} "
        f"< {floor:.2f} on {calibration.get('n')} calibration lines"
    )


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def judge_source(evalset: str, metric: str) -> str:
    """The source of a judge canary's finding: ``judge:<evalset>/<metric>``."""
    return f"judge:{evalset}/{metric}"[:200]


def previous_judged_run(store: Store, run: RunRecord, model: str, metric: str) -> RunRecord | None:
    """The newest succeeded run before ``run`` of the same model, eval set and strategy whose judge of
    ``metric`` was calibrated (a bounded read: the newest 50 runs of the series)."""
    for earlier, _ in store.runs(model=model, evalset=run.evalset_name, status="succeeded", limit=50):
        if earlier.id is None or run.id is None or earlier.id >= run.id or earlier.strategy != run.strategy:
            continue
        if _calibration_of(earlier, metric) is not None:
            return earlier
    return None


def _calibration_of(run: RunRecord, metric: str) -> Mapping[str, Any] | None:
    judge = ((run.backend_info or {}).get("judges") or {}).get(metric)
    calibration = judge.get("calibration") if isinstance(judge, Mapping) else None
    return calibration if isinstance(calibration, Mapping) else None


def check_judges(
    store: Store, run_id: int, notify: Notify | None = None, policy: JudgePolicy | None = None
) -> list[JudgeCanary]:
    """The "judge drifted" canary of every calibrated judge of a succeeded run, stored as findings.

    Each judged metric is compared (:func:`judge_canary`) with its reference run: the
    previous calibrated run of the series (:func:`previous_judged_run`) while the judge is
    fine, and the last run before the drift while it stays drifted, so that a judge that
    got worse and stays worse stays drifted instead of becoming the new normal.  A judge
    that newly drifted (its previous finding was clear, or there was none) raises
    ``judge.drifted``, once per streak, in the findings' transaction.
    """
    run = store.get_run(run_id)
    judges = (run.backend_info or {}).get("judges")
    if run.status != "succeeded" or not isinstance(judges, Mapping):
        return []
    model = store.model_name(run.model_id)
    found: list[JudgeCanary] = []
    records: list[DriftRecord] = []
    raised: list[events.Event] = []
    for metric, judge in sorted(judges.items()):
        calibration = _calibration_of(run, metric)
        if calibration is None or not isinstance(judge, Mapping):
            continue
        source = judge_source(run.evalset_name, metric)
        last = store.previous_finding(run.model_id, "canary", source)
        reference = _reference_run(store, run, model, metric, last)
        previous = _calibration_of(reference, metric) if reference is not None else None
        canary = judge_canary(metric, calibration, previous, policy)
        if "error" in calibration:
            canary = JudgeCanary(
                **{**canary.__dict__, "reason": f"the judge could not be calibrated: {calibration['error']}"}
            )
        found.append(canary)
        records.append(
            DriftRecord(
                model_id=run.model_id,
                kind="canary",
                source=source,
                run_id=run.id,
                score=canary.kappa,
                p_value=canary.p_value,
                threshold=canary.min_agreement,
                drifted=canary.drifted,
                state="problem" if canary.drifted else "ok",
                reason=canary.reason,
                details={
                    **canary.to_dict(),
                    "judge": judge.get("model"),
                    "reference_run": reference.id if reference is not None else None,
                },
                created_at=utcnow(),
            )
        )
        if canary.drifted and (last is None or not last.drifted):
            raised.append(
                events.judge_drifted(
                    model=model,
                    evalset=run.evalset_name,
                    metric=metric,
                    judge=judge.get("model"),
                    kappa=canary.kappa,
                    accuracy=canary.accuracy,
                    min_agreement=canary.min_agreement,
                    previous_kappa=canary.previous_kappa,
                    p_value=canary.p_value,
                    n=canary.n,
                    summary=canary.reason,
                    run=run.id,
                )
            )
    store.add_findings(records, raised, notify)
    return found


def _reference_run(
    store: Store, run: RunRecord, model: str, metric: str, last: DriftRecord | None
) -> RunRecord | None:
    """While the judge is drifted, the run its last finding was compared with; else the previous one."""
    if last is not None and last.drifted:
        reference = (last.details or {}).get("reference_run")
        if isinstance(reference, int):
            try:
                return store.get_run(reference)
            except NotFoundError:
                pass
    return previous_judged_run(store, run, model, metric)
