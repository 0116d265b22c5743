"""The openai backend against the project's OpenAI-compatible server over loopback: scoring that agrees
with in-process hf, both APIs, both multiple-choice methods, every fault, rate limits, and the API key
kept out of everything that is written down."""

from __future__ import annotations

import dataclasses
import email.utils
import json
import logging
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
import torch
from prometheus_client import CollectorRegistry, generate_latest

from monitor.analysis.baselines import pin_baseline
from monitor.analysis.regression import comparability
from monitor.backends import EndpointSpec, ModelSpec, load_backend
from monitor.backends.base import (
    GenerationRequest,
    GenerationResult,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    ModelFingerprint,
    ProgressCallback,
)
from monitor.backends.hf.backend import HFBackend
from monitor.backends.openai import OpenAIBackend, TokenBucket, match_choice, parse_retry_after
from monitor.config import load_config
from monitor.errors import BackendError, ModelLoadError
from monitor.evals.evalset import load_evalset
from monitor.evals.loop import evaluate
from monitor.exporters.metrics import StoreCollector
from monitor.service.plan import RunPlan, plan_runs
from monitor.service.runs import ModelPool, execute_run
from monitor.store import Store
from monitor.testing.openai_server import FaultPlan, FaultRule, OpenAIServer, ServedModel, load_served_model
from tests.conftest import TinyModels
from tests.system.test_cli import TICKETS, invoke, make_evalsets
from tests.unit.test_hf_backend import CHOICES, FEWSHOT

KEY = "sk-test-5f1c0ffee-DO-NOT-LEAK"
WRONG_KEY = "sk-wrong-8badf00d-DO-NOT-LEAK"
QUESTIONS = (
    "Ticket: the app crashes when I open settings\nCategory:",
    "Ticket: please refund the last invoice\nCategory: ",
    "Ticket: my parcel never arrived and I want my money back\nCategory:",
)
PROMPT = "Ticket: my parcel never arrived\nCategory:"


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class KeywordRouter:
    """A served "model" that routes the last ticket of its prompt by keywords, like a perfect fine-tune
    that has not heard of passwords.  A real Backend: scoring is not something it can do."""

    ANSWERS: ClassVar[dict[str, str]] = {
        "charged": "billing",
        "crash": "technical",
        "email": "account",
        "parcel": "shipping",
        "refund": "billing",
        "password": "I am not sure",
    }

    def generate(
        self, requests: Sequence[GenerationRequest], *, progress: ProgressCallback | None = None
    ) -> list[GenerationResult]:
        out = []
        for request in requests:
            ticket = request.prompt.rsplit("Ticket:", 1)[-1]
            answer = next((a for k, a in self.ANSWERS.items() if k in ticket), "no idea")
            out.append(GenerationResult(f" {answer}\nTicket:", len(request.prompt.split()), 3))
        return out

    def loglikelihood(
        self, requests: Sequence[LoglikelihoodRequest], *, progress: ProgressCallback | None = None
    ) -> list[LoglikelihoodResult]:
        raise BackendError("this model cannot score")

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def fingerprint(self) -> ModelFingerprint:
        return ModelFingerprint("keywords", "keywords")

    def describe(self) -> dict[str, Any]:
        return {"backend": "keywords"}

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def served(tiny_models: TinyModels) -> dict[str, ServedModel]:
    base = load_served_model("tiny", tiny_models.gpt2)
    lora = load_served_model("tiny-lora", tiny_models.gpt2, tiny_models.lora)
    router = ServedModel("router", KeywordRouter(), base.tokenizer)
    return {"tiny": base, "tiny-lora": lora, "router": router}


@pytest.fixture(scope="module")
def in_process(tiny_models: TinyModels) -> dict[str, HFBackend]:
    return {
        "tiny": HFBackend.load(str(tiny_models.gpt2), device="cpu", dtype="float32"),
        "tiny-lora": HFBackend.load(
            str(tiny_models.gpt2), str(tiny_models.lora), device="cpu", dtype="float32"
        ),
    }


@pytest.fixture()
def server(served: dict[str, ServedModel]) -> Iterator[OpenAIServer]:
    with OpenAIServer(served) as running:
        yield running


def connect(server: OpenAIServer, model: str = "tiny", **endpoint: Any) -> OpenAIBackend:
    spec = EndpointSpec(server.url, **{"mc_method": "logprobs", **endpoint})
    return OpenAIBackend.load(model, spec, backoff_s=0.01)


# ---------------------------------------------------------------------- agreement with in-process hf


