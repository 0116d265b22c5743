"""Per-model production settings: ``models.NAME.chat_template`` (a template file used instead of the
tokenizer's, as vLLM's ``--chat-template``) and ``models.NAME.generation`` (how production decodes,
over each generation eval set's own ``generation:``); both enter what decides pairing."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from monitor.cli import app
from monitor.config import load_config
from monitor.service.plan import plan_runs
from monitor.service.pool import ModelPool
from monitor.service.runs import execute_run
from monitor.store import Store
from tests.conftest import ChatModels
from tests.helpers.chat import CHATML
from tests.unit.test_chat_evals import DATA, chat_set, expected_conversation, tokenizer_render


def write(tmp_path: Path, chat_models: ChatModels, models: str) -> Path:
    chat_set(tmp_path / "chat", task="generate", extra="metrics: [exact_match]\nmax_new_tokens: 4\n")
    chat_set(tmp_path / "mc")
    (tmp_path / "chatml.jinja").write_text(CHATML)
    config = tmp_path / "monitor.yaml"
    config.write_text(
        "database: sqlite:///monitor.db\n"
        f"models:\n{models}"
        f"evalsets:\n  chat: {tmp_path / 'chat'}\n  mc: {tmp_path / 'mc'}\n"
        "jobs:\n  nightly:\n    models: [templated, plain]\n    evalsets: [chat, mc]\n"
    )
    return config


def models_block(chat_models: ChatModels, extra: str = "") -> str:
    return (
        f"  templated:\n    base: {chat_models.plain}\n    chat_template: chatml.jinja\n{extra}"
        f"  plain:\n    base: {chat_models.chatml}\n"
    )


def test_a_configured_template_renders_exactly_as_the_tokenizer_with_that_template(
    chat_models: ChatModels, tmp_path: Path
) -> None:
    """The template-less tiny GPT-2 given CHATML by the config renders and answers exactly as the copy
    whose tokenizer carries CHATML; its stack records the configured template's hash."""
    cfg = load_config(write(tmp_path, chat_models, models_block(chat_models)))
    plans = {(p.model_name, p.evalset.path.name): p for p in plan_runs(cfg, ["nightly"], trigger="test")}
    with Store.open(cfg.database_url()) as store, ModelPool(max_models=2) as pool:
        runs = {key: execute_run(store, pool, plan) for key, plan in plans.items()}
        assert all(r.status == "succeeded" for r in runs.values()), [r.error for r in runs.values()]
        templated = store.item_details(runs["templated", "chat"].id)  # type: ignore[arg-type]
        plain = store.item_details(runs["plain", "chat"].id)  # type: ignore[arg-type]
        es = plans["templated", "chat"].evalset
        for index, item in enumerate(DATA):
            expected = tokenizer_render(chat_models.chatml, expected_conversation(es, index, 0, True, False))
            assert templated[item["id"]]["prompt"] == plain[item["id"]]["prompt"] == expected
        stacks = {key: (r.backend_info or {})["stack"] for key, r in runs.items()}
    assert stacks["templated", "chat"]["chat_template/configured"].startswith("sha256:")
    assert "chat_template/configured" not in stacks["plain", "chat"]
    assert (
        stacks["templated", "chat"]["chat_template/rendered"]
        == stacks["plain", "chat"]["chat_template/rendered"]
    )


def test_model_decoding_wins_over_the_eval_sets_and_changes_the_settings_digest(
    chat_models: ChatModels, tmp_path: Path
) -> None:
    extra = "    generation: {temperature: 0.8, top_p: 0.9, seed: 11, repeats: 3, reduce: {exact_match: pass_at_k}}\n"
    cfg = load_config(write(tmp_path, chat_models, models_block(chat_models, extra)))
    plans = {(p.model_name, p.evalset.path.name): p for p in plan_runs(cfg, ["nightly"], trigger="test")}
    sampled = plans["templated", "chat"].evalset
    decoding = sampled.spec.decoding
    assert (decoding.temperature, decoding.top_p, decoding.seed, decoding.repeats) == (0.8, 0.9, 11, 3)
    assert decoding.max_new_tokens == 4  # the eval set's own keys stay
    greedy = plans["plain", "chat"].evalset
    assert greedy.spec.decoding.greedy
    assert sampled.settings_digest(0) != greedy.settings_digest(0)
    # multiple choice is scored by log-likelihood: the model's decoding does not apply there
    assert plans["templated", "mc"].evalset.settings_digest(0) == plans[
        "plain", "mc"
    ].evalset.settings_digest(0)
    with Store.open(cfg.database_url()) as store, ModelPool() as pool:
        run = execute_run(store, pool, plans["templated", "chat"])
        assert run.status == "succeeded", run.error
        details = store.item_details(run.id)  # type: ignore[arg-type]
    assert all(len(d["samples"]) == 3 for d in details.values())


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "    generation: {repeats: 3}\n",
            "models.templated.generation (on chat-routing): repeats: 3 repeats of greedy decoding give the same answer",
        ),
        (
            "    generation: {temprature: 0.5}\n",
            "models.templated.generation (on chat-routing): temprature: Extra inputs",
        ),
    ],
)
def test_bad_model_generation_is_one_line_naming_the_model_key(
    chat_models: ChatModels, tmp_path: Path, extra: str, expected: str
) -> None:
    config = write(tmp_path, chat_models, models_block(chat_models, extra))
    result = CliRunner().invoke(app, ["check-config", "--config", str(config)])
    assert result.exit_code == 2
    (line,) = [entry for entry in result.stderr.splitlines() if "generation" in entry]
    assert line.startswith(f"error: {config}:6: {expected}"), line


