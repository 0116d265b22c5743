"""The command line, end to end on real tiny models, real eval sets and a real SQLite file."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from monitor.cli import app
from tests.conftest import TinyModels

ROUTING_SPEC = """\
name: routing
task: multiple_choice
prompt: "Ticket: {input}\\nCategory:"
choices: [billing, technical, account, shipping]
fewshot: {k: 2, pool: fewshot.jsonl}
metrics: [acc, acc_norm]
"""
TRIAGE_SPEC = """\
name: triage
task: generate
prompt: "Ticket: {input}\\nJSON:"
metrics: [json_valid, json_fields, exact_match]
max_new_tokens: 8
stop: ["\\n"]
"""
TICKETS = [
    ("I was charged twice", "billing"),
    ("the app crashes on start", "technical"),
    ("change my email address", "account"),
    ("my parcel never arrived", "shipping"),
    ("refund my last invoice", "billing"),
    ("password reset fails", "account"),
]


def make_evalsets(root: Path) -> tuple[Path, Path]:
    routing = root / "routing"
    routing.mkdir(parents=True)
    (routing / "evalset.yaml").write_text(ROUTING_SPEC)
    (routing / "data.jsonl").write_text(
        "".join(
            json.dumps({"id": f"r{i}", "input": t, "target": c}) + "\n" for i, (t, c) in enumerate(TICKETS)
        )
    )
    (routing / "fewshot.jsonl").write_text(
        json.dumps({"id": "p1", "input": "double charge", "target": "billing"})
        + "\n"
        + json.dumps({"id": "p2", "input": "screen frozen", "target": "technical"})
        + "\n"
    )
    triage = root / "triage"
    triage.mkdir()
    (triage / "evalset.yaml").write_text(TRIAGE_SPEC)
    (triage / "data.jsonl").write_text(
        "".join(
            json.dumps({"id": f"t{i}", "input": t, "target": {"category": c}}) + "\n"
            for i, (t, c) in enumerate(TICKETS[:3])
        )
    )
    return routing, triage


@pytest.fixture()
def evalsets(tmp_path: Path) -> tuple[Path, Path]:
    return make_evalsets(tmp_path / "evals")


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_eval_json_summary_and_results_file(
    tiny_models: TinyModels, evalsets: tuple[Path, Path], tmp_path: Path
) -> None:
    routing, _ = evalsets
    out = tmp_path / "results.jsonl"
    code, stdout, _ = invoke(
        "eval",
        "--model",
        str(tiny_models.gpt2),
        "--adapter",
        str(tiny_models.lora),
        "--evalset",
        str(routing),
        "--fewshot",
        "2",
        "--output",
        str(out),
        "--json",
    )
    assert code == 0
    summary = json.loads(stdout)
    assert summary["format_version"] == 1
    assert summary["strategy"] == "2-shot" and summary["fewshot_k"] == 2
    assert summary["evalset"]["items"] == 6 and len(summary["evalset"]["version"]) == 64
    assert set(summary["metrics"]) == {"acc", "acc_norm"}
    acc = summary["metrics"]["acc"]
    assert acc["n"] == 6 and 0.0 <= acc["value"] <= 1.0
    assert summary["model"]["fingerprint"] and summary["model"]["adapter"] == str(tiny_models.lora)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["id"] for line in lines] == [f"r{i}" for i in range(6)]
    for line in lines:
        assert len(line["loglikelihoods"]) == 4
        best = max(range(4), key=lambda i: (line["loglikelihoods"][i], -i))
        assert line["prediction"] == ["billing", "technical", "account", "shipping"][best]
        assert line["correct"] == (line["prediction"] == line["target"])
    assert acc["value"] == pytest.approx(sum(line["correct"] for line in lines) / 6)


def test_eval_generate_task(tiny_models: TinyModels, evalsets: tuple[Path, Path], tmp_path: Path) -> None:
    _, triage = evalsets
    out = tmp_path / "gen.jsonl"
    code, stdout, _ = invoke(
        "eval", "--model", str(tiny_models.llama), "--evalset", str(triage), "--output", str(out), "--json"
    )
    assert code == 0
    summary = json.loads(stdout)
    assert set(summary["metrics"]) == {"json_valid", "json_fields", "exact_match"}
    assert summary["tokens"]["completion"] > 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert all("\n" not in line["prediction"] for line in lines)
    assert all(set(line["scores"]) == {"json_valid", "json_fields", "exact_match"} for line in lines)


def test_eval_bad_evalset_exits_2_with_one_line_per_problem(tiny_models: TinyModels, tmp_path: Path) -> None:
    routing, _ = make_evalsets(tmp_path)
    with (routing / "data.jsonl").open("a") as fh:
        fh.write(
            '{"id": "r0", "input": "dup", "target": "billing"}\n{"id": "x", "input": "y", "target": "other"}\n'
        )
    code, stdout, stderr = invoke("eval", "--model", str(tiny_models.gpt2), "--evalset", str(routing))
    assert code == 2 and stdout == ""
    lines = stderr.strip().splitlines()
    assert lines == [
        f"error: {routing / 'data.jsonl'}:7: duplicate id 'r0' (first on line 1)",
        f"error: {routing / 'data.jsonl'}:8: target 'other' is not among the choices ['billing', 'technical', 'account', 'shipping']",
    ]


def test_eval_missing_model_exits_3(evalsets: tuple[Path, Path], tmp_path: Path) -> None:
    routing, _ = evalsets
    code, _, stderr = invoke("eval", "--model", str(tmp_path / "no-model"), "--evalset", str(routing))
    assert code == 3
    assert str(tmp_path / "no-model") in stderr and "Traceback" not in stderr


def write_config(
    tmp_path: Path, tiny: TinyModels, routing: Path, triage: Path, *, adapter: Path | None = None
) -> Path:
    config = tmp_path / "monitor.yaml"
    config.write_text(
        f"""\
