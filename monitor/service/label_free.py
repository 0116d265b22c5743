"""Estimated production accuracy without labels, for a multiple-choice fine-tune.

The pieces, each from where it already lives:

* the **calibration set** is the golden set's newest succeeded run of the model
  under the same prompt settings: its stored per-choice log-likelihoods and
  whether each item was right (``item_results``);
* the **production inputs** are a seeded sample of the model's drift window
  (``models.<name>.drift.source``), read as input drift reads them;
* each production text is put into the eval set's prompt in the field that holds
  the input (``drift.reference.field`` for an eval-set reference, else ``input``),
  with the eval set's choices, few-shot prefix and delimiter, and its choices are
  scored by the model's backend with the same log-likelihood requests a run makes;
* :func:`monitor.analysis.label_free.estimate_accuracy` turns the two into an
  estimate with its interval.

Repeated production texts are scored once and weighted by their count, so an
estimate covers the traffic as it came.  :func:`record_production_accuracy`
stores the result as a finding (kind ``estimate``) beside the input drift one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

import numpy as np

from monitor.analysis.drift.sources import ProductionSource, Window, build_source
from monitor.analysis.label_free import (
    AccuracyEstimate,
    LabelFreeError,
    MethodChoice,
    estimate_accuracy,
)
from monitor.backends import Backend, ModelSpec
from monitor.config import MonitorConfig
from monitor.errors import ConfigError, NotFoundError
from monitor.evals.evalset import EvalItem, EvalSet, load_evalset, parse_strategy, prompt_fields
from monitor.evals.loop import chat_settings, evaluate
from monitor.events import Notify
from monitor.service.plan import model_spec
from monitor.store import RunRecord, Store, utcnow
from monitor.store.tables import DriftRecord


class ModelSource(Protocol):
    """Where the model comes from: :class:`monitor.service.runs.ModelPool` (not imported: the
    after-job analysis calls this module, and ``runs`` imports the after-job analysis)."""

    def get(self, spec: ModelSpec) -> tuple[Backend, float]: ...


#: The finding's kind in ``drift_analyses``.
FINDING_KIND = "estimate"
#: Production inputs scored per estimate at most (a seeded sample of the window).
DEFAULT_MAX_ITEMS = 500
#: Requests handed to the backend at a time.
CHUNK_SIZE = 64


@dataclass(frozen=True)
class ProductionAccuracy:
    """An accuracy estimate for one model, eval set and production window, and what it rests on."""

    model: str
    evalset: str
    #: ``<kind>:<window>`` of the production source, as input drift names it.
    source: str
    window: Window
    #: The golden run whose item results calibrated the estimate.
    calibration_run_id: int
    #: Inputs in the window, inputs sampled from it, and distinct texts scored.
    window_inputs: int
    sampled: int
    scored_texts: int
    #: Sampled texts the backend could not score (left out of the estimate).
    failed: int
    estimate: AccuracyEstimate
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def series(self) -> str:
        """The finding's ``source``: the eval set and the production source (one series each)."""
        return f"{self.evalset}@{self.source}"

    def summary(self) -> str:
        text = f"{self.model} on {self.evalset}, {self.window}: {self.estimate.summary()}"
        return text + "".join(f"; warning: {w}" for w in self.warnings)

    def to_dict(self) -> dict[str, Any]:
        """The finding's details (JSON): the estimate and where its inputs came from."""
        return {
            **self.estimate.to_dict(),
            "kind": FINDING_KIND,
            "evalset": self.evalset,
            "source": self.source,
            "window": {"start": self.window.start.isoformat(), "end": self.window.end.isoformat()},
            "calibration_run_id": self.calibration_run_id,
            "window_inputs": self.window_inputs,
            "sampled": self.sampled,
            "scored_texts": self.scored_texts,
            "failed": self.failed,
            "warnings": [*self.estimate.warnings, *self.warnings],
        }


def calibration_run(
    store: Store, model_name: str, evalset: EvalSet, fewshot_k: int, backend: Backend | None = None
) -> RunRecord:
    """The newest succeeded run of ``model_name`` on ``evalset`` under the same prompt settings
    (for a chat eval set: under ``backend``'s chat template too).

    Raises:
        NotFoundError: there is none (a run made by generation has other settings, so is never taken).
    """
    digests = {evalset.settings_digest(fewshot_k)}
    template = chat_settings(backend, evalset).get("chat_template_sha256") if backend is not None else None
    if template is not None:
        digests.add(evalset.settings_digest(fewshot_k, chat_template_sha256=template))
    for run, _ in store.runs(model=model_name, evalset=evalset.name, status="succeeded"):
        if run.settings_digest in digests:
            return run
    raise NotFoundError(
        f"no succeeded run of {model_name} on {evalset.name} with its current prompt settings "
        "to calibrate on; run the golden set first"
    )


