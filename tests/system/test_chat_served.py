"""A chat eval set in process and through serve-openai: the same prompts, scores and predictions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.backends import EndpointSpec, ModelSpec, load_backend
from monitor.backends.hf.backend import HFBackend
from monitor.backends.openai import UNEXPOSED_TEMPLATE, OpenAIBackend
from monitor.evals.evalset import load_evalset
from monitor.evals.loop import chat_settings, evaluate
from monitor.testing.openai_server import OpenAIServer, ServedModel, load_served_model
from tests.conftest import ChatModels
from tests.unit.test_chat_evals import DATA, chat_set

MODELS = ("chatml", "no_system")


@pytest.fixture(scope="module")
def served(chat_models: ChatModels) -> dict[str, ServedModel]:
    return {name: load_served_model(name, getattr(chat_models, name)) for name in MODELS}


@pytest.fixture(scope="module")
def in_process(chat_models: ChatModels) -> Iterator[dict[str, HFBackend]]:
    loaded = {
        name: load_backend(ModelSpec("hf", str(getattr(chat_models, name)), device="cpu", dtype="float32"))
        for name in MODELS
    }
    yield loaded  # type: ignore[misc]
    for backend in loaded.values():
        backend.close()


@pytest.fixture(scope="module")
def server(served: dict[str, ServedModel]) -> Iterator[OpenAIServer]:
    with OpenAIServer(served) as running:
        yield running


def connect(server: OpenAIServer, model: str, mc_method: str = "auto") -> OpenAIBackend:
    return OpenAIBackend.load(model, EndpointSpec(server.url, mc_method=mc_method))


@pytest.mark.parametrize("model", MODELS)
def test_multiple_choice_in_process_and_served_agree(
    server: OpenAIServer, in_process: dict[str, HFBackend], tmp_path: Path, model: str
) -> None:
    es = load_evalset(chat_set(tmp_path / "set"))
    backend = connect(server, model)
    try:
        remote = evaluate(backend, es, fewshot_k=2)
        local = evaluate(in_process[model], es, fewshot_k=2)
        # The served template is the same template: same hash, same folding, so the same settings digest.
        assert chat_settings(backend, es) == {
            **chat_settings(in_process[model], es),
            "chat_template_source": "server",
        }
        assert (
            backend.fingerprint().stack["chat_template/rendered"]
            == chat_settings(backend, es)["chat_template_sha256"]
        )
    finally:
        backend.close()
    for mine, theirs in zip(remote.results, local.results, strict=True):
        assert mine.error is None and mine.prompt == theirs.prompt
        assert mine.prediction == theirs.prediction
        assert mine.loglikelihoods == pytest.approx(theirs.loglikelihoods, abs=1e-4)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("sampled", [False, True])
def test_generation_in_process_and_served_agree(
    server: OpenAIServer, in_process: dict[str, HFBackend], tmp_path: Path, model: str, sampled: bool
) -> None:
    generation = "generation: {temperature: 1.0, top_k: 40, seed: 3, repeats: 2}\n" if sampled else ""
    es = load_evalset(
        chat_set(tmp_path / "set", f"max_new_tokens: 6\n{generation}", data=DATA, task="generate")
    )
    backend = connect(server, model)
    try:
        remote = evaluate(backend, es, fewshot_k=2)
    finally:
        backend.close()
    local = evaluate(in_process[model], es, fewshot_k=2)
    for mine, theirs in zip(remote.results, local.results, strict=True):
        assert mine.error is None
        assert (mine.prediction, mine.samples) == (theirs.prediction, theirs.samples)
        assert mine.messages == theirs.messages  # what was sent; the server rendered it
        assert mine.prompt is None and theirs.prompt is not None
        assert mine.prompt_tokens == theirs.prompt_tokens


def test_a_server_that_does_not_show_its_template_still_generates_and_fails_choices_with_the_reason(
    served: dict[str, ServedModel], in_process: dict[str, HFBackend], tmp_path: Path
) -> None:
    mc = load_evalset(chat_set(tmp_path / "mc"))
    gen = load_evalset(chat_set(tmp_path / "gen", "max_new_tokens: 6\n", data=DATA, task="generate"))
    with OpenAIServer(served, tokenize=False) as hidden:
        backend = connect(hidden, "chatml")
        try:
            assert backend.chat_template() is not None
            assert chat_settings(backend, gen)["chat_template_sha256"] == UNEXPOSED_TEMPLATE
            remote = evaluate(backend, gen)
            failed = evaluate(backend, mc)
        finally:
            backend.close()
    local = evaluate(in_process["chatml"], gen)
    assert [r.prediction for r in remote.results] == [r.prediction for r in local.results]
    assert all(r.error and "does not expose its chat template" in r.error for r in failed.results)


def test_choices_picked_by_generation_go_as_a_conversation(server: OpenAIServer, tmp_path: Path) -> None:
    es = load_evalset(chat_set(tmp_path / "set"))
    backend = connect(server, "chatml", mc_method="generate")
    before = server.stats["/v1/chat/completions"]
    try:
        outcome = evaluate(backend, es, fewshot_k=2)
    finally:
        backend.close()
    assert server.stats["/v1/chat/completions"] - before == len(es.items)
    for result in outcome.results:
        assert result.error is None and result.completion_tokens > 0
        assert result.messages is not None and result.messages[0]["role"] == "system"


@pytest.mark.parametrize("model", MODELS)
def test_a_named_tokenizer_renders_for_a_server_that_hides_its_template(
    served: dict[str, ServedModel],
    in_process: dict[str, HFBackend],
    chat_models: ChatModels,
    tmp_path: Path,
    model: str,
) -> None:
    mc = load_evalset(chat_set(tmp_path / "mc"))
    gen = load_evalset(chat_set(tmp_path / "gen", "max_new_tokens: 6\n", data=DATA, task="generate"))
    tokenizer = str(getattr(chat_models, model))
    with OpenAIServer(served, tokenize=False) as hidden:
        backend = OpenAIBackend.load(model, EndpointSpec(hidden.url, tokenizer=tokenizer))
        try:
            settings = chat_settings(backend, mc)
            remote = evaluate(backend, mc, fewshot_k=2)
            before = (hidden.stats["/v1/completions"], hidden.stats["/v1/chat/completions"])
            generated = evaluate(backend, gen, fewshot_k=2)
            after = (hidden.stats["/v1/completions"], hidden.stats["/v1/chat/completions"])
            described = backend.describe()["chat_template"]
        finally:
            backend.close()
    # the tokenizer's template is the served one: the same hash and folding as in process
    assert settings == {**chat_settings(in_process[model], mc), "chat_template_source": "tokenizer"}
    assert described["source"] == "tokenizer" and described["tokenizer"] == tokenizer
    local = evaluate(in_process[model], mc, fewshot_k=2)
    for mine, theirs in zip(remote.results, local.results, strict=True):
        assert mine.error is None and mine.prompt == theirs.prompt
        assert mine.prediction == theirs.prediction
        assert mine.loglikelihoods == pytest.approx(theirs.loglikelihoods, abs=1e-4)
    # generation: rendered here, the text sent to /v1/completions
    assert after[0] - before[0] == len(gen.items) and after[1] == before[1]
    expected = evaluate(in_process[model], gen, fewshot_k=2)
    for mine, theirs in zip(generated.results, expected.results, strict=True):
        assert mine.error is None and (mine.prompt, mine.prediction) == (theirs.prompt, theirs.prediction)
