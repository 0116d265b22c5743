"""The judge through the in-project OpenAI-compatible server: recorded runs, pairing, calibration, the
canary, and the command line's bad input.

The served judges are scripted (tests/fixtures/judge/scripted.py): real Backend implementations
behind the real server, so every request goes over HTTP as it would to vLLM.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monitor.analysis.baselines import pin_baseline
from monitor.analysis.judge import check_judges, judge_source
from monitor.config import load_config
from monitor.events import Event
from monitor.store import Store
from monitor.testing.openai_server import OpenAIServer, ServedModel
from tests.conftest import TinyModels
from tests.fixtures.judge.scripted import ScriptedJudge, ScriptedStudent
from tests.fixtures.judge.sets import GARBAGE, STUDENT, calibration_lines, judge_set
from tests.system.test_cli import invoke


@pytest.fixture()
def served(tiny_models: TinyModels) -> Iterator[tuple[OpenAIServer, dict[str, ServedModel]]]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tiny_models.tokenizer / "tokenizer.json"))
    models = {
        "student": ServedModel("student", ScriptedStudent(STUDENT), tokenizer, {"root": "student"}),  # type: ignore[arg-type]
        "judge-a": ServedModel(
            "judge-a", ScriptedJudge(garbage=[GARBAGE]), tokenizer, {"root": "judge-a-v1"}
        ),  # type: ignore[arg-type]
        "judge-b": ServedModel(
            "judge-b", ScriptedJudge(name="b", garbage=[GARBAGE]), tokenizer, {"root": "judge-b"}
        ),  # type: ignore[arg-type]
    }
    with OpenAIServer(models, tokenize=False) as server:
        yield server, models


def write_config(root: Path, url: str, **set_options: Any) -> Path:
    judge_set(root / "evals", **set_options)
    endpoint = f"{{base_url: '{url}', max_concurrency: 4}}"
    path = root / "monitor.yaml"
    path.write_text(
        f"database: sqlite:///{root / 'monitor.db'}\n"
        "models:\n"
        f"  student: {{backend: openai, base: student, endpoint: {endpoint}}}\n"
        f"  judge-a: {{backend: openai, base: judge-a, endpoint: {endpoint}}}\n"
        f"  judge-b: {{backend: openai, base: judge-b, endpoint: {endpoint}}}\n"
        "evalsets:\n"
        "  tickets: evals/tickets\n"
        "jobs:\n"
        "  j: {models: [student], evalsets: [tickets]}\n"
    )
    return path


def run_job(config: Path) -> Any:
    code, _, stderr = invoke("run", "j", "--config", str(config))
    assert code == 0, stderr
    with Store.open(load_config(config).database_url()) as store:
        (run, _) = store.runs(limit=1)[0]
        return run


def test_a_served_judge_scores_calibrates_and_counts_its_tokens(
    served: tuple[OpenAIServer, dict[str, ServedModel]], tmp_path: Path
) -> None:
    server, _ = served
    config = write_config(tmp_path, server.url)
    before = server.stats["/v1/completions"]
    run = run_job(config)
    judge = run.backend_info["judges"]["judge"]
    cal = judge["calibration"]
    # by hand: 5 both pass, 1 judge pass / people fail, 1 judge fail / people pass, 3 both fail
    # accuracy 8/10; chance agreement 0.6*0.6 + 0.4*0.4 = 0.52; kappa (0.8 - 0.52) / 0.48 = 7/12
    assert (cal["n"], cal["accuracy"]) == (10, 0.8)
    assert cal["kappa"] == pytest.approx(7 / 12)
    assert (
        judge["model"] == "judge-a"
        and run.settings["judges"]["judge"]["judge_fingerprint"] == judge["fingerprint"]
    )
    usage = run.backend_info["judge_usage"]["judge-a"]
    assert usage["requests"] == 8 + 10
    # the student's 8 requests, then the judge's 18, all over HTTP
    assert server.stats["/v1/completions"] - before >= 8 + 18
    # the answer off the judge's scale is an item error on that metric, never a score
    with Store.open(load_config(config).database_url()) as store:
        details = store.item_details(run.id)
    assert "not a verdict" in details["t5"]["metric_errors"]["judge"]
    assert run.metrics["judge"]["n"] == 7 and run.metrics["exact_match"]["n"] == 8


def test_a_changed_served_judge_is_refused_for_pairing(
    served: tuple[OpenAIServer, dict[str, ServedModel]], tmp_path: Path
) -> None:
    server, models = served
    config = write_config(tmp_path, server.url)
    cfg = load_config(config)
    first = run_job(config)
    with Store.open(cfg.database_url()) as store:
        pin_baseline(store, cfg.baselines_dir(), "student", "tickets", first.id)
    same = run_job(config)
    # the server now serves other weights under the judge's name
    models["judge-a"].facts["root"] = "judge-a-v2"
    changed = run_job(config)
    with Store.open(cfg.database_url()) as store:
        verdicts = {(v.run_id, v.metric): v for v in _all_verdicts(store)}
    assert verdicts[(same.id, "judge")].mode == "paired"
    refused = verdicts[(changed.id, "judge")]
    assert refused.mode == "refused" and refused.reason is not None and "judges differ" in refused.reason
    assert same.settings_digest == first.settings_digest != changed.settings_digest


def _all_verdicts(store: Store) -> list[Any]:
    from sqlmodel import select

    from monitor.store.tables import VerdictRecord

    with store.session() as s:
        return list(s.execute(select(VerdictRecord)).scalars())


def test_the_served_judge_drift_canary(
    served: tuple[OpenAIServer, dict[str, ServedModel]], tmp_path: Path
) -> None:
    server, models = served
    config = write_config(
        tmp_path, server.url, calibration=calibration_lines(20, 0, 0, 20), options="min_agreement: 0.3"
    )
    cfg = load_config(config)
    seen: list[Event] = []

    def notify(session: Any, event: Event) -> None:
        seen.append(event)

    # every analysed run checks its judges itself (after the job): the findings are stored by the runs
    runs = [run_job(config), run_job(config)]
    with Store.open(cfg.database_url()) as store:
        assert [check_judges(store, r.id, notify)[0].drifted for r in runs] == [False, False]
    assert seen == []
    models["judge-a"].backend = ScriptedJudge(wrong=[f"answer {i}" for i in range(10)], garbage=[GARBAGE])  # type: ignore[assignment]
    drifted = run_job(config)
    with Store.open(cfg.database_url()) as store:
        stored = store.previous_finding(drifted.model_id, "canary", judge_source("tickets", "judge"))
        assert stored is not None and stored.run_id == drifted.id and stored.drifted
        assert stored.details["judge"] == "judge-a" and stored.score == pytest.approx(0.5)
        # checked again, the judge is still drifted but the streak raised its event already
        (canary,) = check_judges(store, drifted.id, notify)
    assert canary.drifted and (canary.lost, canary.gained) == (10, 0)
    assert canary.kappa == pytest.approx(0.5)
    assert seen == []


def test_monitor_eval_with_a_served_judge_from_the_config(
    served: tuple[OpenAIServer, dict[str, ServedModel]], tiny_models: TinyModels, tmp_path: Path
) -> None:
    server, _ = served
    config = write_config(tmp_path, server.url)
    code, stdout, stderr = invoke(
        "eval", "--model", str(tiny_models.gpt2), "--evalset", str(tmp_path / "evals" / "tickets"),
        "--config", str(config), "--device", "cpu", "--json",
    )  # fmt: skip
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["judges"]["judge"]["calibration"]["kappa"] == pytest.approx(7 / 12)
    assert summary["judge_usage"]["judge-a"]["requests"] == 8 + 10


def test_monitor_eval_with_a_tiny_local_judge(tiny_models: TinyModels, tmp_path: Path) -> None:
    es = judge_set(tmp_path, options="max_new_tokens: 2")
    code, stdout, stderr = invoke(
        "eval", "--model", str(tiny_models.gpt2), "--evalset", str(es),
        "--judge-model", str(tiny_models.gpt2), "--device", "cpu",
    )  # fmt: skip
    assert code == 0, stderr
    assert "metric\tjudge\tkappa\taccuracy\tn" in stdout and "judge judge-a: 18 requests" in stdout


@pytest.mark.parametrize(
    ("args", "options", "expected"),
    [
        ((), {}, "metrics.1.model: judge model 'judge-a' is not configured: give --judge-model"),
        (
            ("--config", "{config}"),
            {"judge": "nobody"},
            "metrics.1.model: judge model 'nobody' is not configured (configured: judge-a",
        ),
        (("--judge-model", "x"), {"rubric": "absent.txt"}, "metrics.1.rubric: file"),
    ],
)
def test_bad_judge_input_is_one_located_line_and_exit_2(
    tmp_path: Path, args: tuple[str, ...], options: dict[str, Any], expected: str
) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/v1")
    es = tmp_path / "evals" / "tickets"
    if "judge" in options:
        judge_set(tmp_path / "evals", judge=options["judge"])
    if "rubric" in options:
        spec = es / "evalset.yaml"
        spec.write_text(spec.read_text().replace("rubric: rubric.txt", f"rubric: {options['rubric']}"))
    filled = [a.replace("{config}", str(config)) for a in args]
    code, stdout, stderr = invoke(
        "eval", "--model", str(tmp_path / "no-model"), "--evalset", str(es), *filled
    )
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1, stderr
    assert "evalset.yaml" in lines[0] and expected in lines[0]
    assert "Traceback" not in stderr + stdout