@pytest.mark.parametrize("model", ["tiny", "tiny-lora"])
def test_prompt_logprobs_agree_with_in_process_hf(
    server: OpenAIServer, in_process: dict[str, HFBackend], model: str
) -> None:
    requests = [LoglikelihoodRequest(FEWSHOT + q, CHOICES) for q in QUESTIONS]
    requests.append(LoglikelihoodRequest("Ticket: password reset\nCategory:", (" account", " billing")))
    backend = OpenAIBackend.load(model, EndpointSpec(server.url))  # auto: the server echoes log-probs
    assert backend.describe()["mc_method"] == "logprobs"
    served = backend.loglikelihood(requests)
    local = in_process[model].loglikelihood(requests)
    for mine, theirs in zip(served, local, strict=True):
        assert mine.error is None
        worst = max(abs(a - b) for a, b in zip(mine.loglikelihoods, theirs.loglikelihoods, strict=True))
        assert worst < 1e-4
        assert mine.context_tokens == theirs.context_tokens
        assert mine.continuation_tokens == theirs.continuation_tokens
    # One request an item, its continuations as a list of prompts.
    assert backend.stats["requests"] == len(requests) + 2  # + the model list and the auto probe


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_generation_through_both_apis_matches_in_process(
    server: OpenAIServer, in_process: dict[str, HFBackend], api: str
) -> None:
    requests = [GenerationRequest(FEWSHOT + q.rstrip(), 6, ("\n", "Ticket")) for q in QUESTIONS] + [
        GenerationRequest(PROMPT, 0)
    ]
    served = connect(server, "tiny-lora", api=api).generate(requests)
    local = in_process["tiny-lora"].generate(requests)
    assert [s.text for s in served] == [x.text for x in local]
    # Token usage comes from the responses' usage.
    assert [s.prompt_tokens for s in served[:3]] == [x.prompt_tokens for x in local[:3]]
    assert [s.completion_tokens for s in served[:3]] == [x.completion_tokens for x in local[:3]]
    assert server.stats["/v1/chat/completions" if api == "chat" else "/v1/completions"] == 3


def test_served_and_in_process_runs_give_the_same_predictions(
    server: OpenAIServer, in_process: dict[str, HFBackend], tmp_path: Path
) -> None:
    routing, _ = make_evalsets(tmp_path)
    es = load_evalset(routing)
    served = evaluate(connect(server, "tiny-lora"), es, fewshot_k=2).results
    local = evaluate(in_process["tiny-lora"], es, fewshot_k=2).results
    assert [r.prediction for r in served] == [r.prediction for r in local]
    for s, x in zip(served, local, strict=True):
        assert s.loglikelihoods and x.loglikelihoods
        assert max(abs(a - b) for a, b in zip(s.loglikelihoods, x.loglikelihoods, strict=True)) < 1e-4
        assert s.prompt_tokens == x.prompt_tokens > 0


def test_overlapped_chunks_keep_the_bound_the_order_and_the_answers(
    served: dict[str, ServedModel], tmp_path: Path
) -> None:
    """The runner hands a remote backend the next chunk while the last one's stragglers are in flight;
    the backend's concurrency bound holds across the two calls, and results come back in item order."""
    routing, _ = make_evalsets(tmp_path)
    es = load_evalset(routing)
    with OpenAIServer(served, faults=FaultPlan(latency_s=0.05)) as slow:
        backend = connect(slow, "tiny-lora", max_concurrency=3)
        chunked = evaluate(backend, es, fewshot_k=2, chunk_size=2).results
        assert slow.max_in_flight == 3
        whole = evaluate(backend, es, fewshot_k=2, chunk_size=len(es.items)).results
    assert [r.item_id for r in chunked] == [item.id for item in es.items]
    assert [(r.prediction, r.loglikelihoods) for r in chunked] == [
        (r.prediction, r.loglikelihoods) for r in whole
    ]


def test_count_tokens_fingerprint_and_describe(
    server: OpenAIServer, in_process: dict[str, HFBackend]
) -> None:
    backend = connect(server, "tiny-lora")
    assert backend.count_tokens(FEWSHOT) == in_process["tiny"].count_tokens(FEWSHOT)
    assert backend.describe()["tokenize"] == "server /tokenize"
    fingerprint = backend.fingerprint()
    assert fingerprint == connect(server, "tiny-lora").fingerprint()  # stable across loads
    assert fingerprint.digest != connect(server, "tiny").fingerprint().digest
    assert fingerprint.files["parent"] == "gpt2" and fingerprint.files["root"].endswith("gpt2-lora")
    info = backend.describe()
    assert info["server"]["max_model_len"] == 512 and info["base_url"] == server.url


