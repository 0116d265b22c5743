"""The hf backend on real tiny models: agreement with lm-evaluation-harness, packing, generation, load errors."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import torch

from monitor.backends.base import Backend, GenerationRequest, LoglikelihoodRequest
from monitor.backends.fingerprint import fingerprint_model
from monitor.backends.hf.backend import HFBackend, resolve_device, resolve_dtype
from monitor.backends.hf.packing import ScoredSequence, build_tree, make_batch, pack_rows
from monitor.errors import AdapterMismatchError, BackendError, ModelLoadError
from tests.conftest import TICKET_TEXTS, TinyModels

CHOICES = (" billing", " technical", " account", " shipping", " shipping and billing")
FEWSHOT = "\n\n".join(TICKET_TEXTS[:5]) + "\n\n"
QUESTIONS = (
    "Ticket: the app crashes when I open settings\nCategory:",
    "Ticket: please refund the last invoice\nCategory:",
    "Ticket: my parcel never arrived and I want my money back\nCategory:",
)


def mc_requests(prefix: str = "") -> list[LoglikelihoodRequest]:
    return [LoglikelihoodRequest(prefix + q, CHOICES) for q in QUESTIONS]


def edge_requests() -> list[LoglikelihoodRequest]:
    """Trailing whitespace (moved onto the continuation), empty context, odd continuations."""
    return [
        LoglikelihoodRequest("Ticket: how do I change the email \nCategory: ", ("account", "billing")),
        LoglikelihoodRequest("Ticket: refund please\nCategory:\n", ("billing", " billing\n")),
        LoglikelihoodRequest("", (" billing", "Ticket: my parcel", "<|endoftext|>Ticket")),
        LoglikelihoodRequest("<|endoftext|>Ticket: password reset\nCategory:", (" account",)),
    ]


def flatten(results: Sequence) -> list[tuple[float, bool]]:
    return [(ll, g) for r in results for ll, g in zip(r.loglikelihoods, r.is_greedy, strict=True)]


def lm_eval_loglikelihood(
    pretrained: Path, peft: Path | None, requests: Sequence[LoglikelihoodRequest]
) -> list[tuple[float, bool]]:
    """lm-evaluation-harness's HFLM scores for the same requests, in request order."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(pretrained), peft=str(peft) if peft else None, batch_size=4, device="cpu")
    instances = [
        Instance("loglikelihood", {}, (r.context, c), i)
        for i, r in enumerate(requests)
        for c in r.continuations
    ]
    return [(float(ll), bool(g)) for ll, g in lm.loglikelihood(instances, disable_tqdm=True)]


def assert_same_scores(mine: list[tuple[float, bool]], reference: list[tuple[float, bool]]) -> None:
    assert len(mine) == len(reference)
    worst = max(abs(a[0] - b[0]) for a, b in zip(mine, reference, strict=True))
    assert worst < 1e-4, f"log-likelihoods differ by up to {worst}"
    assert [g for _, g in mine] == [g for _, g in reference]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads; on a busy machine waiting threads cost 10-50x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def gpt2(tiny_models: TinyModels) -> Iterator[HFBackend]:
    backend = HFBackend.load(str(tiny_models.gpt2), device="cpu")
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def greedy_continuations(gpt2: HFBackend) -> list[LoglikelihoodRequest]:
    """Requests whose continuation is the model's own greedy output, so that is_greedy can be True."""
    prompts = [FEWSHOT + QUESTIONS[0], QUESTIONS[1]]
    outs = gpt2.generate([GenerationRequest(p, max_new_tokens=3) for p in prompts])
    return [LoglikelihoodRequest(p, (o.text, " billing")) for p, o in zip(prompts, outs, strict=True)]


# ---------------------------------------------------------------------- agreement with lm-eval


