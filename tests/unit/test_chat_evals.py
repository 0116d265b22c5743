"""Chat eval sets: prompts rendered exactly as the tokenizer's own chat template renders them, choices
scored after the generation prompt, sampling and repeats, and every kind of bad chat input."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest

from monitor.backends import ModelSpec, load_backend
from monitor.backends.base import GenerationRequest, Sampling
from monitor.backends.hf.backend import HFBackend
from monitor.errors import EvalSetError
from monitor.evals.evalset import EvalSet, load_evalset
from monitor.evals.loop import chat_settings, chat_setup, evaluate, render_item
from monitor.evals.scoring import ItemScore, pass_at_k, reduce_samples
from tests.conftest import ChatModels

SYSTEM = "You route support tickets. Ticket id {id}."
DATA = [
    {"id": "a", "input": "charged twice", "target": "billing"},
    {"id": "b", "input": "app crashes", "target": "technical"},
    {
        "id": "c",
        "messages": [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "How can I help?"},
            {"role": "user", "content": "my password reset fails"},
        ],
        "target": "account",
    },
]
POOL = [
    {"id": "p1", "input": "refund please", "target": "billing"},
    {"id": "p2", "input": "cannot log in", "target": "account"},
]


def chat_set(
    root: Path, extra: str = "", data: list[Any] | None = None, task: str = "multiple_choice"
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    spec = (
        f"name: chat-routing\ntask: {task}\nformat: chat\nsystem: '{SYSTEM}'\nprompt: 'Ticket: {{input}}'\n"
    )
    if task == "multiple_choice":
        spec += "choices: [billing, technical, account]\n"
    spec += "fewshot: {k: 2, pool: pool.jsonl" + (", multiturn: false}\n" if "single" in extra else "}\n")
    spec += extra.replace("single", "")
    (root / "evalset.yaml").write_text(spec)
    rows = DATA if data is None else data
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in POOL))
    return root


@pytest.fixture(scope="module")
def backends(chat_models: ChatModels) -> dict[str, HFBackend]:
    loaded = {
        name: load_backend(ModelSpec("hf", str(path), device="cpu", dtype="float32"))
        for name, path in (("chatml", chat_models.chatml), ("no_system", chat_models.no_system))
    }
    yield loaded  # type: ignore[misc]
    for backend in loaded.values():
        backend.close()


def tokenizer_render(model_dir: Path, messages: list[dict[str, str]]) -> str:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def expected_conversation(
    es: EvalSet, item_index: int, k: int, multiturn: bool, fold: bool
) -> list[dict[str, str]]:
    """The conversation written out by hand, as lm-eval's fewshot_as_multiturn (or single turn) lays it out."""
    item = DATA[item_index]
    system = SYSTEM.format(id=item["id"])
    turns = (
        [dict(m) for m in item["messages"]]
        if "messages" in item
        else [{"role": "user", "content": f"Ticket: {item['input']}"}]
    )
    shots: list[dict[str, str]] = []
    if k and multiturn:
        for ex in POOL[:k]:
            shots += [
                {"role": "user", "content": f"Ticket: {ex['input']}"},
                {"role": "assistant", "content": ex["target"]},
            ]
    elif k:
        prefix = "".join(f"Ticket: {ex['input']} {ex['target']}\n\n" for ex in POOL[:k])
        turns[0] = {"role": "user", "content": prefix + turns[0]["content"]}
    conversation = shots + turns
    if fold:
        conversation[0] = {"role": "user", "content": f"{system}\n\n{conversation[0]['content']}"}
        return conversation
    return [{"role": "system", "content": system}, *conversation]