def test_count_tokens_estimates_without_tokenize(served: dict[str, ServedModel]) -> None:
    with OpenAIServer(served, tokenize=False) as plain:
        backend = connect(plain)
        assert backend.count_tokens("x" * 41) == 11  # four characters a token, rounded up
        assert backend.describe()["tokenize"] == "estimate"


def test_a_memoizing_server_answers_a_repeated_request_as_first_computed(
    served: dict[str, ServedModel],
) -> None:
    """``--memoize`` (the benchmarks' server): a repeated greedy request gets the first answer's bytes
    without the model; a sampled one without a seed is computed anew."""
    greedy = {"model": "tiny", "prompt": "Ticket: refund\nCategory:", "max_tokens": 3, "temperature": 0}
    sampled = {**greedy, "temperature": 1.0}
    with OpenAIServer(served, memoize=True) as memo:
        url = memo.url + "/completions"
        first = httpx.post(url, json=greedy)
        again = [httpx.post(url, json=greedy) for _ in range(3)]
        assert [r.content for r in again] == [first.content] * 3
        assert first.status_code == 200 and memo.stats["/v1/completions"] == 4
        assert len(memo._sent) == 1 and len(memo._cache) == 1
        for _ in range(2):
            assert httpx.post(url, json=sampled).status_code == 200
        assert len(memo._sent) == 1 and len(memo._cache) == 1  # never kept


def test_unknown_model_and_unreachable_server_fail_to_load(server: OpenAIServer) -> None:
    with pytest.raises(ModelLoadError, match="does not serve 'ghost'; it serves tiny, tiny-lora, router"):
        connect(server, "ghost")
    with pytest.raises(ModelLoadError, match="connection failed"):
        OpenAIBackend.load("tiny", EndpointSpec("http://127.0.0.1:9/v1", max_retries=1), backoff_s=0.01)


# ---------------------------------------------------------------------- multiple choice by generation


def test_match_choice() -> None:
    choices = ["billing", "shipping", "shipping and billing", "A"]
    assert match_choice(" Billing.", choices) == 0
    assert match_choice("shipping and billing", choices) == 2
    assert match_choice("It is shipping, I think", choices) == 1
    assert match_choice("shipping and billing, clearly", choices) == 2  # not the shorter one inside it
    assert match_choice("billing or shipping", choices) == 0  # the first named
    assert match_choice("a", choices) == 3
    assert match_choice("no idea", choices) is None


def test_generate_method_lists_choices_and_scores_unmatched_answers_wrong(
    server: OpenAIServer, tmp_path: Path
) -> None:
    routing, _ = make_evalsets(tmp_path)
    es = load_evalset(routing)
    for api in ("completions", "chat"):
        backend = connect(server, "router", api=api, mc_method="generate")
        results = evaluate(backend, es, fewshot_k=0).results
        by_id = {r.item_id: r for r in results}
        assert [by_id[f"r{i}"].prediction for i in range(5)] == [c for _, c in TICKETS[:5]]
        unsure = by_id["r5"]  # "password reset fails": an answer that is no choice is wrong, not an error
        assert unsure.error is None and unsure.prediction == "I am not sure" and unsure.correct is False
        assert all(r.loglikelihoods is None for r in results)  # no log-likelihoods to keep
        assert sum(bool(r.correct) for r in results) == 5


def test_auto_falls_back_to_generation_when_the_server_has_no_echo(served: dict[str, ServedModel]) -> None:
    refuse_echo = FaultRule("status", status=400, contains='"echo"')
    with OpenAIServer(served, faults=FaultPlan(rules=(refuse_echo,))) as no_echo:
        backend = OpenAIBackend.load("router", EndpointSpec(no_echo.url), backoff_s=0.01)
        assert backend.describe()["mc_method"] == "generate"
        assert backend.stats["retries"] == 0 and backend.stats["http_400"] == 1
        (answer,) = backend.loglikelihood([LoglikelihoodRequest(PROMPT, (" billing", " shipping"))])
        assert answer.generated == "shipping" and answer.loglikelihoods[1] == 0.0


