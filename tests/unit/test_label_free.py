"""Production accuracy without labels: the calibration maths, and an estimate on a drifted window end to end."""

from __future__ import annotations

import json
import math
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monitor.analysis.label_free import (
    LabelFreeError,
    _gaps,
    estimate_accuracy,
    expected_calibration_error,
    fit_temperature,
    score_matrix,
    top_confidence,
)

# --------------------------------------------------------------------------- synthetic: known calibration


def draw(rng: np.random.Generator, n: int, scale: float, temperature: float, k: int = 4) -> tuple[Any, Any]:
    """Items whose choice scores are ``N(0, scale)`` and whose gold label is drawn from
    ``softmax(scores / temperature)``: a model miscalibrated by exactly ``temperature``."""
    scores = rng.normal(0.0, scale, (n, k))
    p = np.exp(scores / temperature)
    p /= p.sum(axis=1, keepdims=True)
    gold = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return scores, scores.argmax(axis=1) == gold


def test_a_known_temperature_is_recovered() -> None:
    scores, correct = draw(np.random.default_rng(0), 5000, 2.0, 2.5)
    fitted = fit_temperature(_gaps(score_matrix(scores.tolist())), correct.astype(float))
    assert fitted == pytest.approx(2.5, rel=0.1)
    calibrated = top_confidence(_gaps(scores), fitted)
    assert expected_calibration_error(calibrated, correct.astype(float)) < 0.03
    assert expected_calibration_error(top_confidence(_gaps(scores)), correct.astype(float)) > 0.1


def test_the_interval_covers_the_true_accuracy_at_about_the_stated_rate() -> None:
    # Production is less confident than the golden set (covariate shift, same p(correct | x)):
    # its accuracy is lower, and the estimate follows it.
    seeds, hits, errors = 40, 0, []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        gold, gold_correct = draw(rng, 300, 2.0, 2.5)
        prod, prod_correct = draw(rng, 400, 1.2, 2.5)
        found = estimate_accuracy(
            gold.tolist(), gold_correct, prod.tolist(), method="temperature", bootstrap=200, seed=seed
        )
        truth = float(prod_correct.mean())
        hits += found.low <= truth <= found.high
        errors.append(found.estimate - truth)
        assert found.golden_accuracy - truth > 0.03 or seed > 0  # the window really is worse
    # Nominal 95%: measured 0.925-0.96 over 200 seeds; allow the sampling error of 40.
    assert hits / seeds >= 0.85
    assert abs(float(np.mean(errors))) < 0.02


def test_auto_chooses_isotonic_for_a_model_sure_of_what_it_gets_wrong() -> None:
    # Half the items are confidently right, half confidently at chance: no single temperature fits.
    rng = np.random.default_rng(1)
    n = 600
    scores = np.zeros((n, 4))
    easy = rng.random(n) < 0.5
    top = rng.integers(0, 4, n)
    scores[np.arange(n), top] = 4.0
    correct = np.where(easy, True, rng.random(n) < 0.25)
    found = estimate_accuracy(scores.tolist(), correct, scores[:200].tolist(), bootstrap=50)
    assert found.method == "isotonic"


def test_repeated_production_texts_count_by_their_weight() -> None:
    rng = np.random.default_rng(2)
    gold, gold_correct = draw(rng, 200, 2.0, 2.5)
    prod, _ = draw(rng, 50, 1.5, 2.5)
    counts = rng.integers(1, 5, 50)
    weighted = estimate_accuracy(
        gold.tolist(), gold_correct, prod.tolist(), production_weights=counts.tolist(), bootstrap=50
    )
    repeated = estimate_accuracy(
        gold.tolist(), gold_correct, np.repeat(prod, counts, axis=0).tolist(), bootstrap=50
    )
    assert weighted.estimate == pytest.approx(repeated.estimate)
    assert weighted.n_production == int(counts.sum())