@pytest.mark.parametrize("k", [0, 2])
@pytest.mark.parametrize("single", [False, True])
@pytest.mark.parametrize("model", ["chatml", "no_system"])
def test_rendered_prompts_equal_the_tokenizers_own_chat_template(
    backends: dict[str, HFBackend], chat_models: ChatModels, tmp_path: Path, k: int, single: bool, model: str
) -> None:
    es = load_evalset(chat_set(tmp_path / "set", "single" if single else ""))
    backend = backends[model]
    chat = chat_setup(backend, es)
    assert chat is not None and chat.system_role is (model == "chatml")
    assert backend.describe()["chat_template"] == {
        "sha256": chat.sha256,
        "system_role": chat.system_role,
        "source": "tokenizer",
    }
    model_dir = chat_models.chatml if model == "chatml" else chat_models.no_system
    for index, item in enumerate(es.items):
        got = render_item(backend, es, item, k, chat).text
        want = tokenizer_render(
            model_dir, expected_conversation(es, index, k, not single, fold=model == "no_system")
        )
        assert got == want
    assert got.endswith("<|im_start|>assistant\n" if model == "chatml" else "<start_of_turn>model\n")


def test_the_template_without_a_system_role_refuses_one_and_the_runner_folds_it(
    backends: dict[str, HFBackend], chat_models: ChatModels
) -> None:
    from monitor.errors import BackendError

    with pytest.raises(BackendError, match="System role not supported"):
        backends["no_system"].render_chat((("system", "s"), ("user", "u")))
    assert chat_settings(backends["no_system"], load_evalset_or_skip())["system_prompt"] == (
        "folded into the first user turn"
    )


def load_evalset_or_skip() -> EvalSet:
    import tempfile

    return load_evalset(chat_set(Path(tempfile.mkdtemp()) / "s"))


def test_choices_are_scored_after_the_generation_prompt_as_transformers_computes_them(
    backends: dict[str, HFBackend], chat_models: ChatModels, tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    es = load_evalset(chat_set(tmp_path / "set"))
    outcome = evaluate(backends["chatml"], es, fewshot_k=2)
    tokenizer = AutoTokenizer.from_pretrained(chat_models.chatml)
    model = AutoModelForCausalLM.from_pretrained(chat_models.chatml, dtype=torch.float32).eval()
    for index, result in enumerate(outcome.results):
        assert result.error is None
        context = tokenizer_render(chat_models.chatml, expected_conversation(es, index, 2, True, False))
        assert result.prompt == context
        expected = []
        for choice in ("billing", "technical", "account"):  # target_delimiter is "" after the template
            context_ids = tokenizer(context)["input_ids"]
            whole = tokenizer(context + choice)["input_ids"]
            with torch.no_grad():
                logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), dim=-1)
            expected.append(
                sum(float(logprobs[i - 1, whole[i]]) for i in range(len(context_ids), len(whole)))
            )
        assert result.loglikelihoods == pytest.approx(expected, abs=1e-4)


def test_a_changed_template_changes_the_settings_digest_and_a_text_set_keeps_its_old_one(
    backends: dict[str, HFBackend], tmp_path: Path
) -> None:
    es = load_evalset(chat_set(tmp_path / "set"))
    one = chat_settings(backends["chatml"], es)["chat_template_sha256"]
    other = chat_settings(backends["no_system"], es)["chat_template_sha256"]
    assert one != other and one.startswith("sha256:")
    assert es.settings_digest(2, chat_template_sha256=one) != es.settings_digest(
        2, chat_template_sha256=other
    )
    # A text eval set's digest is computed as before chat formats existed.
    text = tmp_path / "text"
    text.mkdir()
    (text / "evalset.yaml").write_text("name: t\ntask: generate\nprompt: 'Q: {input}'\n")
    (text / "data.jsonl").write_text('{"id": 1, "input": "x", "target": "y"}\n')
    old_spec = {
        "name": "t",
        "task": "generate",
        "prompt": "Q: {input}",
        "description": "",
        "choices": None,
        "target_delimiter": " ",
        "fewshot": None,
        "metrics": None,
        "max_new_tokens": 64,
        "stop": [],
    }
    old = hashlib.sha256(json.dumps({"spec": old_spec, "fewshot_k": 0}, sort_keys=True).encode()).hexdigest()[
        :16
    ]
    assert load_evalset(text).settings_digest(0) == old
    assert load_evalset(text).comparison_settings(0) == {}