@pytest.mark.parametrize(("base", "adapter"), [("gpt2", None), ("llama", None), ("gpt2", "lora")])
def test_loglikelihoods_match_lm_eval(
    tiny_models: TinyModels,
    greedy_continuations: list[LoglikelihoodRequest],
    base: str,
    adapter: str | None,
) -> None:
    base_dir = getattr(tiny_models, base)
    adapter_dir = getattr(tiny_models, adapter) if adapter else None
    requests = mc_requests() + mc_requests(FEWSHOT) + edge_requests() + greedy_continuations
    backend = HFBackend.load(str(base_dir), str(adapter_dir) if adapter_dir else None, device="cpu")
    try:
        assert backend.describe()["packing"] == "enabled"
        mine = flatten(backend.loglikelihood(requests))
    finally:
        backend.close()
    reference = lm_eval_loglikelihood(base_dir, adapter_dir, requests)
    assert_same_scores(mine, reference)
    if base == "gpt2" and adapter is None:  # the argmax check above compared some True flags
        assert any(g for _, g in reference)


def test_left_truncation_matches_lm_eval(tiny_models: TinyModels, gpt2: HFBackend) -> None:
    long_context = "\n\n".join(TICKET_TEXTS[:60]) + "\n\nTicket: my parcel is late\nCategory:"
    assert gpt2.count_tokens(long_context) > 512  # the tiny models' n_positions
    requests = [LoglikelihoodRequest(long_context, CHOICES), *mc_requests()]
    mine = gpt2.loglikelihood(requests)
    assert_same_scores(flatten(mine), lm_eval_loglikelihood(tiny_models.gpt2, None, requests))
    assert mine[0].context_tokens == 512


def test_continuation_longer_than_the_model_is_a_backend_error(gpt2: HFBackend) -> None:
    too_long = " " + " ".join(TICKET_TEXTS[:60])
    with pytest.raises(BackendError, match="exceeds the model's length of 512"):
        gpt2.loglikelihood([LoglikelihoodRequest("Ticket:", (too_long,))])


def test_adapter_changes_the_scores(tiny_models: TinyModels, gpt2: HFBackend) -> None:
    adapted = HFBackend.load(str(tiny_models.gpt2), str(tiny_models.lora), device="cpu")
    plain = flatten(gpt2.loglikelihood(mc_requests()))
    with_lora = flatten(adapted.loglikelihood(mc_requests()))
    assert max(abs(a[0] - b[0]) for a, b in zip(plain, with_lora, strict=True)) > 1e-2


def test_merged_and_unmerged_adapter_agree(tiny_models: TinyModels) -> None:
    requests = mc_requests(FEWSHOT)
    merged = HFBackend.load(str(tiny_models.gpt2), str(tiny_models.lora), device="cpu", merge_adapter=True)
    unmerged = HFBackend.load(str(tiny_models.gpt2), str(tiny_models.lora), device="cpu", merge_adapter=False)
    assert merged.describe()["adapter_merged"] is True and unmerged.describe()["adapter_merged"] is False
    assert_same_scores(flatten(merged.loglikelihood(requests)), flatten(unmerged.loglikelihood(requests)))


# ---------------------------------------------------------------------- exact values, packing


def test_matches_a_hand_computed_forward_pass(tiny_models: TinyModels, gpt2: HFBackend) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models.gpt2)
    model = AutoModelForCausalLM.from_pretrained(tiny_models.gpt2).eval()
    context, continuation = "Ticket: my parcel never arrived\nCategory:", " shipping"
    ctx = tokenizer.encode(context)
    whole = tokenizer.encode(context + continuation)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0], dim=-1)
    expected = sum(logprobs[i - 1, whole[i]].item() for i in range(len(ctx), len(whole)))
    greedy = all(logprobs[i - 1].argmax().item() == whole[i] for i in range(len(ctx), len(whole)))

    [result] = gpt2.loglikelihood([LoglikelihoodRequest(context, (continuation,))])
    assert result.loglikelihoods[0] == pytest.approx(expected, abs=1e-5)
    assert result.is_greedy == (greedy,)
    assert result.context_tokens == len(ctx)
    assert result.continuation_tokens == (len(whole) - len(ctx),)