def test_production_outside_the_golden_confidences_is_flagged_as_extrapolation() -> None:
    rng = np.random.default_rng(3)
    gold, gold_correct = draw(rng, 300, 1.0, 1.0)
    same, _ = draw(rng, 300, 1.0, 1.0)
    far, _ = draw(rng, 300, 8.0, 1.0)  # far more confident than anything in the golden set
    assert estimate_accuracy(gold.tolist(), gold_correct, same.tolist(), bootstrap=50).support.warning is None
    found = estimate_accuracy(gold.tolist(), gold_correct, far.tolist(), bootstrap=50)
    assert found.support.outside_share > 0.5
    assert any("extrapolates" in w for w in found.warnings)
    assert json.dumps(found.to_dict())  # stored as JSON: no NaN, no infinities


def test_too_few_items_or_scores_without_probabilities_are_refused() -> None:
    rng = np.random.default_rng(4)
    gold, gold_correct = draw(rng, 100, 1.0, 1.0)
    with pytest.raises(LabelFreeError, match="at least 20"):
        estimate_accuracy(gold.tolist(), gold_correct, gold[:5].tolist())
    picked = [[0.0, -math.inf, -math.inf]] * 30  # choices picked by generation
    with pytest.raises(LabelFreeError, match="generation"):
        estimate_accuracy(gold.tolist(), gold_correct, picked)


# --------------------------------------------------------------------------- end to end on a real tiny model

CATEGORIES = ("billing", "account", "shipping", "technical")
CUES = {
    "billing": ("charged", "invoice", "subscription"),
    "account": ("email", "password", "account"),
    "shipping": ("parcel", "arrived", "late"),
    "technical": ("app", "crashes", "settings"),
}
# A word two categories share: a ticket that has only it is a coin toss between them.
SHARED = {
    ("billing", "account"): "refund",
    ("account", "technical"): "reset",
    ("shipping", "billing"): "never",
    ("technical", "shipping"): "open",
}
NOISE = ("my", "the", "please", "I", "how", "do", "change", "link", "does", "not", "work", "last", "when")
PROMPT = "Ticket: {input}\nCategory:"


def ticket(rng: random.Random, ambiguous_share: float) -> tuple[str, str]:
    """A short ticket and its category; with ``ambiguous_share`` its only cue is a shared word."""
    words = [rng.choice(NOISE) for _ in range(rng.randint(2, 4))]
    if rng.random() < ambiguous_share:
        pair, cue = rng.choice(list(SHARED.items()))
        category = rng.choice(pair)
    else:
        category = rng.choice(CATEGORIES)
        cue = rng.choice(CUES[category])
    words.insert(rng.randrange(len(words) + 1), cue)
    return " ".join(words), category