def test_runs_by_different_methods_are_never_paired(
    server: OpenAIServer, in_process: dict[str, HFBackend], tmp_path: Path
) -> None:
    routing, _ = make_evalsets(tmp_path)
    es = load_evalset(routing)
    store = Store.open(f"sqlite:///{tmp_path / 'm.db'}")
    pool = ModelPool(max_models=3)
    scored = ModelSpec("openai", "tiny", endpoint=EndpointSpec(server.url))
    picked = ModelSpec("openai", "router", endpoint=EndpointSpec(server.url, mc_method="generate"))
    logprob_run = execute_run(store, pool, RunPlan("tiny-served", scored, es, 0))
    generated_run = execute_run(store, pool, RunPlan("tiny-served", picked, es, 0))
    assert logprob_run.status == generated_run.status == "succeeded"
    assert logprob_run.settings.get("mc_method") is None and generated_run.settings["mc_method"] == "generate"
    assert logprob_run.settings_digest == es.settings_digest(0) != generated_run.settings_digest
    assert logprob_run.backend_info["mc_method"] == "logprobs"

    baseline = pin_baseline(store, tmp_path / "baselines", "tiny-served", "routing", logprob_run.id)
    mode, reason = comparability(generated_run, baseline)
    assert mode == "refused" and reason is not None and "mc_method" in reason
    # Served log-likelihoods are the in-process ones: such runs pair with hf runs.
    local_pool = ModelPool(loader=lambda spec: in_process["tiny"], max_models=1)
    local_run = execute_run(store, local_pool, RunPlan("tiny-local", ModelSpec("hf", "tiny"), es, 0))
    assert comparability(local_run, baseline) == ("paired", None)
    store.close()


# ---------------------------------------------------------------------- faults and retries


def _one_generation(backend: OpenAIBackend) -> GenerationResult:
    (result,) = backend.generate([GenerationRequest(PROMPT, 2)])
    return result


@pytest.mark.parametrize(
    ("rule", "counts"),
    [
        (FaultRule("status", status=500, requests=frozenset({1, 2})), {"http_500": 2, "retries": 2}),
        (FaultRule("status", status=503, requests=frozenset({1})), {"http_503": 1, "retries": 1}),
        (FaultRule("status", status=429, requests=frozenset({1})), {"http_429": 1, "retries": 1}),
        (FaultRule("drop", requests=frozenset({1, 2, 3})), {"connection": 3, "retries": 3}),
        (FaultRule("malformed", requests=frozenset({1})), {"malformed": 1, "retries": 1}),
        (FaultRule("slow", delay_s=4.0, requests=frozenset({1})), {"timeout": 1, "retries": 1}),
    ],
    ids=["500", "503", "429-no-retry-after", "dropped", "malformed-json", "timeout"],
)
def test_transient_faults_are_retried_until_the_answer(
    served: dict[str, ServedModel], in_process: dict[str, HFBackend], rule: FaultRule, counts: dict[str, int]
) -> None:
    with OpenAIServer(served, faults=FaultPlan(rules=(rule,))) as flaky:
        # a timeout well above an answer's time on a loaded machine, well below the slow rule's delay
        backend = connect(flaky, timeout_s=2.0)
        result = _one_generation(backend)
    assert result.error is None
    assert result.text == in_process["tiny"].generate([GenerationRequest(PROMPT, 2)])[0].text
    expected = {**counts, "requests": 2 + counts["retries"]}  # + the model list at load
    assert {k: backend.stats[k] for k in expected} == expected
    assert backend.stats["gave_up"] == 0


def test_an_item_that_keeps_failing_is_an_error_and_its_neighbours_are_answered(
    served: dict[str, ServedModel],
) -> None:
    poison = FaultRule("status", status=500, contains="POISON")
    with OpenAIServer(served, faults=FaultPlan(rules=(poison,))) as flaky:
        backend = connect(flaky, max_retries=2)
        results = backend.generate([GenerationRequest(PROMPT, 2), GenerationRequest("POISON " + PROMPT, 2)])
    assert results[0].error is None
    assert results[1].error == (
        "POST /completions failed after 3 attempts: HTTP 500 Internal Server Error: injected fault: HTTP 500"
    )
    assert backend.stats["retries"] == 2 and backend.stats["gave_up"] == 1 and backend.stats["http_500"] == 3


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_other_client_errors_are_not_retried(served: dict[str, ServedModel], status: int) -> None:
    rule = FaultRule("status", status=status, requests=frozenset({1}))
    with OpenAIServer(served, faults=FaultPlan(rules=(rule,))) as strict:
        backend = connect(strict)
        (result,) = backend.generate([GenerationRequest(PROMPT, 2)])
    assert result.error is not None and f"HTTP {status}" in result.error
    assert backend.stats["requests"] == 2 and backend.stats["retries"] == 0  # the model list and one try


# ---------------------------------------------------------------------- a refused API key