def test_gelu_new_runs_as_the_fused_kernel(gpt2: HFBackend) -> None:
    from transformers.activations import GELUTanh, NewGELUActivation

    kinds = {type(m) for m in gpt2._model.modules()}
    assert GELUTanh in kinds and NewGELUActivation not in kinds
    # The scores still match the model as transformers builds it: test_matches_a_hand_computed_forward_pass.


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_tokenisation_matches_the_tokenizer_call(tiny_models: TinyModels, arch: str) -> None:
    backend = HFBackend.load(str(getattr(tiny_models, arch)), device="cpu")
    texts = [FEWSHOT + q + c for q in QUESTIONS for c in CHOICES]
    texts += [
        "",
        " ",
        "Ticket:  two  spaces \n\n",
        "<|endoftext|>Ticket",
        "caf\u00e9 \U0001f600",
        "billing " * 300,
    ]
    try:
        for special in (True, False):
            expected = [
                list(ids) for ids in backend._tokenizer(texts, add_special_tokens=special)["input_ids"]
            ]
            assert backend._tokenize(texts, special) == expected
            assert backend._tokenize(texts[:1], special) == expected[:1]
    finally:
        backend.close()


def test_packed_and_unpacked_paths_agree(tiny_models: TinyModels, gpt2: HFBackend) -> None:
    requests = mc_requests(FEWSHOT) + mc_requests() + edge_requests()
    plain = HFBackend.load(str(tiny_models.gpt2), device="cpu", packed=False)
    assert plain.describe()["packing"] == "disabled by the caller"
    assert gpt2.describe()["packing"] == "enabled"
    assert_same_scores(flatten(gpt2.loglikelihood(requests)), flatten(plain.loglikelihood(requests)))


def test_packing_computes_each_unique_token_once(tiny_models: TinyModels) -> None:
    requests = mc_requests(FEWSHOT)
    packed = HFBackend.load(str(tiny_models.gpt2), device="cpu")
    plain = HFBackend.load(str(tiny_models.gpt2), device="cpu", packed=False)
    packed.loglikelihood(requests)
    plain.loglikelihood(requests)
    # 3 items x 5 choices: the plain path repeats the few-shot prefix 15 times.
    assert packed.tokens_run * 5 < plain.tokens_run


def test_shared_prefix_is_cached_across_calls_and_never_modified(tiny_models: TinyModels) -> None:
    backend = HFBackend.load(str(tiny_models.gpt2), device="cpu", batch_tokens=64)
    requests = mc_requests(FEWSHOT)
    whole_call = flatten(backend.loglikelihood(requests))
    first_cost = backend.tokens_run
    # The runner calls in chunks: later chunks share a shorter or longer prefix with the cached one.
    chunked = [flatten(backend.loglikelihood([r])) for r in requests]
    assert_same_scores([s for chunk in chunked for s in chunk], whole_call)
    again = flatten(backend.loglikelihood(requests))
    assert again == whole_call  # bit-identical: the cached prefix was not touched
    backend.tokens_run = 0
    backend.loglikelihood(requests)
    assert backend.tokens_run < first_cost / 2  # the few-shot prefix was not run again


def test_small_batches_give_the_same_scores(tiny_models: TinyModels, gpt2: HFBackend) -> None:
    requests = mc_requests(FEWSHOT) + mc_requests()
    tight = HFBackend.load(str(tiny_models.gpt2), device="cpu", batch_tokens=16)
    assert_same_scores(flatten(tight.loglikelihood(requests)), flatten(gpt2.loglikelihood(requests)))


def test_trailing_whitespace_moves_onto_the_continuation(gpt2: HFBackend) -> None:
    moved, explicit = gpt2.loglikelihood(
        [
            LoglikelihoodRequest("Ticket: refund please\nCategory: ", ("billing",)),
            LoglikelihoodRequest("Ticket: refund please\nCategory:", (" billing",)),
        ]
    )
    assert moved.loglikelihoods == pytest.approx(explicit.loglikelihoods, abs=1e-6)
    assert moved.continuation_tokens == explicit.continuation_tokens