database: sqlite:///state/monitor.db
models:
  router:
    base: {tiny.gpt2}
    adapter: {adapter or tiny.lora}
  base-llama:
    base: {tiny.llama}
evalsets:
  routing: {routing}
  triage: {triage}
jobs:
  nightly:
    models: [router, base-llama]
    evalsets: [routing]
    strategies: [zero-shot, 2-shot]
  triage:
    models: [base-llama]
    evalsets: [triage]
"""
    )
    return config


def test_run_status_history_roundtrip(
    tiny_models: TinyModels, evalsets: tuple[Path, Path], tmp_path: Path
) -> None:
    config = write_config(tmp_path, tiny_models, *evalsets)
    assert invoke("check-config", "--config", str(config))[0] == 0
    code, stdout, _ = invoke("run", "--config", str(config), "--json")
    assert code == 0, stdout
    runs = json.loads(stdout)
    assert len(runs) == 2 * 2 + 1
    assert {r["status"] for r in runs} == {"succeeded"}
    assert {(r["model"], r["evalset"], r["strategy"]) for r in runs} >= {
        ("router", "routing", "2-shot"),
        ("base-llama", "triage", "zero-shot"),
    }
    # second run of one job: status shows the change from the previous run
    assert invoke("run", "nightly", "--config", str(config), "--json")[0] == 0
    code, stdout, _ = invoke("status", "--config", str(config), "--json")
    status = json.loads(stdout)
    assert len(status) == 5
    router = next(s for s in status if s["model"] == "router" and s["strategy"] == "2-shot")
    assert router["previous_run"] is not None and router["change"] == pytest.approx(0.0)
    triage = next(s for s in status if s["evalset"] == "triage")
    assert triage["previous_run"] is None and triage["change"] is None
    code, stdout, _ = invoke("history", "router", "routing", "--config", str(config), "--json")
    history = json.loads(stdout)
    assert len(history) == 4 and history[0]["id"] > history[-1]["id"]
    fingerprint = history[0]["model_fingerprint"]
    assert fingerprint and len(fingerprint) > 20
    code, stdout, _ = invoke("history", "router", "routing", "--config", str(config))
    assert code == 0 and fingerprint not in stdout
    code, stdout, _ = invoke("history", "router", "routing", "--config", str(config), "--wide")
    assert code == 0 and fingerprint in stdout
    # everything is in a real SQLite file with one row per item and run
    db = sqlite3.connect(tmp_path / "state" / "monitor.db")
    assert db.execute("select count(*) from runs").fetchone()[0] == 9
    assert db.execute("select count(*) from item_results").fetchone()[0] == 8 * 6 + 3
    assert db.execute("pragma journal_mode").fetchone()[0] == "wal"


def test_failed_model_load_is_recorded(
    tiny_models: TinyModels, evalsets: tuple[Path, Path], tmp_path: Path
) -> None:
    config = write_config(tmp_path, tiny_models, *evalsets, adapter=tmp_path / "gone-adapter")
    code, stdout, stderr = invoke("run", "nightly", "--config", str(config), "--json")
    assert code == 1
    assert (
        stderr.startswith("error: 2 of 4 runs did not succeed: run ") and "model failed to load" in stderr
    ), stderr
    runs = json.loads(stdout)
    router = [r for r in runs if r["model"] == "router"]
    assert router and all(r["status"] == "failed" and "model failed to load" in r["error"] for r in router)
    assert all(r["status"] == "succeeded" for r in runs if r["model"] == "base-llama")
    code, stdout, _ = invoke("history", "router", "routing", "--config", str(config), "--json")
    assert [r["status"] for r in json.loads(stdout)] == ["failed", "failed"]


def test_check_config_reports_every_problem(tiny_models: TinyModels, tmp_path: Path) -> None:
    routing, triage = make_evalsets(tmp_path / "evals")
    (routing / "data.jsonl").write_text('{"id": "a", "input": "x", "target": "nope"}\n')
    config = write_config(tmp_path, tiny_models, routing, triage, adapter=tmp_path / "missing")
    code, _, stderr = invoke("check-config", "--config", str(config))
    assert code == 2
    lines = stderr.strip().splitlines()
    assert (
        f"error: {routing / 'data.jsonl'}:1: target 'nope' is not among the choices ['billing', 'technical', 'account', 'shipping']"
        in lines
    )
    # path problems carry their line in the configuration
    assert f"error: {config}:5: models.router.adapter: {tmp_path / 'missing'} does not exist" in lines


def test_check_config_validates_adapters(tiny_models: TinyModels, tmp_path: Path) -> None:
    routing, triage = make_evalsets(tmp_path / "evals")
    empty = tmp_path / "empty-adapter"
    empty.mkdir()
    for adapter, message in (
        (empty, f"{empty} is not a LoRA adapter folder: it has no adapter_config.json"),
        (tiny_models.gpt2, f"{tiny_models.gpt2} is a model folder, not a LoRA adapter"),
    ):
        config = write_config(tmp_path, tiny_models, routing, triage, adapter=adapter)
        code, _, stderr = invoke("check-config", "--config", str(config))
        assert code == 2 and f"error: {config}:5: models.router.adapter: {message}" in stderr, stderr
    # an adapter trained on another base: its LoRA input widths are not the base's
    config = tmp_path / "monitor.yaml"
    config.write_text(
        f"models:\n  odd:\n    base: {tiny_models.llama}\n    adapter: {tiny_models.lora}\n"
        f"evalsets:\n  routing: {routing}\n"
    )
    code, _, stderr = invoke("check-config", "--config", str(config))
    assert (
        code == 2 and "does not fit the base" in stderr and "the base has no module 0.attn.c_attn" in stderr
    )
    good = write_config(tmp_path, tiny_models, routing, triage)
    assert invoke("check-config", "--config", str(good))[0] == 0


def test_read_only_commands_create_nothing(
    tiny_models: TinyModels, evalsets: tuple[Path, Path], tmp_path: Path
) -> None:
    missing = tmp_path / "nonexistent" / "dir" / "x.db"
    for command in (["status"], ["history", "router", "routing"], ["regressions"], ["diff", "1", "2"]):
        code, stdout, stderr = invoke(*command, "--db", f"sqlite:///{missing}")
        assert code != 0 and str(missing) in stderr and "Traceback" not in stderr + stdout, (command, stderr)
    assert not (tmp_path / "nonexistent").exists()
    config = write_config(tmp_path, tiny_models, *evalsets)
    for command in (["status"], ["report", "router"]):
        code, _, stderr = invoke(*command, "--config", str(config))
        assert code != 0 and "monitor.db" in stderr, (command, stderr)
    assert not (tmp_path / "state").exists()


def test_unknown_job_and_empty_status(
    tiny_models: TinyModels, evalsets: tuple[Path, Path], tmp_path: Path
) -> None:
    config = write_config(tmp_path, tiny_models, *evalsets)
    code, _, stderr = invoke("run", "weekly", "--config", str(config))
    assert code == 2 and "unknown job(s) weekly; configured: nightly, triage" in stderr
    code, stdout, _ = invoke("status", "--config", str(config))
    assert code == 0 and "no runs recorded yet" in stdout
    code, _, stderr = invoke("history", "router", "routing", "--config", str(config))
    assert code == 2 and "no runs of model 'router'" in stderr


def test_console_script_runs_as_a_process(evalsets: tuple[Path, Path], tmp_path: Path) -> None:
    """`python -m monitor` in a real subprocess: exit codes and no traceback for input errors."""
    config = tmp_path / "bad.yaml"
    config.write_text("database: sqlite:///x.db\nmodels:\n  m: {base: ./m, colour: red}\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "monitor", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {config}:3: models.m.colour: unknown key"
    version = subprocess.run(
        [sys.executable, "-m", "monitor", "--version"], capture_output=True, text=True, timeout=60
    )
    assert version.returncode == 0 and version.stdout.startswith("monitor ")


def test_an_unknown_top_level_key_gets_a_did_you_mean(tmp_path: Path) -> None:
    config = tmp_path / "monitor.yaml"
    config.write_text("models: {}\nevalsets: {}\ndatabse: sqlite:///x.db\nzzz: 1\n")
    code, _, stderr = invoke("check-config", "--config", str(config))
    lines = stderr.strip().splitlines()
    assert code == 2 and f"error: {config}:3: databse: unknown key; did you mean 'database'?" in lines, lines
    assert any(line.startswith(f"error: {config}:4: zzz: unknown key; known keys: ") for line in lines), lines
    assert not (tmp_path / "x.db").exists()


def test_eval_with_an_empty_adapter_folder_says_lora_adapter(tiny_models: TinyModels, tmp_path: Path) -> None:
    routing, _ = make_evalsets(tmp_path / "evals")
    empty = tmp_path / "empty-adapter"
    empty.mkdir()
    code, _, stderr = invoke(
        "eval",
        "--model",
        str(tiny_models.gpt2),
        "--adapter",
        str(empty),
        "--evalset",
        str(routing),
        "--device",
        "cpu",
    )
    assert code != 0 and f"{empty} is not a LoRA adapter folder: it has no adapter_config.json" in stderr, (
        stderr
    )
    assert "a adapter" not in stderr