def input_field(cfg: MonitorConfig, model_name: str, evalset: EvalSet) -> str:
    """The eval item field production texts go into (checked against the prompt).

    Raises:
        ConfigError: the eval set cannot take production inputs (per-item choices, other prompt fields).
    """
    drift = cfg.models[model_name].drift
    name = drift.reference.field if drift is not None and drift.reference.kind == "evalset" else "input"
    where = f"evalsets.{evalset.name}"
    if evalset.task != "multiple_choice":
        raise ConfigError(
            f"a label-free accuracy estimate needs a multiple_choice eval set, not {evalset.task}", where
        )
    if evalset.spec.choices is None:
        raise ConfigError(
            "a label-free accuracy estimate needs the choices in evalset.yaml (production inputs have none)",
            where,
        )
    fields: set[str] = set()
    for text in (evalset.spec.prompt, evalset.spec.system):
        if text is not None:
            fields |= prompt_fields(text)
    others = sorted(fields - {name})
    if name not in fields or others:
        raise ConfigError(
            f"the prompt must take the production text in {{{name}}} and nothing else"
            + (f" (it also needs {', '.join(others)})" if others else f" (it has no {{{name}}})"),
            where,
        )
    return name


def _sample(texts: Sequence[str], limit: int, seed: int) -> list[str]:
    if len(texts) <= limit:
        return list(texts)
    picks = np.sort(np.random.default_rng(seed).choice(len(texts), size=limit, replace=False))
    return [texts[i] for i in picks]


def _choice_lengths(evalset: EvalSet) -> list[float]:
    # acc_norm divides by the choice's length in characters, as scoring does.
    return [max(float(len(c)), 1.0) for c in evalset.spec.choices or ()]


def score_texts(
    backend: Backend, evalset: EvalSet, texts: Sequence[str], *, field_name: str, fewshot_k: int
) -> list[list[float] | None]:
    """Per-choice scores of each text put into the eval set's prompt (None where the backend failed).

    The texts become items of the eval set (its choices, a placeholder target) and go
    through the evaluation loop, so they are rendered and scored exactly as a run's
    items are (few-shot prefix, chat template, chunking, failures kept as data).
    The scores are what the eval set's first metric takes the argmax of: summed
    log-likelihoods (``acc``), or divided by each choice's length (``acc_norm``).

    Raises:
        LabelFreeError: the backend picks choices by generation, so there are no log-likelihoods.
    """
    choices = evalset.spec.choices or ()
    items = tuple(
        EvalItem(f"production-{i}", {field_name: text}, choices[0], choices) for i, text in enumerate(texts)
    )
    outcome = evaluate(backend, replace(evalset, items=items), fewshot_k=fewshot_k, chunk_size=CHUNK_SIZE)
    lengths = _choice_lengths(evalset)
    normed = evalset.metrics[0] == "acc_norm"
    by_id = {r.item_id: r for r in outcome.results}
    out: list[list[float] | None] = []
    for item in items:
        result = by_id.get(item.id)
        if result is None or result.error:
            out.append(None)
            continue
        if result.loglikelihoods is None:
            raise LabelFreeError(
                "the backend picks choices by generation (no log-likelihoods): "
                "there are no probabilities to calibrate"
            )
        values = [float(v) for v in result.loglikelihoods]
        out.append([v / n for v, n in zip(values, lengths, strict=True)] if normed else values)
    return out


def golden_scores(store: Store, run: RunRecord, evalset: EvalSet) -> tuple[list[list[float]], list[bool]]:
    """The calibration set: each scored item's per-choice scores and whether it was right."""
    assert run.id is not None
    normed = evalset.metrics[0] == "acc_norm"
    lengths = _choice_lengths(evalset)
    scores: list[list[float]] = []
    correct: list[bool] = []
    for result in store.item_results(run.id):
        if result.error or result.loglikelihoods is None or result.correct is None:
            continue
        values = [float(v) for v in result.loglikelihoods]
        if normed and len(values) == len(lengths):
            values = [v / n for v, n in zip(values, lengths, strict=True)]
        scores.append(values)
        correct.append(bool(result.correct))
    return scores, correct