def test_empty_context_and_empty_continuation(gpt2: HFBackend) -> None:
    from_empty, with_eot = gpt2.loglikelihood(
        [
            LoglikelihoodRequest("", (" billing",)),
            LoglikelihoodRequest("<|endoftext|>", (" billing",)),
        ]
    )
    # An empty context is conditioned on the end-of-text token.
    assert from_empty.loglikelihoods == pytest.approx(with_eot.loglikelihoods, abs=1e-6)
    [nothing] = gpt2.loglikelihood([LoglikelihoodRequest("Ticket:", ("", " billing"))])
    assert nothing.loglikelihoods[0] == 0.0 and nothing.is_greedy[0] is True
    assert nothing.continuation_tokens[0] == 0 and nothing.loglikelihoods[1] < 0


def test_progress_counts_every_request_once(gpt2: HFBackend, tiny_models: TinyModels) -> None:
    requests = [*mc_requests(FEWSHOT), LoglikelihoodRequest("Ticket:", ("",)), *edge_requests()]
    for backend in (gpt2, HFBackend.load(str(tiny_models.gpt2), device="cpu", packed=False, batch_tokens=32)):
        seen: list[int] = []
        backend.loglikelihood(requests, progress=seen.append)
        assert sum(seen) == len(requests) and all(n > 0 for n in seen)


# ---------------------------------------------------------------------- the tree layout


def test_tree_shares_common_tokens_and_masks_to_ancestors() -> None:
    sequences = [
        (0, ScoredSequence((1, 2, 3, 4, 5, 6), 4)),
        (1, ScoredSequence((1, 2, 3, 4, 5, 7, 8), 4)),
        (2, ScoredSequence((1, 2, 3, 4, 9, 8), 4)),
    ]
    tree = build_tree(sequences, prefix_len=2)
    # Inputs after the prefix: (3,4,5), (3,4,5,7), (3,4,9) -> nodes 3,4,5,7,9.
    assert tree.tokens == [3, 4, 5, 7, 9]
    assert tree.positions == [2, 3, 4, 5, 4]
    assert sorted(zip(tree.score_sequences, tree.score_targets, strict=True)) == [
        (0, 5),
        (0, 6),
        (1, 5),
        (1, 7),
        (1, 8),
        (2, 8),
        (2, 9),
    ]
    [row] = pack_rows([tree], row_tokens=16)
    batch = make_batch([row], prefix_len=2, pad_id=0, dtype=torch.float32, device=torch.device("cpu"))
    allowed = (batch.attention_mask[0, 0] == 0).int().tolist()
    parents = {0: None, 1: 0, 2: 1, 3: 2, 4: 1}
    for i in range(5):
        ancestors, node = {i}, parents[i]
        while node is not None:
            ancestors.add(node)
            node = parents[node]
        assert allowed[i] == [1, 1] + [int(j in ancestors) for j in range(5)]


def test_rows_pack_trees_without_exceeding_the_budget() -> None:
    trees = [
        build_tree([(i, ScoredSequence(tuple(range(n + 2)), 2))], 0) for i, n in enumerate([5, 3, 4, 2, 6])
    ]
    rows = pack_rows(trees, row_tokens=8)
    assert sorted(len(t) for r in rows for t in r.trees) == sorted(len(t) for t in trees)
    # Sizes 7, 6, 5, 4, 3 into rows of 8: 7 | 6 | 5 + 3 | 4.
    assert all(r.length <= 8 for r in rows) and len(rows) == 4


# ---------------------------------------------------------------------- generation