def refuse_every_inference(status: int = 401) -> FaultPlan:
    """The model list answers, every inference request is refused: a key that lost its rights mid-run,
    or a server that lists models without a key."""
    return FaultPlan(rules=(FaultRule("status", status=status, probability=1.0),))


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_stops_the_backend_after_three_refusals(
    served: dict[str, ServedModel], status: int
) -> None:
    """The reported case: 400 items, a 401 on every one of them, 400 wasted calls on a paid API."""
    with OpenAIServer(served, faults=refuse_every_inference(status)) as refusing:
        backend = connect(refusing, max_concurrency=1, api_key_env=None)
        results = backend.generate([GenerationRequest(PROMPT, 2)] * 400)
        sent = refusing.stats["/v1/completions"]
    assert sent == 3  # three refusals in a row, then nothing more is sent
    assert backend.stats["not_sent"] == 397 and backend.stats["retries"] == 0
    assert all(r.error is not None for r in results)
    assert results[0].error is not None and results[0].error.startswith(
        f"authentication failed at {refusing.url} (HTTP {status}): POST /completions:"
    )
    assert results[-1].error is not None and "3 requests in a row were refused, so no more are sent" in (
        results[-1].error
    )


def test_requests_in_flight_when_the_key_is_refused_are_few(served: dict[str, ServedModel]) -> None:
    with OpenAIServer(served, faults=refuse_every_inference()) as refusing:
        backend = connect(refusing, max_concurrency=4)
        backend.generate([GenerationRequest(PROMPT, 2)] * 400)
        assert refusing.stats["/v1/completions"] <= 4 + 3  # those already in flight, at most


def test_an_answer_between_refusals_starts_the_count_again(served: dict[str, ServedModel]) -> None:
    flaky = FaultPlan(rules=(FaultRule("status", status=401, requests=frozenset({1, 2, 4, 5})),))
    with OpenAIServer(served, faults=flaky) as refusing:
        backend = connect(refusing, max_concurrency=1)
        results = backend.generate([GenerationRequest(PROMPT, 2)] * 6)
    assert [r.error is None for r in results] == [False, False, True, False, False, True]


def test_a_run_with_a_refused_key_fails_early_and_says_why(
    served: dict[str, ServedModel], tmp_path: Path
) -> None:
    from tests.unit.test_daemon import make_evalset

    es = load_evalset(make_evalset(tmp_path / "evals", 400))
    store = Store.open(f"sqlite:///{tmp_path / 'm.db'}")
    with OpenAIServer(served, faults=refuse_every_inference()) as refusing:
        spec = ModelSpec("openai", "router", endpoint=EndpointSpec(refusing.url, mc_method="generate"))
        started = time.monotonic()
        run = execute_run(store, ModelPool(max_models=1), RunPlan("router", spec, es, 0))
        took = time.monotonic() - started
        sent = refusing.stats["/v1/completions"]
    assert run.status == "failed" and run.error is not None
    assert "authentication failed at" in run.error and "(HTTP 401)" in run.error
    assert sent <= 8 + 3, sent  # max_concurrency (8) in flight at most, not 400
    assert took < 30
    store.close()