@pytest.fixture(scope="module")
def router(tiny_models: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny GPT-2 fine-tuned (briefly, seeded, on fresh tickets each step) to route tickets."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_models.gpt2)
    model = AutoModelForCausalLM.from_pretrained(tiny_models.gpt2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    rng = random.Random(0)
    model.train()
    for _ in range(160):
        rows = []
        for text, category in (ticket(rng, 0.3) for _ in range(32)):
            prompt = tokenizer(PROMPT.format(input=text), add_special_tokens=False)["input_ids"]
            answer = tokenizer(" " + category, add_special_tokens=False)["input_ids"]
            rows.append((prompt + answer, [-100] * len(prompt) + answer))
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), tokenizer.eos_token_id)
        labels = torch.full((len(rows), width), -100)
        for i, (ids, labs) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(labs)] = torch.tensor(labs)
        model(input_ids=input_ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    out = tmp_path_factory.mktemp("router")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_estimate_on_a_drifted_window_covers_the_accuracy_the_monitor_never_saw(
    router: Path, tmp_path: Path
) -> None:
    from monitor.config import MonitorConfig
    from monitor.service.label_free import record_production_accuracy
    from monitor.service.plan import plan_runs
    from monitor.service.runs import ModelPool, execute_run
    from monitor.store import Store

    evalset = tmp_path / "routing"
    evalset.mkdir()
    (evalset / "evalset.yaml").write_text(
        f"name: routing\ntask: multiple_choice\nprompt: {json.dumps(PROMPT)}\nchoices: {json.dumps(CATEGORIES)}\n"
    )
    rng = random.Random(1)
    golden = [ticket(rng, 0.3) for _ in range(200)]
    (evalset / "data.jsonl").write_text(
        "".join(
            json.dumps({"id": f"g{i}", "input": t, "target": c}) + "\n" for i, (t, c) in enumerate(golden)
        )
    )
    # The drifted window: most tickets now carry only an ambiguous cue.  Its labels stay here,
    # in the test; the log the monitor reads has timestamps and texts only.
    now = datetime(2026, 3, 1, tzinfo=timezone.utc)
    rng = random.Random(2)
    window = [ticket(rng, 0.9) for _ in range(300)]
    traffic = tmp_path / "traffic"
    traffic.mkdir()
    (traffic / "day.jsonl").write_text(
        "".join(
            json.dumps({"timestamp": (now - timedelta(hours=1 + i / 10)).isoformat(), "input": t}) + "\n"
            for i, (t, _) in enumerate(window)
        )
    )
    cfg = MonitorConfig.model_validate(
        {
            "database": f"sqlite:///{tmp_path / 'monitor.db'}",
            "root": str(tmp_path),
            "models": {
                "router": {
                    "base": str(router),
                    "device": "cpu",
                    "drift": {
                        "source": {"kind": "jsonl", "path": "traffic"},
                        "reference": {"kind": "evalset", "path": "routing"},
                    },
                }
            },
            "evalsets": {"routing": "routing"},
            "jobs": {"nightly": {"models": ["router"], "evalsets": ["routing"]}},
        }
    )
    with Store.open(cfg.database_url()) as store, ModelPool() as pool:
        (plan,) = plan_runs(cfg, ["nightly"], trigger="test")
        golden_run = execute_run(store, pool, plan)
        assert golden_run.status == "succeeded"
        record = record_production_accuracy(
            store, cfg, "router", "routing", pool=pool, now=now, bootstrap=400
        )

    assert record.kind == "estimate" and record.state in ("ok", "warning"), record.reason
    details = record.details
    predictions = _predictions(router, [t for t, _ in window])
    truth = float(np.mean([p == c for p, (_, c) in zip(predictions, window, strict=True)]))
    golden_accuracy = details["golden_accuracy"]
    assert golden_accuracy - truth > 0.15  # the window is much worse than the golden set
    assert details["low"] <= truth <= details["high"], record.reason
    assert details["estimate"] < golden_accuracy - 0.1  # and the estimate saw the drop
    assert details["n_production"] == len(window) and details["calibration_run_id"] == golden_run.id
    assert record.score == details["estimate"] and record.source == "routing@jsonl:7d"


def test_the_estimate_is_made_after_a_job_and_exported(router: Path, tmp_path: Path) -> None:
    import time_machine
    from prometheus_client import CollectorRegistry

    from monitor.config import MonitorConfig
    from monitor.exporters import StoreCollector
    from monitor.service.runs import run_jobs
    from monitor.store import Store

    evalset = tmp_path / "routing"
    evalset.mkdir()
    (evalset / "evalset.yaml").write_text(
        f"name: routing\ntask: multiple_choice\nprompt: {json.dumps(PROMPT)}\nchoices: {json.dumps(CATEGORIES)}\n"
    )
    rng = random.Random(3)
    (evalset / "data.jsonl").write_text(
        "".join(json.dumps({"id": f"g{i}", "input": t, "target": c}) + "\n" for i, (t, c) in enumerate(
            ticket(rng, 0.3) for _ in range(60)
        ))
    )  # fmt: skip
    now = datetime(2026, 3, 1, tzinfo=timezone.utc)
    traffic = tmp_path / "traffic"
    traffic.mkdir()
    (traffic / "day.jsonl").write_text(
        "".join(
            json.dumps(
                {"timestamp": (now - timedelta(hours=1 + i / 10)).isoformat(), "input": ticket(rng, 0.9)[0]}
            )
            + "\n"
            for i in range(60)
        )
    )
    drift = {
        "source": {"kind": "jsonl", "path": "traffic"},
        "reference": {"kind": "evalset", "path": "routing"},
        "min_samples": 20,
        "accuracy_estimate": {"evalsets": ["routing"], "bootstrap": 200},
    }
    cfg = MonitorConfig.model_validate(
        {
            "database": f"sqlite:///{tmp_path / 'monitor.db'}",
            "root": str(tmp_path),
            "models": {"router": {"base": str(router), "device": "cpu", "drift": drift}},
            "evalsets": {"routing": "routing"},
            "jobs": {"nightly": {"models": ["router"], "evalsets": ["routing"]}},
        }
    )
    with Store.open(cfg.database_url()) as store, time_machine.travel(now):
        run_jobs(store, cfg, ["nightly"], trigger="test")
        (estimate,) = [r for r, _ in store.latest_findings() if r.kind == "estimate"]
        assert estimate.state in ("ok", "warning"), estimate.reason
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StoreCollector(store, job_intervals={}))
        labels = {"model": "router", "evalset": "routing", "source": "routing@jsonl:7d"}
        value = registry.get_sample_value("monitor_estimated_accuracy", labels)
        low = registry.get_sample_value("monitor_estimated_accuracy_low", labels)
        high = registry.get_sample_value("monitor_estimated_accuracy_high", labels)
        assert value == estimate.score and low is not None and high is not None and low <= value <= high
        # not mixed into the drift scores
        assert registry.get_sample_value("monitor_drift_score", {**labels, "kind": "estimate"}) is None