def estimate_production_accuracy(
    store: Store,
    cfg: MonitorConfig,
    model_name: str,
    evalset_name: str,
    *,
    backend: Backend | None = None,
    pool: ModelSource | None = None,
    now: datetime | None = None,
    source: ProductionSource | None = None,
    max_items: int = DEFAULT_MAX_ITEMS,
    method: MethodChoice = "auto",
    level: float = 0.95,
    bootstrap: int = 1000,
) -> ProductionAccuracy:
    """Estimate ``model_name``'s accuracy on ``evalset_name``'s task over its production window.

    Give the model as ``backend``, or a :class:`~monitor.service.runs.ModelPool` as
    ``pool`` (the model is loaded, or reused, from it).  ``source`` replaces the
    configured production source; ``now`` ends the window (default: the current time).

    Raises:
        NotFoundError: an unknown model or eval set, or no golden run to calibrate on.
        ConfigError: the model watches no production source, or the eval set cannot take its inputs.
        LabelFreeError: too few scored items on either side, or no log-likelihoods.
        DriftError: the production source cannot be read.
    """
    if model_name not in cfg.models:
        raise NotFoundError(f"unknown model {model_name!r}")
    if evalset_name not in cfg.evalsets:
        raise NotFoundError(f"unknown eval set {evalset_name!r}")
    model = cfg.models[model_name]
    drift = model.drift
    if drift is None and source is None:
        raise ConfigError(
            "no production inputs: configure drift.source for this model", f"models.{model_name}"
        )
    evalset = load_evalset(cfg.resolve(cfg.evalsets[evalset_name]))
    field_name = input_field(cfg, model_name, evalset)
    fewshot_k = parse_strategy(model.strategy, evalset)
    if backend is None:
        if pool is None:
            raise ValueError("give a backend or a model pool")
        backend, _ = pool.get(model_spec(cfg, model_name))
    run = calibration_run(store, model_name, evalset, fewshot_k, backend)
    assert run.id is not None
    gold, correct = golden_scores(store, run, evalset)

    window_length = drift.window if drift is not None else "7d"
    window = Window.last(window_length, now=now or utcnow())
    if source is None:
        assert drift is not None
        source = build_source(drift.source, cfg.root)
    sample = source.fetch(window)
    seed = drift.seed if drift is not None else 0
    sampled = _sample(sample.texts, max_items, seed)
    counts = Counter(sampled)
    texts = list(counts)

    warnings: list[str] = []
    served = backend.fingerprint().digest
    if run.model_fingerprint and served != run.model_fingerprint:
        warnings.append(
            f"calibrated on run {run.id} of weights {run.model_fingerprint[:12]}, "
            f"but the served weights are {served[:12]}"
        )
    scored = score_texts(backend, evalset, texts, field_name=field_name, fewshot_k=fewshot_k)
    kept = [(s, counts[t]) for s, t in zip(scored, texts, strict=True) if s is not None]
    failed = len(texts) - len(kept)
    if failed:
        warnings.append(f"{failed} of {len(texts)} production texts could not be scored and are left out")
    if sample.truncated:
        warnings.append("the production source held more rows than it may read; the oldest were left out")
    estimate = estimate_accuracy(
        gold,
        correct,
        [s for s, _ in kept],
        production_weights=[n for _, n in kept],
        method=method,
        level=level,
        bootstrap=bootstrap,
        seed=seed,
    )
    kind = drift.source.kind if drift is not None else "custom"
    return ProductionAccuracy(
        model=model_name,
        evalset=evalset.name,
        source=f"{kind}:{window_length}",
        window=window,
        calibration_run_id=run.id,
        window_inputs=len(sample),
        sampled=len(sampled),
        scored_texts=len(kept),
        failed=failed,
        estimate=estimate,
        warnings=tuple(warnings),
    )


def record_production_accuracy(
    store: Store,
    cfg: MonitorConfig,
    model_name: str,
    evalset_name: str,
    *,
    notify: Notify | None = None,
    **options: Any,
) -> DriftRecord:
    """Estimate (see :func:`estimate_production_accuracy`) and store the finding, kind ``estimate``.

    ``score`` is the estimate, ``threshold`` and ``p_value`` stay empty; the interval
    and everything else is in ``details``.  An estimate that cannot be made is stored
    as a finding in state ``error`` with its reason, as input drift does.
    """
    from monitor.errors import MonitorError

    model_id = store.get_model(model_name).id
    assert model_id is not None
    drift = cfg.models[model_name].drift if model_name in cfg.models else None
    series = f"{evalset_name}@{drift.source.kind}:{drift.window}" if drift is not None else evalset_name
    try:
        found = estimate_production_accuracy(store, cfg, model_name, evalset_name, **options)
    except MonitorError as exc:
        record = DriftRecord(
            model_id=model_id,
            kind=FINDING_KIND,
            source=series[:200],
            drifted=False,
            state="error",
            reason=str(exc).replace("\n", "; ")[:2000],
            details={"kind": FINDING_KIND, "evalset": evalset_name},
            created_at=utcnow(),
        )
        return store.add_findings([record])[0]
    details = found.to_dict()
    record = DriftRecord(
        model_id=model_id,
        kind=FINDING_KIND,
        source=found.series[:200],
        run_id=found.calibration_run_id,
        score=found.estimate.estimate,
        drifted=False,
        state="warning" if details["warnings"] else "ok",
        reason=found.summary()[:2000],
        details=details,
        created_at=utcnow(),
    )
    return store.add_findings([record], notify=notify)[0]