def test_a_refused_key_fails_the_load(
    served: dict[str, ServedModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_WRONG_KEY", WRONG_KEY)
    with OpenAIServer(served, api_key=KEY) as secured:
        spec = EndpointSpec(secured.url, api_key_env="TEST_WRONG_KEY")
        with pytest.raises(ModelLoadError, match=r"authentication failed at .* \(HTTP 401\)") as caught:
            OpenAIBackend.load("tiny", spec, backoff_s=0.01)
        assert WRONG_KEY not in str(caught.value)
    # a probe refused for the key is not "this server has no log-probabilities"
    with (
        OpenAIServer(served, faults=refuse_every_inference()) as refusing,
        pytest.raises(ModelLoadError, match=r"authentication failed"),
    ):
        OpenAIBackend.load("router", EndpointSpec(refusing.url), backoff_s=0.01)


# ---------------------------------------------------------------------- token counts


def test_finished_runs_say_where_their_token_counts_come_from(
    served: dict[str, ServedModel], tmp_path: Path
) -> None:
    routing, _ = make_evalsets(tmp_path)
    es = load_evalset(routing)
    store = Store.open(f"sqlite:///{tmp_path / 'm.db'}")
    with OpenAIServer(served) as running:
        for method in ("logprobs", "generate"):
            model = "tiny" if method == "logprobs" else "router"
            spec = ModelSpec("openai", model, endpoint=EndpointSpec(running.url, mc_method=method))
            run = execute_run(store, ModelPool(max_models=1), RunPlan(model, spec, es, 0))
            assert run.status == "succeeded"
            assert "unknown yet" not in json.dumps(run.backend_info)
            assert run.backend_info["token_counts"] == (
                "echoed prompt tokens (multiple choice); the responses' usage (generation)"
                if method == "logprobs"
                else "the responses' usage, prompt and completion tokens"
            )
    store.close()


def test_a_generation_method_run_stores_the_completion_tokens_the_server_reports(
    served: dict[str, ServedModel], tmp_path: Path
) -> None:
    routing, _ = make_evalsets(tmp_path)
    es = load_evalset(routing)
    store = Store.open(f"sqlite:///{tmp_path / 'm.db'}")
    with OpenAIServer(served) as running:
        spec = ModelSpec("openai", "router", endpoint=EndpointSpec(running.url, mc_method="generate"))
        run = execute_run(store, ModelPool(max_models=1), RunPlan("router", spec, es, 0))
    items = store.item_results(run.id or 0)
    store.close()
    # the keyword router answers in 3 tokens, as the server's usage says
    assert [i.completion_tokens for i in items] == [3] * len(items)
    assert run.completion_tokens == 3 * len(items)


def test_retry_after_in_seconds_is_honoured(served: dict[str, ServedModel]) -> None:
    rule = FaultRule("status", status=429, retry_after="1", requests=frozenset({1}))
    with OpenAIServer(served, faults=FaultPlan(rules=(rule,))) as limited:
        backend = connect(limited)
        started = time.monotonic()
        result = _one_generation(backend)
        elapsed = time.monotonic() - started
    assert result.error is None and backend.stats["http_429"] == 1 and backend.stats["retries"] == 1
    assert elapsed >= 0.95  # not the 0.01 s backoff


def test_retry_after_as_an_http_date_is_honoured(served: dict[str, ServedModel]) -> None:
    when = email.utils.format_datetime(datetime.now(timezone.utc) + timedelta(seconds=2), usegmt=True)
    rule = FaultRule("status", status=503, retry_after=when, requests=frozenset({1}))
    with OpenAIServer(served, faults=FaultPlan(rules=(rule,))) as limited:
        backend = connect(limited)
        started = time.monotonic()
        result = _one_generation(backend)
        elapsed = time.monotonic() - started
    assert result.error is None and backend.stats["retries"] == 1
    assert elapsed >= 0.9  # the date has whole seconds: between 1 and 2 s from now


def test_a_retry_after_longer_than_the_backend_waits_fails_the_item(served: dict[str, ServedModel]) -> None:
    rule = FaultRule("status", status=429, retry_after="3600", requests=frozenset({1}))
    with OpenAIServer(served, faults=FaultPlan(rules=(rule,))) as limited:
        backend = connect(limited)
        result = _one_generation(backend)
    assert result.error is not None and "retry after 3600s" in result.error
    assert backend.stats["requests"] == 2 and backend.stats["gave_up"] == 1


def test_parse_retry_after() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after("Wed, 01 Jan 2025 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("Wed, 01 Jan 2025 11:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None and parse_retry_after(None, now) is None


# ---------------------------------------------------------------------- concurrency and rate limits


def test_in_flight_requests_are_bounded_by_max_concurrency(served: dict[str, ServedModel]) -> None:
    requests = [GenerationRequest(f"{PROMPT} {i}", 1) for i in range(6)]
    with OpenAIServer(served, faults=FaultPlan(latency_s=0.2)) as slow:
        started = time.monotonic()
        narrow = connect(slow, max_concurrency=2)
        narrow.generate(requests)
        elapsed = time.monotonic() - started
        assert slow.max_in_flight == 2 and elapsed >= 0.6
        narrow.close()  # the endpoint's gate takes the smallest bound among its live backends
        slow.max_in_flight = 0
        wide = connect(slow, max_concurrency=6)
        wide.generate(requests)
        wide.close()
        assert slow.max_in_flight >= 3


def test_requests_per_minute_paces_the_requests(served: dict[str, ServedModel]) -> None:
    requests = [GenerationRequest(f"{PROMPT} {i}", 1) for i in range(6)]
    with OpenAIServer(served) as fast:
        backend = connect(fast, requests_per_minute=240, max_concurrency=6)  # 4 a second, a burst of 4
        started = time.monotonic()
        assert all(r.error is None for r in backend.generate(requests))
        assert time.monotonic() - started >= 0.45  # the 5th waits 0.25 s, the 6th 0.5 s


def test_token_bucket() -> None:
    now = [0.0]
    bucket = TokenBucket(600, clock=lambda: now[0])  # 10 a second, holds one second's worth
    assert bucket.capacity == 10
    assert bucket.reserve(10) == 0.0
    assert bucket.reserve(5) == pytest.approx(0.5)
    assert bucket.reserve(5) == pytest.approx(1.0)  # queued behind the previous reservation
    now[0] = 2.0
    assert bucket.reserve(1) == 0.0
    assert bucket.reserve(100) == pytest.approx(0.1)  # larger than the bucket: waits for a full one
    bucket.adjust(-100)  # the response said it cost nothing
    now[0] = 3.0
    assert bucket.reserve(10) == 0.0


# ---------------------------------------------------------------------- configuration, runs and the key

CONFIG = """\
database: sqlite:///monitor.db
models:
  router-served:
    backend: openai
    base: tiny-lora
    endpoint:
      base_url: {url}
      api_key_env: TEST_SERVER_KEY
      max_concurrency: 4
      requests_per_minute: 6000
      headers: {{X-Team: evals}}
  router-chat:
    backend: openai
    base: tiny-lora
    endpoint: {{base_url: {url}, api_key_env: TEST_SERVER_KEY, api: chat, mc_method: logprobs}}
  router-wrong-key:
    backend: openai
    base: tiny-lora
    endpoint: {{base_url: {url}, api_key_env: TEST_WRONG_KEY}}
evalsets:
  routing: evals/routing
  triage: evals/triage
jobs:
  nightly:
    models: [router-served, router-chat]
    evalsets: [routing, triage]
  broken:
    models: [router-wrong-key]
    evalsets: [routing]
"""


def test_config_problems_are_one_line_each(tmp_path: Path) -> None:
    path = tmp_path / "monitor.yaml"
    path.write_text(
        "models:\n"
        "  a: {backend: openai, base: x}\n"
        "  b: {backend: openai, base: x, adapter: ./lora, endpoint: {base_url: 'http://h/v1'}}\n"
        "  c: {base: ./m, endpoint: {base_url: 'http://h/v1'}}\n"
        "  d: {backend: openai, base: x, endpoint: {base_url: 'ftp://h', api: grpc, mc_method: vibes, rps: 3}}\n"
    )
    code, _, err = invoke("check-config", "--config", str(path))
    lines = err.strip().splitlines()
    assert code == 2
    assert f"error: {path}:2: models.a: an openai model needs 'endpoint' (base_url and friends)" in lines
    assert any(
        line.startswith(f"error: {path}:3: models.b: adapter: not for openai models") for line in lines
    )
    assert f"error: {path}:4: models.c: 'endpoint' is only for backend: openai" in lines
    assert any(
        line.startswith(f"error: {path}:5: models.d.endpoint.base_url: String should match") for line in lines
    )
    assert any(line.startswith(f"error: {path}:5: models.d.endpoint.api: Input should be") for line in lines)
    assert any(
        line.startswith(f"error: {path}:5: models.d.endpoint.mc_method: Input should be") for line in lines
    )
    assert f"error: {path}:5: models.d.endpoint.rps: unknown key" in lines
    assert len(lines) == 7


def test_monitor_run_through_a_served_model_and_the_key_never_leaks(
    served: dict[str, ServedModel],
    in_process: dict[str, HFBackend],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    make_evalsets(tmp_path / "evals")
    monkeypatch.setenv("TEST_SERVER_KEY", KEY)
    monkeypatch.setenv("TEST_WRONG_KEY", WRONG_KEY)
    caplog.set_level(logging.DEBUG)
    # One flaky answer so that the retry is logged too.
    flaky = FaultPlan(rules=(FaultRule("status", status=500, requests=frozenset({3})),))
    with OpenAIServer(served, api_key=KEY, faults=flaky) as secured:
        config = tmp_path / "monitor.yaml"
        config.write_text(CONFIG.format(url=secured.url))
        code, out, err = invoke("check-config", "--config", str(config))
        assert code == 0, err
        dumps = (
            out + err + repr(load_config(config)) + json.dumps(load_config(config).model_dump(mode="json"))
        )
        code, out, err = invoke("run", "nightly", "--config", str(config), "--json")
        assert code == 0, err
        dumps += out + err
        runs = json.loads(out)
        code, out, err = invoke("run", "broken", "--config", str(config))
        assert code == 1
        dumps += out + err

    store = Store.open(f"sqlite:///{tmp_path / 'monitor.db'}")
    assert [r["status"] for r in runs] == ["succeeded"] * 4
    for entry in runs:
        run = store.get_run(entry["id"])
        assert run.backend_info["backend"] == "openai"
        assert run.backend_info["headers"] == (["X-Team"] if entry["model"] == "router-served" else [])
        items = store.item_results(entry["id"])
        assert all(i.error is None and i.prompt_tokens > 0 for i in items)
        if run.evalset_name == "triage":
            assert all(i.completion_tokens > 0 for i in items) and run.completion_tokens > 0
        else:
            # The same predictions as the same weights in process.
            es = load_evalset(tmp_path / "evals" / "routing")
            local = evaluate(in_process["tiny-lora"], es, fewshot_k=0).results
            assert [i.prediction for i in items] == [r.prediction for r in local]

    registry = CollectorRegistry()
    registry.register(StoreCollector(store))
    metrics = generate_latest(registry).decode()
    store.close()
    database = (tmp_path / "monitor.db").read_bytes()
    assert b"401" in database  # the wrong key's run failed and says why ...
    for secret in (KEY, WRONG_KEY):
        assert secret.encode() not in database  # ... but not with the key
        assert secret not in caplog.text
        assert secret not in metrics
        assert secret not in dumps
    assert "retry 1 of 5" in caplog.text


def test_plan_runs_carries_the_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_SERVER_KEY", raising=False)
    make_evalsets(tmp_path / "evals")
    config = tmp_path / "monitor.yaml"
    config.write_text(CONFIG.format(url="http://vllm:8000/v1"))
    cfg = load_config(config, env={})
    plans = plan_runs(cfg, ["nightly"], trigger="cli")
    spec = plans[0].spec
    assert spec.backend == "openai" and spec.base == "tiny-lora" and spec.adapter is None
    assert spec.endpoint == EndpointSpec(
        "http://vllm:8000/v1",
        api_key_env="TEST_SERVER_KEY",
        headers=(("X-Team", "evals"),),
        max_concurrency=4,
        requests_per_minute=6000,
    )
    assert cfg.model_source("router-served") == ("tiny-lora", None)  # a served name, not a path
    with pytest.raises(ModelLoadError, match="TEST_SERVER_KEY"):
        load_backend(dataclasses.replace(spec, base="x"))


def test_a_run_with_too_many_failed_items_fails_and_failed_items_are_not_scored(
    served: dict[str, ServedModel], tmp_path: Path
) -> None:
    routing, _ = make_evalsets(tmp_path)
    es = load_evalset(routing)
    store = Store.open(f"sqlite:///{tmp_path / 'm.db'}")
    poison = FaultRule("status", status=502, contains="password reset fails")  # item r5
    with OpenAIServer(served, faults=FaultPlan(rules=(poison,))) as flaky:
        spec = ModelSpec(
            "openai", "router", endpoint=EndpointSpec(flaky.url, mc_method="generate", max_retries=1)
        )
        pool = ModelPool(max_models=1)
        strict = execute_run(store, pool, RunPlan("router", spec, es, 0), max_error_rate=0.1)
        lenient = execute_run(store, pool, RunPlan("router", spec, es, 0), max_error_rate=0.2)
    assert strict.status == "failed" and strict.items_failed == 1
    assert strict.error is not None and strict.error.startswith("1 of 6 items failed (16.7% > 10%)")
    assert "HTTP 502" in strict.error
    assert lenient.status == "succeeded" and lenient.metrics["acc"]["n"] == 5  # the failed item is left out
    assert lenient.metrics["acc"]["value"] == pytest.approx(1.0)
    (failed,) = [r for r in store.item_results(lenient.id or 0) if r.error]
    assert failed.item_id == "r5" and failed.correct is None and failed.prediction is None
    store.close()


def test_check_config_reports_an_unset_api_key_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_evalsets(tmp_path / "evals")
    monkeypatch.delenv("TEST_SERVER_KEY", raising=False)
    monkeypatch.setenv("TEST_WRONG_KEY", WRONG_KEY)
    config = tmp_path / "monitor.yaml"
    config.write_text(CONFIG.format(url="http://vllm:8000/v1"))
    code, out, err = invoke("check-config", "--config", str(config))
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: {config}: models.{name}.endpoint.api_key_env: environment variable TEST_SERVER_KEY is not set"
        for name in ("router-served", "router-chat")
    ]
    assert WRONG_KEY not in out + err


def test_serve_openai_command(tiny_models: TinyModels) -> None:
    import subprocess
    import sys

    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "monitor", "serve-openai", "--port", "0"),
            *("--model", f"tiny={tiny_models.gpt2}"),
            *("--model", f"tiny-lora={tiny_models.gpt2}:{tiny_models.lora}"),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        line = ""
        while "serving" not in line:
            line = process.stderr.readline()
            assert line or process.poll() is None, "the server exited"
        url = line.split(" at ")[1].split()[0]
        backend = OpenAIBackend.load("tiny-lora", EndpointSpec(url))
        assert (
            backend.fingerprint().files["parent"] == "gpt2" and backend.describe()["mc_method"] == "logprobs"
        )
    finally:
        process.terminate()
        process.wait(timeout=10)