def _predictions(model_dir: Path, texts: list[str]) -> list[str]:
    """The model's answer to each text, scored apart from the monitor (what the labels are checked against)."""
    from monitor.backends import ModelSpec, load_backend
    from monitor.backends.base import LoglikelihoodRequest

    backend = load_backend(ModelSpec("hf", str(model_dir), device="cpu"))
    try:
        answers = backend.loglikelihood(
            [LoglikelihoodRequest(PROMPT.format(input=t), tuple(" " + c for c in CATEGORIES)) for t in texts]
        )
    finally:
        backend.close()
    return [CATEGORIES[int(np.argmax(a.loglikelihoods))] for a in answers]


def test_an_estimate_that_cannot_be_made_is_stored_as_an_error_finding(tmp_path: Path) -> None:
    from monitor.config import MonitorConfig
    from monitor.errors import ConfigError
    from monitor.evals.evalset import load_evalset
    from monitor.service.label_free import input_field, record_production_accuracy
    from monitor.store import Store

    evalset = tmp_path / "routing"
    evalset.mkdir()
    (evalset / "evalset.yaml").write_text(
        'name: routing\ntask: multiple_choice\nprompt: "{meta} {input}"\nchoices: [a, b]\n'
    )
    (evalset / "data.jsonl").write_text('{"id": 1, "input": "x", "meta": "m", "target": "a"}\n')
    cfg = MonitorConfig.model_validate(
        {
            "database": f"sqlite:///{tmp_path / 'monitor.db'}",
            "root": str(tmp_path),
            "models": {"router": {"base": "some/model"}},
            "evalsets": {"routing": "routing"},
        }
    )
    with pytest.raises(ConfigError, match=r"also needs meta"):
        input_field(cfg, "router", load_evalset(evalset))
    with Store.open(cfg.database_url()) as store:
        store.upsert_model("router", kind="hf", base="some/model", adapter=None)
        record = record_production_accuracy(store, cfg, "router", "routing")
    assert record.kind == "estimate" and record.state == "error"
    assert "drift.source" in (record.reason or "")