def test_a_missing_or_broken_template_file_is_one_located_line(
    chat_models: ChatModels, tmp_path: Path
) -> None:
    config = write(tmp_path, chat_models, models_block(chat_models))
    (tmp_path / "chatml.jinja").write_text("{% for m in messages %}{{ m['content'] }")
    result = CliRunner().invoke(app, ["check-config", "--config", str(config)])
    assert result.exit_code == 2
    assert (
        f"error: {config}:5: models.templated.chat_template: {tmp_path / 'chatml.jinja'} line 1: not a Jinja template"
        in result.stderr
    )
    (tmp_path / "chatml.jinja").unlink()
    result = CliRunner().invoke(app, ["check-config", "--config", str(config)])
    assert (
        f"error: {config}:5: models.templated.chat_template: {tmp_path / 'chatml.jinja'} does not exist"
        in result.stderr
    )


def test_a_template_for_a_served_model_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "monitor.yaml"
    config.write_text(
        "models:\n  served:\n    backend: openai\n    base: router\n    chat_template: chatml.jinja\n"
        "    endpoint: {base_url: 'http://127.0.0.1:8000/v1'}\n"
    )
    result = CliRunner().invoke(app, ["check-config", "--config", str(config)])
    assert result.exit_code == 2 and "chat_template: not for openai models" in result.stderr, result.stderr


def test_check_config_names_a_judge_model_that_is_not_configured(
    chat_models: ChatModels, tmp_path: Path
) -> None:
    from tests.fixtures.judge.sets import judge_set

    judged = judge_set(tmp_path / "evals", judge="grader")
    config = tmp_path / "monitor.yaml"
    config.write_text(f"models:\n  m:\n    base: {chat_models.plain}\nevalsets:\n  tickets: {judged}\n")
    result = CliRunner().invoke(app, ["check-config", "--config", str(config)])
    assert result.exit_code == 2
    assert (
        f"error: {judged / 'evalset.yaml'}: metrics.1.model: judge model 'grader' is not configured; "
        "configured models: m"
    ) in result.stderr, result.stderr
    config.write_text(
        config.read_text().replace("models:\n", f"models:\n  grader:\n    base: {chat_models.plain}\n")
    )
    assert CliRunner().invoke(app, ["check-config", "--config", str(config)]).exit_code == 0


def test_an_endpoint_tokenizer_is_resolved_and_a_missing_folder_is_one_located_line(
    chat_models: ChatModels, tmp_path: Path
) -> None:
    from monitor.config import load_config
    from monitor.service.plan import model_spec

    (tmp_path / "tok").symlink_to(chat_models.chatml)
    config = tmp_path / "monitor.yaml"
    config.write_text(
        "database: sqlite:///monitor.db\n"
        "models:\n  served:\n    backend: openai\n    base: router\n"
        "    endpoint:\n      base_url: 'http://127.0.0.1:8000/v1'\n      tokenizer: tok\n"
        "  hub:\n    backend: openai\n    base: router\n"
        "    endpoint: {base_url: 'http://127.0.0.1:8000/v1', tokenizer: org/served-model}\n"
    )
    cfg = load_config(config)
    assert model_spec(cfg, "served").endpoint.tokenizer == str(tmp_path / "tok")  # type: ignore[union-attr]
    assert model_spec(cfg, "hub").endpoint.tokenizer == "org/served-model"  # type: ignore[union-attr]
    assert CliRunner().invoke(app, ["check-config", "--config", str(config)]).exit_code == 0
    config.write_text(config.read_text().replace("tokenizer: tok", "tokenizer: ./missing"))
    result = CliRunner().invoke(app, ["check-config", "--config", str(config)])
    assert result.exit_code == 2
    assert (
        f"error: {config}:8: models.served.endpoint.tokenizer: {tmp_path / 'missing'} is not a tokenizer folder"
        in result.stderr
    ), result.stderr
