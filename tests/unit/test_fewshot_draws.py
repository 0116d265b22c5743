"""``fewshot.draws``: several seeded draws of the examples, each item's score the mean over them,
the spread of the score reported, tokens per request counted per draw, the bad settings refused."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from monitor.analysis.recommend import ChallengerEvidence, token_profile
from monitor.backends.hf.backend import HFBackend
from monitor.errors import EvalSetError
from monitor.evals.evalset import load_evalset
from monitor.evals.loop import evaluate
from monitor.evals.results import draw_spread, item_details
from tests.conftest import TinyModels

WORDS = ["apple", "river", "stone", "cloud", "green", "sharp", "quiet", "north", "flame", "glass"]


def write_set(root: Path, fewshot: str, task: str = "multiple_choice") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    head = (
        'name: d\ntask: multiple_choice\nprompt: "Word: {input}\\nAnswer:"\nchoices: [" yes", " no"]\n'
        if task == "multiple_choice"
        else 'name: d\ntask: generate\nprompt: "Word: {input}\\nAnswer:"\nmax_new_tokens: 3\n'
    )
    (root / "evalset.yaml").write_text(head + "fewshot:\n" + fewshot, encoding="utf-8")
    data = [
        {"id": f"d{i}", "input": WORDS[i], "target": " yes" if i % 2 else " no"} for i in range(len(WORDS))
    ]
    pool = [
        {"id": f"p{i}", "input": f"{WORDS[-1 - i]}{i}", "target": " no" if i % 3 else " yes"}
        for i in range(9)
    ]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
    (root / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def backend(tiny_models: TinyModels) -> HFBackend:
    loaded = HFBackend.load(str(tiny_models.gpt2), device="cpu")
    yield loaded  # type: ignore[misc]
    loaded.close()


@pytest.mark.parametrize("sampler", ["random", "balanced"])
def test_each_item_scores_the_mean_of_the_single_draws(
    backend: HFBackend, tmp_path: Path, sampler: str
) -> None:
    drawn = load_evalset(
        write_set(
            tmp_path / "draws", f"  k: 2\n  pool: pool.jsonl\n  sampler: {sampler}\n  seed: 7\n  draws: 3\n"
        )
    )
    singles = [
        evaluate(
            backend,
            load_evalset(
                write_set(
                    tmp_path / f"s{seed}",
                    f"  k: 2\n  pool: pool.jsonl\n  sampler: {sampler}\n  seed: {seed}\n",
                )
            ),
            fewshot_k=2,
        ).results
        for seed in (7, 8, 9)
    ]
    outcome = evaluate(backend, drawn, fewshot_k=2, chunk_size=4)
    assert drawn.draw_seeds(2) == (7, 8, 9)
    for n, result in enumerate(outcome.results):
        alone = [run[n] for run in singles]
        assert result.item_id == alone[0].item_id and result.error is None
        assert result.scores is not None
        assert result.scores["acc"] == pytest.approx(sum(r.scores["acc"] for r in alone) / 3)  # type: ignore[index]
        # draw 0 is the single draw of the configured seed: its prompt, prediction and log-likelihoods
        assert (result.prompt, result.prediction) == (alone[0].prompt, alone[0].prediction)
        assert result.loglikelihoods == pytest.approx(alone[0].loglikelihoods, abs=1e-5)
        assert result.correct == (result.scores["acc"] >= 0.5)
        assert result.prompt_tokens == sum(r.prompt_tokens for r in alone)
        assert [d["seed"] for d in result.draws or []] == [7, 8, 9]
        assert [d["scores"] for d in result.draws or []] == [r.scores for r in alone]
        assert [d["prompt_tokens"] for d in result.draws or []] == [r.prompt_tokens for r in alone]
    spread = draw_spread((item_details(r) for r in outcome.results), drawn.metrics, drawn.draw_seeds(2))
    by_draw = [sum(r.scores["acc"] for r in run) / len(run) for run in singles]  # type: ignore[index]
    found = spread["metrics"]["acc"]
    assert found["scores"] == pytest.approx(by_draw)
    assert (found["min"], found["max"]) == (pytest.approx(min(by_draw)), pytest.approx(max(by_draw)))
    mean = sum(by_draw) / 3
    assert found["sd"] == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in by_draw) / 2))
    assert found["n"] == len(WORDS) and spread["seeds"] == [7, 8, 9]


def test_generation_draws_keep_each_draws_prediction(backend: HFBackend, tmp_path: Path) -> None:
    es = load_evalset(
        write_set(
            tmp_path / "g", "  k: 3\n  pool: pool.jsonl\n  sampler: random\n  draws: 2\n", task="generate"
        )
    )
    single = load_evalset(
        write_set(
            tmp_path / "one", "  k: 3\n  pool: pool.jsonl\n  sampler: random\n  seed: 1235\n", task="generate"
        )
    )
    results = evaluate(backend, es, fewshot_k=3).results
    second = evaluate(backend, single, fewshot_k=3).results
    assert [r.draws[1]["prediction"] for r in results] == [r.prediction for r in second]  # type: ignore[index]
    assert all(r.draws and r.draws[0]["prediction"] == r.prediction for r in results)


def test_zero_shot_draws_nothing_and_the_digest_counts_draws(tmp_path: Path) -> None:
    plain = load_evalset(write_set(tmp_path / "a", "  k: 2\n  pool: pool.jsonl\n  sampler: random\n"))
    one = load_evalset(
        write_set(tmp_path / "b", "  k: 2\n  pool: pool.jsonl\n  sampler: random\n  draws: 1\n")
    )
    five = load_evalset(
        write_set(tmp_path / "c", "  k: 2\n  pool: pool.jsonl\n  sampler: random\n  draws: 5\n")
    )
    assert plain.settings_digest(2) == one.settings_digest(2) != five.settings_digest(2)
    assert five.fewshot_draws(0) == 1 and five.draw_seeds(0) == ()
    assert five.fewshot_draws(2) == 5 and five.draw_seeds(2) == (1234, 1235, 1236, 1237, 1238)
    assert five.comparison_settings(2)["fewshot_draws"] == 5
    assert "fewshot_draws" not in one.comparison_settings(2)
    assert five.for_draw(3).spec.fewshot.seed == 1237  # type: ignore[union-attr]
    assert five.for_draw(3) is five.for_draw(3)  # kept: each draw's examples drawn once


@pytest.mark.parametrize(
    ("fewshot", "expected"),
    [
        (
            "  k: 2\n  pool: pool.jsonl\n  draws: 3\n",
            "fewshot.draws: 3 draws need a seeded sampler (random or balanced); first_n",
        ),
        (
            "  k: 2\n  pool: pool.jsonl\n  sampler: similar\n  draws: 2\n",
            "fewshot.draws: 2 draws need a seeded sampler",
        ),
        ("  k: 2\n  pool: pool.jsonl\n  sampler: random\n  draws: 0\n", "fewshot.draws"),
    ],
)
def test_bad_draws_are_one_located_line(tmp_path: Path, fewshot: str, expected: str) -> None:
    root = write_set(tmp_path / "bad", fewshot)
    with pytest.raises(EvalSetError) as info:
        load_evalset(root)
    (problem,) = info.value.problems
    assert problem.location.startswith(str(root / "evalset.yaml"))
    assert expected in str(problem)


def test_the_command_line_refuses_bad_draws_with_exit_2(tiny_models: TinyModels, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from monitor.cli import app

    root = write_set(tmp_path / "bad", "  k: 2\n  pool: pool.jsonl\n  draws: 3\n")
    result = CliRunner().invoke(app, ["eval", "--model", str(tiny_models.gpt2), "--evalset", str(root)])
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert str(root / "evalset.yaml") in line and "fewshot.draws" in line


def test_monitor_eval_prints_the_spread(tiny_models: TinyModels, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from monitor.cli import app

    root = write_set(tmp_path / "ok", "  k: 2\n  pool: pool.jsonl\n  sampler: random\n  draws: 3\n")
    out = tmp_path / "results.jsonl"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--model",
            str(tiny_models.gpt2),
            "--evalset",
            str(root),
            "--device",
            "cpu",
            "--json",
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    spread = summary["fewshot_draws"]
    assert spread["seeds"] == [1234, 1235, 1236] and len(spread["metrics"]["acc"]["scores"]) == 3
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(len(line["draws"]) == 3 for line in lines)
    text = CliRunner().invoke(
        app, ["eval", "--model", str(tiny_models.gpt2), "--evalset", str(root), "--device", "cpu"]
    )
    assert text.exit_code == 0 and "acc over 3 few-shot draws (seeds 1234..1236)" in text.stdout


def test_a_request_costs_one_draws_prompt_and_reasons_carry_the_spread() -> None:
    run = SimpleNamespace(
        id=4, evalset_name="t", items_done=10, items_failed=0, prompt_tokens=3000, completion_tokens=60,
        settings={"fewshot_draws": 3},
    )  # fmt: skip
    profile = token_profile(run, "v2 5-shot")
    assert (profile.prompt_tokens, profile.completion_tokens) == (100.0, 2.0)
    assert "the mean over 3 few-shot draws" in profile.source
    single = token_profile(SimpleNamespace(**{**run.__dict__, "settings": {}}), "v2")
    assert single.prompt_tokens == 300.0
    c = ChallengerEvidence("v2", "5-shot", "t", "acc", 0.7, 0.68, None, None, draw_scores=(0.6, 0.7, 0.8))
    assert c.draws_note() == "; over 3 draws of the few-shot examples it scored 0.600 to 0.800 (sd 0.100)"
    assert ChallengerEvidence("v2", "5-shot", "t", "acc", 0.7, 0.68, None, None).draws_note() == ""


def test_the_exporter_shows_the_draw_spread_and_the_judges_agreement(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from monitor.exporters import StoreCollector
    from monitor.store import Store
    from tests.unit.test_store import start

    with Store.open(f"sqlite:///{tmp_path / 'm.db'}") as store:
        run = start(store, fewshot_k=5)
        store.finish_run(
            run.id,
            status="succeeded",
            metrics={"acc": {"value": 0.7, "stderr": 0.05, "n": 10}, "judge": {"value": 0.6, "stderr": 0.1, "n": 10}},
            backend_info={
                "fewshot_draws": {"seeds": [1, 2, 3], "metrics": {"acc": {"scores": [0.6, 0.7, 0.8], "sd": 0.1, "min": 0.6, "max": 0.8}}},
                "judges": {"judge": {"model": "judge-a", "calibration": {"n": 10, "accuracy": 0.8, "kappa": 0.5833}}},
            },
        )  # fmt: skip
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StoreCollector(store))
        text = generate_latest(registry).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    series = (("evalset", "tickets"), ("metric", "acc"), ("model", "support-bot"), ("strategy", "5-shot"))
    assert samples[("monitor_score_draws_stddev", series)] == pytest.approx(0.1)
    assert samples[("monitor_score_draws_range", series)] == pytest.approx(0.2)
    judged = (
        ("evalset", "tickets"),
        ("judge", "judge-a"),
        ("metric", "judge"),
        ("model", "support-bot"),
        ("strategy", "5-shot"),
    )
    assert samples[("monitor_judge_agreement", judged)] == pytest.approx(0.8)
    assert samples[("monitor_judge_kappa", judged)] == pytest.approx(0.5833)


def test_the_cost_case_states_what_the_judges_cost_each_cycle(tmp_path: Path) -> None:
    from monitor.analysis.recommend import judge_tokens_note
    from monitor.store import Store
    from tests.unit.test_store import start

    with Store.open(f"sqlite:///{tmp_path / 'c.db'}") as store:
        assert judge_tokens_note(store, "support-bot", ["tickets"]) is None
        run = start(store)
        usage = {"judge-a": {"requests": 18, "prompt_tokens": 2400, "completion_tokens": 36}}
        store.finish_run(run.id, status="succeeded", metrics={}, backend_info={"judge_usage": usage})
        note = judge_tokens_note(store, "support-bot", ["tickets"])
    assert note is not None
    assert "judge-a: 18 requests, 2,400 prompt and 36 completion tokens" in note
    assert "the same for every option" in note