def test_format_chat_on_a_model_without_a_template_is_an_input_error(
    chat_models: ChatModels, tmp_path: Path
) -> None:
    es = load_evalset(chat_set(tmp_path / "set"))
    plain = load_backend(ModelSpec("hf", str(chat_models.plain), device="cpu", dtype="float32"))
    try:
        with pytest.raises(EvalSetError) as info:
            evaluate(plain, es)
    finally:
        plain.close()
    (problem,) = info.value.problems
    assert problem.location == str(tmp_path / "set" / "evalset.yaml")
    assert problem.message.startswith("format: chat, but the model has no chat template")


@pytest.mark.parametrize(
    ("extra", "data", "expected"),
    [
        (
            "",
            [{"id": 1, "messages": [{"role": "robot", "content": "x"}], "target": "billing"}],
            "data.jsonl:1: messages[0].role: unknown role 'robot'; use one of system, user, assistant",
        ),
        (
            "",
            [{"id": 1, "messages": [{"role": "user", "content": " "}], "target": "billing"}],
            "data.jsonl:1: messages[0].content: must be a non-empty string",
        ),
        (
            "",
            [
                {
                    "id": 1,
                    "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
                    "target": "billing",
                }
            ],
            "data.jsonl:1: messages[1].role: the last message must be the user's",
        ),
    ],
)
def test_bad_item_conversations_name_file_line_and_field(
    tmp_path: Path, extra: str, data: list[Any], expected: str
) -> None:
    with pytest.raises(EvalSetError) as info:
        load_evalset(chat_set(tmp_path / "set", extra, data))
    assert [str(p) for p in info.value.problems] == [f"{tmp_path / 'set' / expected}"]


@pytest.mark.parametrize(
    ("generation", "expected"),
    [
        (
            "generation: {repeats: 5}",
            "generation: repeats: 5 repeats of greedy decoding give the same answer 5 times",
        ),
        (
            "metrics: [token_f1]\ngeneration: {temperature: 0.7, repeats: 4, reduce: {token_f1: pass_at_2}}",
            "generation.reduce.token_f1: pass_at_2 needs a pass/fail metric",
        ),
        (
            "generation: {temperature: 0.7, repeats: 2, reduce: {exact_match: pass_at_3}}",
            "generation: reduce.exact_match: pass_at_3 needs at least 3 repeats, not 2",
        ),
        (
            "generation: {temperature: 0.7, repeats: 2, reduce: {exact_match: median}}",
            "generation.reduce.exact_match: String should match pattern",
        ),
    ],
)
def test_bad_generation_settings_are_one_located_line(tmp_path: Path, generation: str, expected: str) -> None:
    with pytest.raises(EvalSetError) as info:
        load_evalset(chat_set(tmp_path / "set", generation + "\n", data=DATA[:2], task="generate"))
    (problem,) = info.value.problems
    assert problem.location.startswith(str(tmp_path / "set" / "evalset.yaml"))
    assert expected in problem.message


