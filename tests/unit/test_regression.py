"""Regression verdicts, behaviour drift and canaries, end to end: runs, a pinned baseline, stored verdicts."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from monitor.analysis.baselines import pin_baseline
from monitor.analysis.regression import RegressionPolicy, latest_verdicts
from monitor.backends.base import LoglikelihoodRequest, LoglikelihoodResult, ModelFingerprint
from monitor.cli import app
from monitor.config import MonitorConfig
from monitor.service.after_job import AnalysisPolicy, analyze_run, latest_findings
from monitor.service.plan import plan_runs
from monitor.service.runs import ModelPool, execute_run
from monitor.store import Store, utcnow
from tests.unit.test_daemon import CHOICES, ScriptedBackend, make_config

N = 200


class RuleBackend(ScriptedBackend):
    """Answers item k right when ``rule(k)``; otherwise picks the next choice (or ``wrong(k)``)."""

    def __init__(
        self,
        rule: Callable[[int], bool],
        wrong: Callable[[int], int] | None = None,
        digest: str = "f",
        stack: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.rule, self.wrong, self.digest = rule, wrong or (lambda k: (k + 1) % 4), digest
        self.stack = stack or {}

    def loglikelihood(
        self, requests: Sequence[LoglikelihoodRequest], *, progress: Any = None
    ) -> list[LoglikelihoodResult]:
        out = []
        for r in requests:
            k = int(r.context.rsplit("#i", 1)[-1].split("\n")[0])
            pick = k % 4 if self.rule(k) else self.wrong(k) % 4
            lls = tuple(-0.5 if i == pick else -3.0 - i * 0.1 for i in range(len(r.continuations)))
            out.append(LoglikelihoodResult(lls, (False,) * 4, len(r.context.split()), (1,) * 4))
        return out

    def fingerprint(self) -> ModelFingerprint:
        return ModelFingerprint(digest=self.digest * 64, base="rule", stack=dict(self.stack))


class Harness:
    def __init__(self, tmp_path: Path, policy: RegressionPolicy | None = None) -> None:
        self.cfg: MonitorConfig = make_config(
            tmp_path, {"j": {"models": ["router"], "evalsets": ["routing"]}}, items=N, chunk=50
        )
        self.store = Store.open(self.cfg.database_url())
        self.root = tmp_path / "baselines"
        self.policy = AnalysisPolicy(
            regression=policy or RegressionPolicy(tolerance=0.02, alpha=0.05, confirmations=2)
        )

    def run(self, backend: ScriptedBackend, cfg: MonitorConfig | None = None) -> int:
        (plan,) = plan_runs(cfg or self.cfg, ["j"], trigger="test")
        run = execute_run(self.store, ModelPool(loader=lambda spec: backend), plan)  # type: ignore[arg-type,return-value]
        assert run.id is not None and run.status == "succeeded", run.error
        return run.id

    def analyze(self, run_id: int) -> Any:
        return analyze_run(self.store, run_id, self.root, self.policy)


@pytest.fixture()
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_no_baseline_no_verdict(h: Harness) -> None:
    analysis = h.analyze(h.run(RuleBackend(lambda k: k % 10 != 0)))
    assert analysis.verdicts == () and analysis.note == "no baseline"


def test_same_model_is_ok_and_a_real_drop_is_suspect_then_regressed(h: Harness) -> None:
    good = RuleBackend(lambda k: k % 10 != 0)  # 90 %
    base_run = h.run(good)
    pin_baseline(h.store, h.root, "router", "routing", base_run)
    (same,) = h.analyze(h.run(good)).verdicts
    assert same.state == "ok" and same.mode == "paired" and same.delta == 0.0 and same.p_value == 1.0
    assert same.method and "mcnemar" in same.method.lower()
    worse = RuleBackend(lambda k: k % 10 not in (0, 1, 2, 3))  # 60 %: 60 items newly wrong
    (first,) = h.analyze(h.run(worse)).verdicts
    assert first.state == "suspect" and first.significant_drop and first.consecutive == 1
    assert first.delta == pytest.approx(-0.30) and first.ci_high < 0 and first.p_value < 1e-10
    assert first.details["pass_to_fail"] == 60 and first.details["fail_to_pass"] == 0
    assert first.min_detectable is not None and 0 < first.min_detectable < 0.2
    (second,) = h.analyze(h.run(worse)).verdicts
    assert second.state == "regressed" and second.consecutive == 2
    (recovered,) = h.analyze(h.run(good)).verdicts
    assert recovered.state == "ok" and recovered.consecutive == 0


def test_a_drop_inside_the_tolerance_is_not_a_regression(h: Harness) -> None:
    pin_baseline(h.store, h.root, "router", "routing", h.run(RuleBackend(lambda k: k % 10 != 0)))
    # two items newly wrong out of 200: 1 point, below the 2-point tolerance and not significant
    (verdict,) = h.analyze(h.run(RuleBackend(lambda k: k % 10 != 0 and k not in (1, 2)))).verdicts
    assert verdict.state == "ok" and not verdict.significant_drop and verdict.delta == pytest.approx(-0.01)


def test_changed_eval_set_is_compared_unpaired_and_says_so(h: Harness, tmp_path: Path) -> None:
    pin_baseline(h.store, h.root, "router", "routing", h.run(RuleBackend(lambda k: k % 10 != 0)))
    data = tmp_path / "evals" / "routing" / "data.jsonl"
    with data.open("a") as fh:
        fh.write(json.dumps({"id": f"i{N}", "target": CHOICES[N % 4]}) + "\n")
    (verdict,) = h.analyze(h.run(RuleBackend(lambda k: k % 10 not in (0, 1, 2, 3)))).verdicts
    assert verdict.mode == "unpaired" and "compared unpaired" in (verdict.reason or "")
    assert verdict.state == "suspect"
    assert "unpaired" in (verdict.method or "").lower() or "proportion" in (verdict.method or "").lower()


def test_changed_prompt_is_refused_with_the_reason(h: Harness, tmp_path: Path) -> None:
    pin_baseline(h.store, h.root, "router", "routing", h.run(RuleBackend(lambda k: k % 10 != 0)))
    spec = tmp_path / "evals" / "routing" / "evalset.yaml"
    spec.write_text(spec.read_text().replace("Category:", "Department:"))
    (verdict,) = h.analyze(h.run(RuleBackend(lambda k: False))).verdicts
    assert verdict.state == "refused" and verdict.p_value is None
    assert "prompt differ" in (verdict.reason or "")


def test_behaviour_drift_when_accuracy_holds(h: Harness) -> None:
    pin_baseline(h.store, h.root, "router", "routing", h.run(RuleBackend(lambda k: k % 10 != 0)))
    # same items right, but every wrong answer is now a different wrong label
    moved = RuleBackend(lambda k: k % 10 != 0, wrong=lambda k: k + 2)
    analysis = h.analyze(h.run(moved))
    (verdict,) = analysis.verdicts
    assert verdict.state == "ok" and verdict.delta == 0.0
    behaviour = next(f for f in analysis.findings if f.kind == "behaviour")
    assert behaviour.score == pytest.approx(0.9) and behaviour.state == "ok"  # 90 % agree: at the threshold
    strict = Harness.__new__(Harness)
    strict.__dict__.update(h.__dict__)
    strict.policy = AnalysisPolicy(min_agreement=0.95)
    behaviour = next(f for f in strict.analyze(h.run(moved)).findings if f.kind == "behaviour")
    assert behaviour.drifted and "agree with the baseline" in (behaviour.reason or "")
    # a model that answers one label for everything: the label distribution test fires
    flat = RuleBackend(lambda k: k % 4 == 0, wrong=lambda k: 0)
    behaviour = next(f for f in h.analyze(h.run(flat)).findings if f.kind == "behaviour")
    assert behaviour.drifted and behaviour.p_value is not None and behaviour.p_value < 1e-6


def test_fingerprint_canary(h: Harness, tmp_path: Path) -> None:
    pin_baseline(h.store, h.root, "router", "routing", h.run(RuleBackend(lambda k: k % 10 != 0)))
    analysis = h.analyze(h.run(RuleBackend(lambda k: k % 10 != 0, digest="e")))
    canary = next(f for f in analysis.findings if f.source == "fingerprint")
    assert canary.drifted and "without a new model version" in (canary.reason or "")
    versioned = MonitorConfig.model_validate(
        {**h.cfg.model_dump(), "models": {"router": {**h.cfg.models["router"].model_dump(), "version": "2"}}}
    )
    analysis = h.analyze(h.run(RuleBackend(lambda k: k % 10 != 0, digest="e"), versioned))
    assert next(f for f in analysis.findings if f.source == "fingerprint").drifted  # baseline had no version
    findings = latest_findings(h.store)
    assert {(r.kind, r.source) for r, _ in findings} >= {("canary", "fingerprint"), ("behaviour", "routing")}


def test_adapter_not_applied_canary(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, {"j": {"models": ["router"], "evalsets": ["routing"]}}, items=20)
    cfg = MonitorConfig.model_validate(
        {
            **cfg.model_dump(),
            "jobs": {"j": {"models": ["router", "base"], "evalsets": ["routing"]}},
            "models": {
                "router": {"base": str(tmp_path / "model"), "adapter": str(tmp_path / "model")},
                "base": {"base": str(tmp_path / "model")},
            },
        }
    )
    store = Store.open(cfg.database_url())
    same = RuleBackend(lambda k: k % 3 == 0)
    runs = [
        execute_run(store, ModelPool(loader=lambda s: same), p) for p in plan_runs(cfg, ["j"], trigger="t")
    ]  # type: ignore[arg-type,return-value]
    router_run = next(r for r in runs if store.model_name(r.model_id) == "router")
    analysis = analyze_run(store, router_run.id, tmp_path / "baselines")  # type: ignore[arg-type]
    canary = next(f for f in analysis.findings if f.source == "adapter")
    assert canary.drifted and "the adapter is not applied" in (canary.reason or "")
    different = RuleBackend(lambda k: k % 2 == 0)
    (plan,) = [p for p in plan_runs(cfg, ["j"], trigger="t") if p.model_name == "router"]
    rerun = execute_run(store, ModelPool(loader=lambda s: different), plan)  # type: ignore[arg-type,return-value]
    canary = next(
        f for f in analyze_run(store, rerun.id, tmp_path / "baselines").findings if f.source == "adapter"
    )  # type: ignore[arg-type]
    assert not canary.drifted and canary.state == "ok"


def test_holm_correction_spans_the_models_series(h: Harness) -> None:
    # a borderline drop on one metric gets a larger adjusted p-value when the model has other series
    pin_baseline(h.store, h.root, "router", "routing", h.run(RuleBackend(lambda k: k % 10 != 0)))
    (verdict,) = h.analyze(h.run(RuleBackend(lambda k: k % 10 != 0 and k % 25 != 1))).verdicts
    assert verdict.adjusted_p == pytest.approx(verdict.p_value)  # a family of one
    assert latest_verdicts(h.store)[0].id == verdict.id


def test_cli_regressions_and_diff(h: Harness, tmp_path: Path) -> None:
    good = h.run(RuleBackend(lambda k: k % 10 != 0))
    pin_baseline(h.store, h.root, "router", "routing", good)
    bad = h.run(RuleBackend(lambda k: k % 10 not in (0, 1, 2, 3)))
    h.analyze(bad)
    db = h.cfg.database_url()
    result = CliRunner().invoke(app, ["diff", str(good), str(bad), "--db", db, "--json"])
    assert result.exit_code == 0, result.stderr
    diff = json.loads(result.stdout)
    assert (
        len(diff["newly_broken"]) == 60
        and diff["newly_fixed"] == []
        and diff["agreement"] == pytest.approx(0.7)
    )
    result = CliRunner().invoke(app, ["regressions", "--db", db, "--json"])
    (row,) = json.loads(result.stdout)
    assert row["state"] == "suspect" and row["model"] == "router" and row["delta"] == pytest.approx(-0.3)
    result = CliRunner().invoke(app, ["diff", str(good), "999", "--db", db])
    assert result.exit_code == 2 and "no run with id 999" in result.stderr


def test_verdicts_and_findings_reach_the_metrics(h: Harness) -> None:
    import shutil
    import subprocess

    from prometheus_client import CollectorRegistry, generate_latest

    from monitor.exporters import StoreCollector

    pin_baseline(h.store, h.root, "router", "routing", h.run(RuleBackend(lambda k: k % 10 != 0)))
    h.analyze(h.run(RuleBackend(lambda k: k % 10 not in (0, 1, 2, 3))))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(h.store))
    series = {"model": "router", "evalset": "routing", "strategy": "zero-shot", "metric": "acc"}
    value = registry.get_sample_value
    assert value("monitor_regression_delta", series) == pytest.approx(-0.3)
    assert value("monitor_regression_ci_high", series) < 0
    assert value("monitor_regression_p_value", series) < 1e-10
    assert value("monitor_regression_state", {**series, "state": "suspect"}) == 1
    assert value("monitor_regression_state", {**series, "state": "regressed"}) == 0
    behaviour = {"model": "router", "kind": "behaviour", "source": "routing"}
    assert value("monitor_drift_score", behaviour) == pytest.approx(0.7)
    assert value("monitor_drift_detected", behaviour) == 1
    assert (
        value("monitor_drift_detected", {"model": "router", "kind": "canary", "source": "fingerprint"}) == 0
    )
    if shutil.which("promtool"):
        proc = subprocess.run(
            ["promtool", "check", "metrics"], input=generate_latest(registry), capture_output=True
        )
        assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout


def test_status_shows_the_verdict_newly_broken_and_flaky_items(h: Harness) -> None:
    pin_baseline(h.store, h.root, "router", "routing", h.run(RuleBackend(lambda k: k % 10 != 0)))
    # items 5 and 15 flip back and forth between runs; items 1..3 (mod 10) break for good in the last run
    for flip in (True, False, True):
        h.analyze(h.run(RuleBackend(lambda k, f=flip: k % 10 != 0 and (k not in (5, 15) or f))))
    h.analyze(h.run(RuleBackend(lambda k: k % 10 not in (0, 1, 2, 3))))
    result = CliRunner().invoke(app, ["status", "--db", h.cfg.database_url(), "--json"])
    (entry,) = json.loads(result.stdout)
    assert entry["verdict"] == "suspect" and entry["vs_baseline"] == pytest.approx(-0.3)
    assert entry["newly_broken"] == 60
    assert entry["flaky"] == 2


def test_confirmed_regression_and_behaviour_drift_reach_a_webhook_receiver(
    h: Harness, monkeypatch: Any
) -> None:
    from monitor.exporters.webhooks import WebhookSender, verify
    from monitor.service.after_job import analyze_safely, make_notifier
    from tests.helpers.receiver import Receiver

    secret = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQ="
    monkeypatch.setenv("HOOK_SECRET", secret)
    with Receiver() as receiver:
        cfg = MonitorConfig.model_validate(
            {
                **h.cfg.model_dump(),
                "baselines": str(h.root),
                "regression": {"confirmations": 2, "min_agreement": 0.95},
                "webhooks": {"endpoints": {"ops": {"url": receiver.url, "secret_env": "HOOK_SECRET"}}},
            }
        )
        notify = make_notifier(cfg)
        pin_baseline(h.store, h.root, "router", "routing", h.run(RuleBackend(lambda k: k % 10 != 0)))
        worse = RuleBackend(lambda k: k % 10 not in (0, 1, 2, 3))
        for _ in range(3):  # suspect, regressed (an event), still regressed (no second event)
            analyze_safely(h.store, h.run(worse), cfg, notify)
        counts = WebhookSender(h.store, cfg.webhooks).deliver_due()
        assert counts.delivered == 2, counts
        received = receiver.requests
        types = sorted(r.json()["type"] for r in received)
        assert types == ["drift.detected", "regression.confirmed"]
        for r in received:
            verify(secret, r.headers, r.body)
        confirmed = next(r.json() for r in received if r.json()["type"] == "regression.confirmed")
        assert confirmed["version"] == 1
        assert confirmed["data"]["model"] == "router" and confirmed["data"]["delta"] == pytest.approx(-0.3)


# --- flaky items, the design's minimum detectable difference, repeated looks -------------------------


def test_flaky_items_are_flips_between_runs_of_the_same_model() -> None:
    from monitor.analysis.behaviour import flaky_items, run_identity

    good, bad = run_identity("f" * 64, "s1"), run_identity("e" * 64, "s1")
    ok = {f"i{k}": k % 10 != 0 for k in range(100)}
    broken = {f"i{k}": k % 10 not in (0, 1, 2, 3) for k in range(100)}  # 30 items change with the bad deploy
    noisy = {**ok, "i5": False}
    history = [ok, broken, ok, broken, ok, noisy, ok, noisy]  # deploy, rollback, deploy, rollback, then noise
    keys = [good, bad, good, bad, good, good, good, good]
    # without the model's identity the deploys and rollbacks read as flaky items (the reported bug)
    assert len(flaky_items(history)) == 31  # the 30 items the deploys changed, and i5
    assert flaky_items(history, keys=keys) == {"i5": 3}
    with pytest.raises(ValueError, match="one key per run"):
        flaky_items(history, keys=keys[:2])


def _mdd(verdict: Any) -> tuple[float, str]:
    return verdict.min_detectable, verdict.details["design"]["source"]


def test_min_detectable_is_a_property_of_the_design_not_of_the_run(h: Harness) -> None:
    good = RuleBackend(lambda k: k % 10 != 0)
    pin_baseline(h.store, h.root, "router", "routing", h.run(good))
    h.analyze(h.run(good))  # a re-run of the baseline's model: the design's run-to-run noise (none here)
    (same,) = h.analyze(h.run(good)).verdicts
    (dropped,) = h.analyze(h.run(RuleBackend(lambda k: k % 10 not in (0, 1, 2, 3), digest="e"))).verdicts
    (dropped_same_weights,) = h.analyze(h.run(RuleBackend(lambda k: k % 10 not in (0, 1, 2, 3)))).verdicts
    assert dropped.state == "suspect" and same.state == "ok"
    assert _mdd(same) == _mdd(dropped) == _mdd(dropped_same_weights)
    mdd, source = _mdd(same)
    assert source == "baseline-era runs" and same.details["design"]["discordance"] == 0.0
    # with no run-to-run disagreement, 200 items at 90% see about 4 points
    assert 0.02 < mdd < 0.06
    assert same.details["detectable"] == f"this set can detect a drop of {100 * mdd:.1f} points (80% power)"


def test_min_detectable_with_the_baseline_run_alone(tmp_path: Path) -> None:
    """Only the baseline run of its model exists: the prior decides, and the judged run does not."""
    found = {}
    for prior, source in ((None, "assumed: independent runs"), (0.05, "configured prior")):
        for name, rule in (
            ("same", lambda k: k % 10 != 0),
            ("dropped", lambda k: k % 10 not in (0, 1, 2, 3)),
        ):
            h = Harness(tmp_path / f"{prior}-{name}", RegressionPolicy(prior_discordance=prior))
            pin_baseline(h.store, h.root, "router", "routing", h.run(RuleBackend(lambda k: k % 10 != 0)))
            (verdict,) = h.analyze(h.run(RuleBackend(rule, digest="e"))).verdicts
            found[prior, name] = _mdd(verdict)
        assert found[prior, "same"] == found[prior, "dropped"] and found[prior, "same"][1] == source
    # independent runs are the conservative reading: a larger drop is needed than with a 5% prior
    assert found[None, "same"][0] > found[0.05, "same"][0]


def test_each_look_at_a_baseline_spends_its_share_of_alpha(h: Harness) -> None:
    from monitor.analysis.stats import look_alpha

    good = RuleBackend(lambda k: k % 10 != 0)
    first_baseline = h.run(good)
    pin_baseline(h.store, h.root, "router", "routing", first_baseline)
    looks = [h.analyze(h.run(good)).verdicts[0] for _ in range(3)]
    assert [v.details["look"] for v in looks] == [1, 2, 3]
    assert [v.details["look_alpha"] for v in looks] == [pytest.approx(look_alpha(0.05, k)) for k in (1, 2, 3)]
    pin_baseline(h.store, h.root, "router", "routing", h.run(good))  # a new baseline: its own looks
    (again,) = h.analyze(h.run(good)).verdicts
    assert again.details["look"] == 1


def _years(**kwargs: Any) -> Any:
    from benchmarks.bench_calibration import simulate_years

    return simulate_years(**kwargs)


def test_a_year_of_nightly_looks_raises_a_false_alarm_at_most_at_alpha() -> None:
    """An unchanged model with sampled decoding (14% of items disagree between two runs), compared
    with one baseline every night for a year: the chance of any false alarm in the year."""
    import numpy as np

    years = 400
    spent = _years(years=years, items=200, days=365, refresh_days=1000, seed=3)
    se = np.sqrt(0.05 * 0.95 / years)
    assert np.mean(spent > 0) <= 0.05 + 2 * se
    # the rule before (every look at alpha, two confirmations) alarms in far more than 5% of years
    before = _years(
        years=years, items=200, days=365, refresh_days=1000, seed=3, policy=RegressionPolicy(sequential=False)
    )
    assert np.mean(before > 0) > 0.08
    # a golden set refreshed twice a year (new items, a new baseline) stays within alpha too
    refreshed = _years(years=years, items=200, days=365, refresh_days=182, seed=4)
    assert np.mean(refreshed > 0) <= 0.05 + 2 * se


def test_a_real_drop_is_still_confirmed_within_days() -> None:
    import numpy as np

    early = _years(years=100, items=500, days=20, refresh_days=1000, drop_points=10, onset=1, seed=5)
    assert np.mean((early > 0) & (early <= 5)) >= 0.95
    # late in a baseline's life a look needs more evidence, and still gets it for 10 points
    late = _years(years=100, items=500, days=130, refresh_days=1000, drop_points=10, onset=100, seed=6)
    caught = late[late >= 100] - 100 + 1
    assert caught.size >= 85 and np.median(caught) <= 7


def test_slices_have_their_own_verdicts_with_holm_across_them(tmp_path: Path) -> None:
    """Items tagged ``billing`` (50 of 200) lose 15 answers: 30 points in the slice, 7.5 overall."""
    h = Harness(tmp_path, RegressionPolicy(slice_by="lang", min_slice_items=20))
    data = tmp_path / "evals" / "routing" / "data.jsonl"
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    for k, row in enumerate(rows):
        row["tags"] = ["billing"] if k < 50 else ["other"]
        row["lang"] = "de" if k % 2 else "en"
        if k == 7:
            row["tags"] = "vip"  # a slice of one item: too small to judge
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    pin_baseline(h.store, h.root, "router", "routing", h.run(RuleBackend(lambda k: k % 10 != 0)))
    broken_billing = RuleBackend(lambda k: k % 10 != 0 and not (k < 50 and k % 10 in (1, 2, 3)))
    (first,) = h.analyze(h.run(broken_billing)).verdicts
    slices = {v["slice"]: v for v in first.details["slices"]}
    assert set(slices) == {"billing", "other", "lang=de", "lang=en"}  # "vip" has 1 item
    billing = slices["billing"]
    assert (
        billing["n"] == 49 and billing["delta"] == pytest.approx(-15 / 49) and billing["state"] == "suspect"
    )
    assert billing["adjusted_p"] == pytest.approx(
        min(1.0, 4 * billing["p_value"]), rel=1e-6
    )  # Holm, 4 slices
    assert slices["other"]["state"] == "ok" and slices["other"]["delta"] == 0.0
    assert billing["min_detectable"] > slices["other"]["min_detectable"]  # fewer items, a larger drop needed
    (second,) = h.analyze(h.run(broken_billing)).verdicts
    again = {v["slice"]: v for v in second.details["slices"]}
    assert again["billing"]["state"] == "regressed" and again["billing"]["consecutive"] == 2


def test_a_regressed_slice_is_in_the_event_the_metrics_and_the_status(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    from monitor.api.views import status_entries
    from monitor.events import Event
    from monitor.exporters import StoreCollector

    h = Harness(tmp_path, RegressionPolicy(tolerance=0.1, min_slice_items=20))
    data = tmp_path / "evals" / "routing" / "data.jsonl"
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    for k, row in enumerate(rows):
        row["tags"] = ["billing"] if k < 50 else ["other"]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    pin_baseline(h.store, h.root, "router", "routing", h.run(RuleBackend(lambda k: k % 10 != 0)))
    broken_billing = RuleBackend(lambda k: k % 10 != 0 and not (k < 50 and k % 10 in (1, 2, 3)))
    sent: list[Event] = []
    for _ in range(2):
        analyze_run(h.store, h.run(broken_billing), h.root, h.policy, lambda _s, e: sent.append(e))
    # 7.5 points overall is within the 10-point tolerance; the billing slice lost 30: its own event
    (event,) = sent
    assert event.data["slice"] == "billing" and event.data["delta"] == pytest.approx(-0.3)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(h.store, job_intervals={}))
    labels = {"model": "router", "evalset": "routing", "strategy": "zero-shot", "metric": "acc"}
    assert registry.get_sample_value("monitor_regression_state", {**labels, "state": "ok"}) == 1
    assert (
        registry.get_sample_value(
            "monitor_regression_slice_state", {**labels, "slice": "billing", "state": "regressed"}
        )
        == 1
    )
    assert (
        registry.get_sample_value(
            "monitor_regression_slice_state", {**labels, "slice": "other", "state": "ok"}
        )
        == 1
    )
    (entry,) = status_entries(h.store)
    assert entry["slices"] == {"billing": "regressed"} and "80% power" in entry["detectable"]


def test_no_slices_without_tags_or_slice_by(h: Harness) -> None:
    pin_baseline(h.store, h.root, "router", "routing", h.run(RuleBackend(lambda k: k % 10 != 0)))
    (verdict,) = h.analyze(h.run(RuleBackend(lambda k: k % 10 != 0))).verdicts
    assert "slices" not in verdict.details


def _slice_trial(rng: Any, drop_in_first: float) -> list[Any]:
    """One baseline and one current run of 200 items in 5 slices of 40, sampled decoding."""
    from types import SimpleNamespace

    from monitor.analysis.baselines import Baseline, BaselineItem
    from monitor.analysis.regression import compare_slices
    from monitor.store import RunRecord

    p = rng.beta(0.35, 0.15, size=200)
    q = p.copy()
    q[:40] *= 1 - drop_in_first
    base, cur = rng.random(200) < p, rng.random(200) < q
    settings = {"prompt": "x"}
    baseline = Baseline(
        model="m",
        evalset="e",
        evalset_version="v",
        strategy="zero-shot",
        fewshot_k=0,
        settings_digest="d",
        settings=settings,
        model_fingerprint="f",
        run_id=1,
        run_finished_at=None,
        pinned_at="",
        metrics={"acc": {}},
        items=tuple(
            BaselineItem(f"i{k}", None, bool(b), float(b), {"acc": float(b)}) for k, b in enumerate(base)
        ),
    )
    run = RunRecord(
        id=2,
        model_id=1,
        evalset_version_id=1,
        evalset_name="e",
        status="succeeded",
        trigger="t",
        strategy="zero-shot",
        settings_digest="d",
        settings=settings,
        evalset_version="v",
        metrics={"acc": {}},
        started_at=utcnow(),
    )
    items = [
        SimpleNamespace(item_id=f"i{k}", scores={"acc": float(c)}, error=None) for k, c in enumerate(cur)
    ]
    slices = {f"i{k}": (f"s{k // 40}",) for k in range(200)}
    return compare_slices(run, items, baseline, RegressionPolicy(min_slice_items=20), slices)


def test_slice_verdicts_are_calibrated_across_slices_and_see_a_slice_drop() -> None:
    import numpy as np

    rng = np.random.default_rng(7)
    trials = 300
    alarms = sum(any(v.significant for v in _slice_trial(rng, 0.0)) for _ in range(trials))
    assert alarms / trials <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / trials)
    caught = sum(next(v for v in _slice_trial(rng, 0.6) if v.slice == "s0").significant for _ in range(100))
    assert caught >= 80


def test_status_counts_no_flaky_items_after_a_deploy_and_a_rollback(h: Harness) -> None:
    good = RuleBackend(lambda k: k % 10 != 0)
    bad = RuleBackend(lambda k: k % 10 not in (0, 1, 2, 3), digest="e")  # another adapter, same name
    pin_baseline(h.store, h.root, "router", "routing", h.run(good))
    for backend in (bad, good, bad, good):  # deploy, rollback, deploy, rollback
        h.analyze(h.run(backend))
    result = CliRunner().invoke(app, ["status", "--db", h.cfg.database_url(), "--json"])
    (entry,) = json.loads(result.stdout)
    assert entry["flaky"] == 0  # today: 60, every item the bad adapter changed


# --- duplicated prompts count once ------------------------------------------------------------------


def _duplicated_harness(tmp_path: Path, copies: int) -> Harness:
    """200 items asking 200 / copies distinct prompts (``Ticket #i<k>``), each ``copies`` times."""
    h = Harness(tmp_path)
    folder = tmp_path / "evals" / "routing"
    spec = folder / "evalset.yaml"
    spec.write_text(spec.read_text().replace("Ticket #{id}", "Ticket #{input}"))
    unique = N // copies
    (folder / "data.jsonl").write_text(
        "".join(
            json.dumps({"id": f"i{k}", "input": f"i{k % unique}", "target": CHOICES[(k % unique) % 4]}) + "\n"
            for k in range(N)
        )
    )
    return h


def test_duplicated_prompts_count_once_in_a_verdict(tmp_path: Path) -> None:
    from monitor.analysis.regression import collapse_duplicates, duplicate_groups
    from monitor.evals.evalset import load_evalset

    once = _duplicated_harness(tmp_path / "once", 1)  # 200 distinct prompts: the reference
    four = _duplicated_harness(tmp_path / "four", 4)  # 50 distinct prompts, each 4 times
    groups = duplicate_groups(load_evalset(tmp_path / "four" / "evals" / "routing"))
    assert len(groups) == N and len(set(groups.values())) == N // 4
    assert duplicate_groups(load_evalset(tmp_path / "once" / "evals" / "routing")) == {}
    ids, (b, c) = collapse_duplicates(
        ["a", "b", "c"], [[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]], {"a": "x", "b": "x"}
    )
    assert ids == ["x", "c"] and b == [0.5, 1.0] and c == [1.0, 0.0]
    verdicts = {}
    for name, h, rule in (
        ("once", once, lambda k: k % 10 != 0 and k % 50 not in (1, 2, 3, 4)),
        ("four", four, lambda k: k % 10 != 0 and k % 50 not in (1, 2, 3, 4)),
    ):
        pin_baseline(h.store, h.root, "router", "routing", h.run(RuleBackend(lambda k: k % 10 != 0)))
        (verdicts[name],) = h.analyze(h.run(RuleBackend(rule))).verdicts
    # 16 of 200 items newly wrong; in the duplicated set those are 4 prompts, each 4 times
    assert verdicts["four"].details["units"] == N // 4
    assert verdicts["four"].delta == pytest.approx(-4 / 50) and verdicts["once"].delta == pytest.approx(
        -16 / 200
    )
    assert verdicts["four"].p_value > 10 * verdicts["once"].p_value  # 4 observations, not 16
    assert verdicts["four"].min_detectable > verdicts["once"].min_detectable  # 50 units see less than 200


def test_a_duplicated_golden_set_stays_calibrated_over_a_year() -> None:
    import numpy as np

    years = 400
    kwargs: dict[str, Any] = {
        "years": years,
        "items": 50,
        "days": 365,
        "refresh_days": 1000,
        "copies": 4,
        "seed": 8,
    }
    once = _years(**kwargs)
    assert np.mean(once > 0) <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / years)
    as_items = _years(**kwargs, count_copies_once=False)  # copies counted as items: overconfident
    assert np.mean(as_items > 0) > 0.08
