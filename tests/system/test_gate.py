"""``monitor gate`` on real tiny models: the three outcomes and their exit codes, JSON and JUnit XML."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree

import pytest
import yaml
from typer.testing import CliRunner

from monitor.cli import app
from tests.conftest import TinyModels

CHOICES = ["billing", "technical", "account", "shipping"]
WORDS = ["charged", "crash", "email", "parcel", "refund", "password", "invoice", "screen", "login", "late"]
N = 60


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def project(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A configuration with two tiny models, a golden set the first model answers perfectly
    (its targets are that model's own answers), and the first model's baseline pinned."""
    from monitor.analysis.baselines import pin_baseline
    from monitor.config import load_config
    from monitor.service.plan import plan_runs
    from monitor.service.runs import ModelPool, execute_run
    from monitor.store import Store

    root = tmp_path_factory.mktemp("gate")
    routing = root / "evals" / "routing"
    routing.mkdir(parents=True)
    (routing / "evalset.yaml").write_text(
        'name: routing\ntask: multiple_choice\nprompt: "Ticket: {input}\\nCategory:"\n'
        f"choices: [{', '.join(CHOICES)}]\nmetrics: [acc]\n"
    )
    texts = [f"my {WORDS[i % 10]} {WORDS[(i // 10) % 10]} issue {i}" for i in range(N)]

    def write(targets: list[str]) -> None:
        (routing / "data.jsonl").write_text(
            "".join(
                json.dumps({"id": f"r{i}", "input": t, "target": c}) + "\n"
                for i, (t, c) in enumerate(zip(texts, targets, strict=True))
            )
        )

    write([CHOICES[i % 4] for i in range(N)])
    config = root / "monitor.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "database": "sqlite:///monitor.db",
                "models": {
                    "base": {"base": str(tiny_models.gpt2), "device": "cpu", "dtype": "float32"},
                    "other": {"base": str(tiny_models.gpt2_other), "device": "cpu", "dtype": "float32"},
                },
                "evalsets": {"routing": "evals/routing"},
                "jobs": {"nightly": {"models": ["base"], "evalsets": ["routing"]}},
            }
        )
    )
    code, _out, err = invoke(
        "eval",
        "--model",
        str(tiny_models.gpt2),
        "--evalset",
        str(routing),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--output",
        str(root / "answers.jsonl"),
    )
    assert code == 0, err
    answers = {
        row["id"]: row["prediction"]
        for row in map(json.loads, (root / "answers.jsonl").read_text().splitlines())
    }
    write([answers[f"r{i}"] for i in range(N)])
    cfg = load_config(config)
    with Store.open(cfg.database_url()) as store, ModelPool() as pool:
        (plan,) = plan_runs(cfg, ["nightly"], trigger="test")
        run = execute_run(store, pool, plan)
        assert run.status == "succeeded" and run.metrics["acc"]["value"] == 1.0, run.error
        pin_baseline(store, cfg.baselines_dir(), "base", "routing", run.id)
    return config


def test_the_same_model_passes_when_the_set_can_see_the_tolerance(project: Path, tmp_path: Path) -> None:
    junit = tmp_path / "gate.xml"
    code, out, err = invoke(
        "gate", "base", "-c", str(project), "--tolerance", "0.2", "--json", "--junit", str(junit)
    )
    assert code == 0, out + err
    report = json.loads(out)
    assert report["outcome"] == "passed" and report["exit_code"] == 0 and report["format_version"] == 1
    (check,) = report["checks"]
    assert check["delta"] == 0.0 and check["mode"] == "paired" and check["min_detectable"] < 0.2
    assert "this set can detect a drop of" in check["message"]
    suite = ElementTree.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "1" and suite.get("failures") == "0"


def test_a_worse_model_is_a_regression_with_its_verdict(project: Path, tmp_path: Path) -> None:
    junit = tmp_path / "gate.xml"
    code, out, err = invoke(
        "gate",
        "other",
        "--baseline-of",
        "base",
        "-c",
        str(project),
        "--tolerance",
        "0.05",
        "--junit",
        str(junit),
    )
    assert code == 1, out + err
    assert out.startswith("regressed") and "regression: routing acc: regressed" in out and "Holm p" in out
    assert "gate regressed (exit 1)" in err
    suite = ElementTree.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1"
    failure = suite.find("testcase/failure")
    assert failure is not None and "regressed" in (failure.get("message") or "")
    # the same candidate given as a directory, and against the other model run now rather than a baseline
    models = yaml.safe_load(project.read_text())["models"]
    code, out, _ = invoke(
        "gate",
        "--model",
        models["other"]["base"],
        "--device",
        "cpu",
        "--baseline-of",
        "base",
        "-c",
        str(project),
        "--tolerance",
        "0.05",
        "--json",
    )
    assert code == 1 and json.loads(out)["checks"][0]["outcome"] == "regressed"
    code, out, _ = invoke(
        "gate", "other", "--against", "base", "-c", str(project), "--tolerance", "0.05", "--json"
    )
    report = json.loads(out)
    assert code == 1 and report["reference"] == "base" and report["checks"][0]["baseline_mean"] == 1.0


def test_a_set_too_small_for_the_tolerance_is_inconclusive(project: Path) -> None:
    code, out, err = invoke("gate", "base", "-c", str(project), "--tolerance", "0.02")
    assert code == 6, out + err
    assert "this set cannot detect the configured tolerance of 2 points" in out
    assert "inconclusive" in out.splitlines()[-1] and "gate inconclusive (exit 6)" in err


def test_bad_gate_input_is_one_line_and_exit_2(project: Path) -> None:
    cases: list[tuple[list[str], str]] = [
        (["gate", "nobody", "-c", str(project)], "no model 'nobody'"),
        (["gate", "--model", "x", "-c", str(project)], "--baseline-of MODEL or --against MODEL"),
        (["gate", "other", "-c", str(project)], "no baseline pinned for model 'other'"),
        (["gate", "base", "--evalset", "nope", "-c", str(project)], "unknown eval set(s) nope"),
        (["gate", "base", "--alpha", "1", "-c", str(project)], "--alpha: must be between 0 and 1"),
    ]
    for args, message in cases:
        code, _out, err = invoke(*args)
        assert code == 2 and message in err and err.count("\n") == 1, (args, err)


def test_a_candidate_whose_run_fails_is_an_error_not_a_pass(project: Path, tmp_path: Path) -> None:
    code, out, err = invoke(
        "gate", "--model", str(tmp_path / "missing"), "--baseline-of", "base", "-c", str(project), "--json"
    )
    assert code == 7, out + err
    (check,) = json.loads(out)["checks"]
    assert check["outcome"] == "error" and "model failed to load" in check["message"]