def test_the_command_line_exits_2_with_one_line_for_chat_on_a_model_without_a_template(
    chat_models: ChatModels, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from monitor.cli import app

    es = chat_set(tmp_path / "set")
    result = CliRunner().invoke(app, ["eval", "--model", str(chat_models.plain), "--evalset", str(es)])
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {es / 'evalset.yaml'}: format: chat, but the model has no chat template")


def test_show_prompts_and_the_results_file_record_the_exact_prompt(
    chat_models: ChatModels, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from monitor.cli import app

    es = chat_set(tmp_path / "set")
    out = tmp_path / "results.jsonl"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--model",
            str(chat_models.chatml),
            "--evalset",
            str(es),
            "--show-prompts",
            "1",
            "--output",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    first = lines[0]["prompt"]
    assert first.startswith("<|endoftext|><|im_start|>system\nYou route support tickets. Ticket id a.")
    assert first in result.stderr and lines[1]["prompt"] not in result.stderr
    assert lines[2]["messages"][-1] == {"role": "user", "content": "my password reset fails"}


def test_sampling_with_a_seed_reproduces_whatever_the_batch(backends: dict[str, HFBackend]) -> None:
    backend = backends["chatml"]
    prompt = "<|im_start|>user\nTicket: my parcel never arrived<|im_end|>\n<|im_start|>assistant\n"
    seeded = [GenerationRequest(prompt, 12, (), Sampling(1.0, 0.95, 50, seed)) for seed in (1, 2, 3, 4)]
    alone = [backend.generate([r])[0].text for r in seeded]
    together = [out.text for out in backend.generate([*seeded, GenerationRequest("Ticket:", 5)])[:4]]
    assert alone == together == [backend.generate([r])[0].text for r in seeded]
    assert len(set(alone)) > 1  # different seeds, different samples (a random tiny model is far from peaked)
    greedy = backend.generate([GenerationRequest(prompt, 12)])[0].text
    assert greedy == backend.generate([GenerationRequest(prompt, 12, (), Sampling(0.0, 0.5, 3, 9))])[0].text


def test_repeats_keep_every_sample_and_reduce_by_metric(
    backends: dict[str, HFBackend], tmp_path: Path
) -> None:
    es = load_evalset(
        chat_set(
            tmp_path / "set",
            "metrics: [exact_match, contains, token_f1]\nmax_new_tokens: 4\n"
            "generation: {temperature: 1.0, seed: 7, repeats: 4, reduce: {exact_match: pass_at_2, contains: majority}}\n",
            data=DATA[:2],
            task="generate",
        )
    )
    first = evaluate(backends["chatml"], es)
    again = evaluate(backends["chatml"], es)
    assert [r.samples for r in first.results] == [r.samples for r in again.results]
    for result in first.results:
        assert result.samples is not None and len(result.samples) == 4
        passed = sum(s["scores"]["exact_match"] for s in result.samples)
        assert result.scores["exact_match"] == pytest.approx(pass_at_k(4, int(passed), 2))
        assert result.scores["token_f1"] == pytest.approx(
            sum(s["scores"]["token_f1"] for s in result.samples) / 4
        )
        assert result.completion_tokens == sum(s["completion_tokens"] for s in result.samples)


def test_pass_at_k_and_the_reducers_against_hand_computed_values() -> None:
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # 1 - C(7,5)/C(10,5)
    assert pass_at_k(3, 0, 2) == 0.0 and pass_at_k(3, 2, 2) == 1.0  # fewer wrong samples than k: sure to pass
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)
    samples = [
        ItemScore("Billing", {"exact_match": 1.0, "token_f1": 1.0}),
        ItemScore("billing.", {"exact_match": 1.0, "token_f1": 1.0}),
        ItemScore("account", {"exact_match": 0.0, "token_f1": 0.0}),
        ItemScore("tech", {"exact_match": 0.0, "token_f1": 0.5}),
    ]
    reduced = reduce_samples(samples, ["exact_match", "token_f1"], {"exact_match": "majority"}, 4)
    assert reduced.prediction == "Billing"  # "billing" twice after normalisation: the majority answer
    assert reduced.scores == {"exact_match": 1.0, "token_f1": pytest.approx(2.5 / 4)}
    assert (
        reduce_samples(samples, ["exact_match"], {"exact_match": "pass_at_k"}, 4).scores["exact_match"] == 1.0
    )
    assert math.isclose(
        reduce_samples(samples, ["exact_match"], {"exact_match": "pass_at_1"}, 4).scores["exact_match"], 0.5
    )


def test_a_template_change_is_said_in_one_phrase() -> None:
    from monitor.evals.evalset import chat_template_change

    old = {"chat_template_sha256": "sha256:" + "a" * 64, "prompt": "p"}
    new = {"chat_template_sha256": "sha256:" + "b" * 64, "prompt": "p"}
    assert chat_template_change(old, new) == f"chat template changed: sha256:{'a' * 12} -> sha256:{'b' * 12}"
    assert chat_template_change(old, dict(old)) is None
    assert chat_template_change({"prompt": "p"}, {"prompt": "p"}) is None  # two text runs
    assert chat_template_change({}, new) == f"chat template changed: none -> sha256:{'b' * 12}"


def test_chat_only_settings_outside_a_chat_set_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "text"
    root.mkdir()
    (root / "evalset.yaml").write_text("name: t\ntask: generate\nprompt: 'Q: {input}'\nsystem: 'be brief'\n")
    (root / "data.jsonl").write_text('{"id": 1, "input": "x", "target": "y"}\n')
    with pytest.raises(EvalSetError, match="system: a system prompt needs format: chat"):
        load_evalset(root)
    (root / "evalset.yaml").write_text("name: t\ntask: generate\nprompt: 'Q: {input}'\n")
    (root / "data.jsonl").write_text(
        '{"id": 1, "messages": [{"role": "user", "content": "x"}], "target": "y"}\n'
    )
    with pytest.raises(EvalSetError) as info:
        load_evalset(root)
    assert [str(p) for p in info.value.problems] == [
        f"{root / 'data.jsonl'}:1: messages: an item conversation needs format: chat in evalset.yaml"
    ]
    with pytest.raises(EvalSetError, match="multiple choice is scored by log-likelihood"):
        load_evalset(chat_set(tmp_path / "mc", "generation: {temperature: 0.5}\n"))
    chat_without_prompt = chat_set(tmp_path / "np", data=[DATA[0]])
    spec = (chat_without_prompt / "evalset.yaml").read_text().replace("prompt: 'Ticket: {input}'\n", "")
    (chat_without_prompt / "evalset.yaml").write_text(spec.replace("fewshot: {k: 2, pool: pool.jsonl}\n", ""))
    with pytest.raises(EvalSetError) as info:
        load_evalset(chat_without_prompt)
    assert [str(p) for p in info.value.problems] == [
        f"{chat_without_prompt / 'data.jsonl'}:1: no prompt in evalset.yaml and no 'messages' in this item"
    ]


def test_a_recorded_run_keeps_the_exact_prompt_and_every_sample_in_the_store(
    backends: dict[str, HFBackend], chat_models: ChatModels, tmp_path: Path
) -> None:
    """What ``monitor eval --output`` writes per item is in the database too, for every recorded run."""
    from monitor.service.plan import RunPlan
    from monitor.service.pool import ModelPool
    from monitor.service.runs import execute_run
    from monitor.store import Store

    es = load_evalset(
        chat_set(
            tmp_path / "set",
            "metrics: [exact_match]\nmax_new_tokens: 4\ngeneration: {temperature: 1.0, seed: 3, repeats: 2}\n",
            task="generate",
        )
    )
    backend = backends["chatml"]
    plan = RunPlan("chat", ModelSpec("hf", str(chat_models.chatml)), es, 2)
    with Store.open(f"sqlite:///{tmp_path / 'monitor.db'}") as store:
        run = execute_run(store, ModelPool(loader=lambda spec: backend), plan)  # type: ignore[arg-type,return-value]
        assert run.id is not None and run.status == "succeeded", run.error
        details = store.item_details(run.id)
        stored = {r.item_id: r for r in store.item_results(run.id)}
    for index, item in enumerate(DATA):
        expected = tokenizer_render(chat_models.chatml, expected_conversation(es, index, 2, True, False))
        assert details[item["id"]]["prompt"] == expected
        samples = details[item["id"]]["samples"]
        assert len(samples) == 2 and stored[item["id"]].prediction in {s["prediction"] for s in samples}
    assert details["c"]["messages"][-1] == {"role": "user", "content": "my password reset fails"}