@pytest.fixture(scope="module")
def greedy_reference(tiny_models: TinyModels) -> Callable[[str, int], list[int]]:
    """Greedy decoding of the tiny GPT-2 by full forward passes: no cache, no batching."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models.gpt2)
    model = AutoModelForCausalLM.from_pretrained(tiny_models.gpt2).eval()

    def decode(prompt: str, steps: int) -> list[int]:
        ids = tokenizer.encode(prompt)
        out: list[int] = []
        with torch.no_grad():
            for _ in range(steps):
                token = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
                out.append(token)
                if token == tokenizer.eos_token_id:
                    break
        return out

    return decode


@pytest.mark.parametrize(
    "prompts",
    [
        [FEWSHOT + QUESTIONS[0], QUESTIONS[1], "Ticket:"],
        [FEWSHOT + q for q in QUESTIONS],  # a shared few-shot prefix, served from the prefix cache
    ],
)
def test_generation_is_greedy_and_batch_independent(
    gpt2: HFBackend, greedy_reference: Callable[[str, int], list[int]], prompts: list[str]
) -> None:
    budgets = [6, 2, 4]  # rows leave the batch at different steps
    batched = gpt2.generate(
        [GenerationRequest(p, max_new_tokens=k) for p, k in zip(prompts, budgets, strict=True)]
    )
    for prompt, steps, result in zip(prompts, budgets, batched, strict=True):
        [alone] = gpt2.generate([GenerationRequest(prompt, max_new_tokens=steps)])
        assert alone == result
        expected = greedy_reference(prompt, steps)
        assert result.completion_tokens == len(expected)
        assert result.text == gpt2._tokenizer.decode(expected, skip_special_tokens=True)
        assert result.prompt_tokens == gpt2.count_tokens(prompt)


def test_generation_stops_at_stop_sequences(gpt2: HFBackend) -> None:
    prompt = QUESTIONS[2]
    [free] = gpt2.generate([GenerationRequest(prompt, max_new_tokens=12)])
    assert free.completion_tokens == 12 and len(free.text) > 4
    stop = free.text[len(free.text) // 2 : len(free.text) // 2 + 2]
    [stopped] = gpt2.generate([GenerationRequest(prompt, max_new_tokens=12, stop=(stop, "never seen"))])
    assert stopped.text == free.text[: free.text.index(stop)]
    assert stopped.completion_tokens < 12
    [none] = gpt2.generate([GenerationRequest(prompt, max_new_tokens=0)])
    assert (none.text, none.completion_tokens) == ("", 0)


# ---------------------------------------------------------------------- loading and errors


@pytest.fixture(scope="module")
def mismatched_bases(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from monitor.demo.models import build_base_model

    root = tmp_path_factory.mktemp("mismatched")
    return {
        "wide": build_base_model(root / "wide", tokenizer_dir=tiny_models.tokenizer, seed=5, n_embd=96),
        "short_llama": build_base_model(
            root / "short-llama", tokenizer_dir=tiny_models.tokenizer, seed=6, arch="llama", n_layer=1
        ),
    }


def test_adapter_with_other_shapes_is_a_mismatch(tiny_models: TinyModels, mismatched_bases: dict) -> None:
    with pytest.raises(AdapterMismatchError) as error:
        HFBackend.load(str(mismatched_bases["wide"]), str(tiny_models.lora), device="cpu")
    message = str(error.value)
    assert str(tiny_models.lora) in message and str(mismatched_bases["wide"]) in message
    assert "lora_A of transformer.h.0.attn.c_attn expects shape (4, 96), adapter has (4, 64)" in message
    assert "\n" not in message


def test_adapter_for_fewer_layers_is_a_mismatch(tiny_models: TinyModels) -> None:
    # Two adapted layers on a three-layer base would leave layer 2 un-adapted.
    with pytest.raises(
        AdapterMismatchError, match=r"no weights for lora_A of transformer\.h\.2\.attn\.c_attn"
    ):
        HFBackend.load(str(tiny_models.gpt2_other), str(tiny_models.lora), device="cpu")


def test_adapter_for_more_layers_is_a_mismatch(tiny_models: TinyModels, mismatched_bases: dict) -> None:
    with pytest.raises(
        AdapterMismatchError, match=r"model\.layers\.1\.self_attn\.q_proj.*which the base lacks"
    ):
        HFBackend.load(str(mismatched_bases["short_llama"]), str(tiny_models.llama_lora), device="cpu")


def test_adapter_for_other_modules_is_a_mismatch(tiny_models: TinyModels) -> None:
    with pytest.raises(AdapterMismatchError, match=str(tiny_models.llama_lora)):
        HFBackend.load(str(tiny_models.gpt2), str(tiny_models.llama_lora), device="cpu")


def test_unloadable_models_are_load_errors(tiny_models: TinyModels, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_models.gpt2, corrupt)
    (corrupt / "config.json").write_text("{not json")
    bad_adapter = tmp_path / "bad-adapter"
    shutil.copytree(tiny_models.lora, bad_adapter)
    (bad_adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "NOT_A_TUNER"}))
    (tmp_path / "empty").mkdir()
    cases = [
        ((str(tmp_path / "missing"), None), "does not exist"),
        ((str(tmp_path / "empty"), None), "has no config.json"),
        ((str(corrupt), None), "cannot load the config"),
        ((str(tiny_models.gpt2), str(tmp_path / "no-adapter")), "does not exist"),
        ((str(tiny_models.gpt2), str(tiny_models.gpt2)), "has no adapter_config.json"),
        ((str(tiny_models.gpt2), str(bad_adapter)), "cannot read the adapter config"),
    ]
    for (base, adapter), reason in cases:
        with pytest.raises(ModelLoadError) as error:
            HFBackend.load(base, adapter, device="cpu")
        assert not isinstance(error.value, AdapterMismatchError)
        assert reason in str(error.value) and (adapter or base) in str(error.value)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("auto", torch.float32),
        ("float32", torch.float32),
        ("bf16", torch.bfloat16),
        ("torch.float16", torch.float16),
    ],
)
def test_dtype_names(spec: str, expected: torch.dtype) -> None:
    assert resolve_dtype(spec, torch.device("cpu")) == expected


def test_device_and_dtype_errors() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ModelLoadError, match="unknown dtype 'float13'"):
        resolve_dtype("float13", torch.device("cpu"))
    with pytest.raises(ModelLoadError, match="unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            resolve_device("cuda:1")


def test_bfloat16_override(tiny_models: TinyModels, gpt2: HFBackend) -> None:
    half = HFBackend.load(str(tiny_models.gpt2), str(tiny_models.lora), device="cpu", dtype="bfloat16")
    facts = half.describe()
    assert (facts["dtype"], facts["device"], facts["adapter_merged"]) == ("bfloat16", "cpu", False)
    exact = HFBackend.load(str(tiny_models.gpt2), str(tiny_models.lora), device="cpu")
    low, high = flatten(half.loglikelihood(mc_requests())), flatten(exact.loglikelihood(mc_requests()))
    assert max(abs(a[0] - b[0]) for a, b in zip(low, high, strict=True)) < 0.2


# ---------------------------------------------------------------------- the rest of the protocol


def test_default_batch_tokens_grow_only_for_small_models_on_cpu() -> None:
    from transformers import GPT2Config, LlamaConfig

    from monitor.backends.hf.backend import _default_batch_tokens

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    tiny = GPT2Config(vocab_size=2000, n_layer=4, n_embd=256)
    assert _default_batch_tokens(cpu, tiny, None) == 8192
    assert _default_batch_tokens(cpu, GPT2Config(), None) == 2048  # GPT-2 small: 50k vocabulary
    assert _default_batch_tokens(cpu, LlamaConfig(vocab_size=128256), None) == 2048
    assert 2048 < _default_batch_tokens(cpu, GPT2Config(vocab_size=20000, n_layer=4, n_embd=256), None) < 8192
    assert _default_batch_tokens(cuda, tiny, None) == 16384


def test_describe_count_fingerprint_close(
    tiny_models: TinyModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MONITOR_CACHE_DIR", str(tmp_path))
    backend = HFBackend.load(str(tiny_models.gpt2), str(tiny_models.lora), device="cpu")
    assert isinstance(backend, Backend)
    facts = backend.describe()
    assert facts["attn_implementation"] in ("sdpa", "eager")
    assert {"device", "dtype", "torch", "transformers", "peft", "adapter_merged"} <= set(facts)
    assert backend.count_tokens("Ticket: my parcel") == len(backend._tokenizer.encode("Ticket: my parcel"))
    served = backend.fingerprint()
    weights = fingerprint_model(tiny_models.gpt2, tiny_models.lora)
    assert (served.digest, served.files) == (weights.digest, weights.files)
    # The stack beside the weights: tokenizer files and special tokens, kept out of the weights' digest.
    assert {"stack/tokenizer.json", "stack/tokenizer_config.json", "special/eos_token"} <= set(served.stack)
    assert served.stack_digest is not None and served.stack_digest != served.digest
    backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend.loglikelihood(mc_requests())
