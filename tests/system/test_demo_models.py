"""The demo's data generator, eval sets and model build: determinism, caching, drift, quality.

The fast tests build the real pipeline with :data:`TINY_RECIPE` (every stage,
a few training steps each) and a small recipe that trains just enough for the
fine-tune to route clearly better than its base.  The ``slow`` tests build the
full demo recipe (about two minutes on two cores, cached under
``.cache/test-demo-models`` or ``$MONITOR_TEST_DEMO_CACHE``) and check the
accuracies the demo's story relies on.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import torch

from monitor.demo import data
from monitor.demo.build import (
    FULL_RECIPE,
    TINY_RECIPE,
    DemoModels,
    DemoRecipe,
    build_demo_models,
    read_manifest,
    recipe_digest,
)
from monitor.demo.models import weights_digest

REPO = Path(__file__).resolve().parents[2]
EVALS = REPO / "evals"

#: Enough training for the fine-tune to learn routing, still only seconds.
SMALL_RECIPE = replace(
    TINY_RECIPE,
    name="small",
    vocab_size=1024,
    v1_generic_docs=5000,
    v1_training=replace(TINY_RECIPE.v1_training, steps=150, batch_size=16, seq_len=64, lr=5e-3),
    lora_tickets=1200,
    lora_training=replace(TINY_RECIPE.lora_training, steps=300, batch_size=16, lr=5e-3, warmup_steps=10),
    lora_routing_every=1,
)


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run toy models on one thread: their matrices are too small to gain from more."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_model(base: Path, adapter: Path | None = None) -> Any:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    return model.eval()


@torch.no_grad()
def mc_accuracy(
    model: Any,
    tokenizer: Any,
    items: Sequence[dict[str, Any]],
    *,
    shots: Sequence[dict[str, Any]] = (),
    batch_size: int = 50,
) -> float:
    """Multiple-choice accuracy: the choice with the highest summed log-prob of ``" " + choice``.

    A deliberately plain reimplementation (the project's scorer lives elsewhere):
    context and continuation are tokenised separately, as the scorer does.
    """
    prefix = "".join(data.ROUTING_PROMPT.format(input=s["input"]) + " " + s["target"] + "\n\n" for s in shots)
    choices = [tokenizer(" " + c, add_special_tokens=False)["input_ids"] for c in data.CATEGORIES]
    rows = []
    for item in items:
        context = tokenizer(
            prefix + data.ROUTING_PROMPT.format(input=item["input"]), add_special_tokens=False
        )
        rows.extend((context["input_ids"], choice) for choice in choices)
    scores: list[float] = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        width = max(len(c) + len(x) for c, x in batch)
        ids = torch.full((len(batch), width), tokenizer.eos_token_id)
        for i, (c, x) in enumerate(batch):
            ids[i, : len(c) + len(x)] = torch.tensor(c + x)
        logprobs = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)
        token_lp = torch.gather(logprobs[:, :-1], 2, ids[:, 1:, None])[..., 0]
        scores.extend(
            float(token_lp[i, len(c) - 1 : len(c) + len(x) - 1].sum()) for i, (c, x) in enumerate(batch)
        )
    n = len(data.CATEGORIES)
    correct = 0
    for k, item in enumerate(items):
        item_scores = scores[k * n : (k + 1) * n]
        correct += data.CATEGORIES[item_scores.index(max(item_scores))] == item["target"]
    return correct / len(items)


@torch.no_grad()
def generate_greedy(
    model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int = 24
) -> list[str]:
    """Greedy completions, cut at the first newline (the triage eval set's stop)."""
    outputs = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.eos_token_id,
        )
        text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        outputs.append(text.split("\n")[0].strip())
    return outputs


def vocabulary(texts: Sequence[str]) -> set[str]:
    return {w for t in texts for w in re.findall(r"[a-z]+", t.lower())}


# --------------------------------------------------------------------------- data generator


def test_tickets_are_deterministic_for_a_seed() -> None:
    assert data.generate_tickets(40, seed=5) == data.generate_tickets(40, seed=5)
    assert data.generate_tickets(40, seed=5, drift=0.7) == data.generate_tickets(40, seed=5, drift=0.7)
    assert data.generate_tickets(40, seed=5) != data.generate_tickets(40, seed=6)
    assert data.generic_corpus(30, seed=1) == data.generic_corpus(30, seed=1)
    assert data.routed_ticket_corpus(5, seed=1) == data.routed_ticket_corpus(5, seed=1)


def test_tickets_cover_every_category_and_priority() -> None:
    tickets = data.generate_tickets(300, seed=1)
    assert {t.category for t in tickets} == set(data.CATEGORIES)
    assert {t.priority for t in tickets} == set(data.PRIORITIES)
    assert len({t.id for t in tickets}) == len(tickets)
    assert len({t.text for t in tickets}) > 0.95 * len(tickets)


def test_drift_shifts_the_distribution_step_by_step() -> None:
    reference = vocabulary([t.text for t in data.generate_tickets(400, seed=1)])
    known, overlap, length, foreign, new_products = [], [], [], [], []
    for drift in (0.0, 0.5, 1.0):
        tickets = data.generate_tickets(400, seed=2, drift=drift)
        words = [w for t in tickets for w in re.findall(r"[a-z]+", t.text.lower())]
        known.append(sum(w in reference for w in words) / len(words))
        overlap.append(len(set(words) & reference) / len(set(words) | reference))
        length.append(sum(len(t.text) for t in tickets) / len(tickets))
        foreign.append(sum(t.language != "en" for t in tickets) / len(tickets))
        new_products.append(sum(t.product_line == "new" for t in tickets) / len(tickets))
    # Same distribution: almost every word is known (typos aside); then fewer at every step.
    assert known[0] > 0.97
    assert known[0] - known[1] > 0.05 and known[1] - known[2] > 0.03
    assert overlap[0] > overlap[1] > overlap[2]
    assert length[0] < length[1] < length[2]
    assert foreign[0] == 0.0 < foreign[1] < foreign[2]
    assert new_products[0] == 0.0 < new_products[1] < new_products[2]


def test_drift_must_be_between_zero_and_one() -> None:
    with pytest.raises(ValueError, match="drift"):
        data.generate_tickets(3, seed=1, drift=1.5)


def test_traffic_is_timestamped_in_utc_and_sorted() -> None:
    start = datetime(2025, 3, 1, 9, 0, tzinfo=timezone(timedelta(hours=2)))
    traffic = data.generate_traffic(50, seed=3, drift=0.4, start=start, span=timedelta(hours=6))
    assert traffic == data.generate_traffic(50, seed=3, drift=0.4, start=start, span=timedelta(hours=6))
    stamps = [r.timestamp for r in traffic]
    assert stamps == sorted(stamps)
    assert all(s.tzinfo == timezone.utc for s in stamps)
    assert start <= stamps[0] and stamps[-1] < start + timedelta(hours=6)
    with pytest.raises(ValueError, match="timezone"):
        data.generate_traffic(1, seed=3, drift=0.0, start=datetime(2025, 3, 1))


def test_refreshed_golden_set_shows_the_shift() -> None:
    items = data.refreshed_golden_set(100, seed=4, drift=1.0)
    assert all(set(item) == {"id", "input", "target"} and item["target"] in data.CATEGORIES for item in items)
    golden = read_jsonl(EVALS / "ticket-routing" / "data.jsonl")
    shifted = vocabulary([i["input"] for i in items]) - vocabulary([i["input"] for i in golden])
    assert len(shifted) > 40
    triage = data.refreshed_golden_set(5, seed=4, task="triage")
    assert set(triage[0]["target"]) == {"category", "priority"}


def test_base_pretraining_text_never_pairs_tickets_with_categories() -> None:
    # v1 must not learn routing from its corpus, or its zero-shot would not be near chance.
    assert not any("Category:" in doc for doc in data.generic_corpus(2000, seed=1))


# --------------------------------------------------------------------------- eval sets


def test_committed_eval_sets_match_their_generator(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_demo_evals", EVALS / "make_demo_evals.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    for name in ("ticket-routing", "ticket-triage"):
        for file in ("evalset.yaml", "data.jsonl", "fewshot.jsonl"):
            assert (tmp_path / name / file).read_text() == (EVALS / name / file).read_text(), f"{name}/{file}"


def test_demo_eval_sets_load_and_their_pools_are_disjoint() -> None:
    from monitor.evals.evalset import load_evalset

    routing = load_evalset(EVALS / "ticket-routing")
    triage = load_evalset(EVALS / "ticket-triage")
    assert 150 <= len(routing.items) <= 200 and len(triage.items) >= 50
    for name in ("ticket-routing", "ticket-triage"):
        items = read_jsonl(EVALS / name / "data.jsonl")
        pool = read_jsonl(EVALS / name / "fewshot.jsonl")
        assert not {i["input"] for i in items} & {i["input"] for i in pool}
        assert not {i["id"] for i in items} & {i["id"] for i in pool}
    # The first five pool items (what a 5-shot prompt uses) show every category once.
    first_five = read_jsonl(EVALS / "ticket-routing" / "fewshot.jsonl")[:5]
    assert sorted(i["target"] for i in first_five) == sorted(data.CATEGORIES)


# --------------------------------------------------------------------------- build and cache


def test_build_writes_loadable_models_and_a_manifest(tiny_demo: DemoModels) -> None:
    from transformers import AutoTokenizer

    assert not tiny_demo.from_cache
    manifest = read_manifest(tiny_demo.root)
    assert manifest["recipe_digest"] == tiny_demo.recipe_digest == recipe_digest(TINY_RECIPE)
    assert set(manifest["build_seconds"]) == {"tokenizer", "base v1", "lora v1", "base v2", "total"}
    for name, path in (
        ("base_v1", tiny_demo.base_v1),
        ("lora_v1", tiny_demo.lora_v1),
        ("base_v2", tiny_demo.base_v2),
    ):
        assert manifest["weights"][name] == weights_digest(path)
    assert (tiny_demo.lora_v1 / "adapter_config.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(tiny_demo.base_v2)
    assert len(tokenizer) == TINY_RECIPE.vocab_size
    model = load_model(tiny_demo.base_v1, tiny_demo.lora_v1)
    assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape[-1] == TINY_RECIPE.vocab_size
    # v2 continues from v1: same shape, different weights.
    assert manifest["weights"]["base_v1"] != manifest["weights"]["base_v2"]


def test_same_recipe_gives_identical_weights(tiny_demo: DemoModels, tmp_path: Path) -> None:
    again = build_demo_models(tmp_path, recipe=TINY_RECIPE)
    assert read_manifest(again.root)["weights"] == read_manifest(tiny_demo.root)["weights"]


def test_second_call_loads_from_cache(tiny_demo: DemoModels, tiny_cache: Path) -> None:
    started = time.perf_counter()
    again = build_demo_models(tiny_cache, recipe=TINY_RECIPE)
    assert again.from_cache and again == replace(tiny_demo, from_cache=True)
    assert time.perf_counter() - started < 1.0


def test_changed_recipe_builds_anew(tiny_demo: DemoModels, tiny_cache: Path) -> None:
    changed: DemoRecipe = replace(TINY_RECIPE, lora_r=4)
    assert recipe_digest(changed) != recipe_digest(TINY_RECIPE)
    other = build_demo_models(tiny_cache, recipe=changed)
    assert not other.from_cache and other.root != tiny_demo.root
    before, after = read_manifest(tiny_demo.root)["weights"], read_manifest(other.root)["weights"]
    assert before["base_v1"] == after["base_v1"] and before["lora_v1"] != after["lora_v1"]
    # The first build is still there, untouched.
    assert build_demo_models(tiny_cache, recipe=TINY_RECIPE).from_cache


def test_killed_build_leftovers_are_ignored(tmp_path: Path) -> None:
    digest = recipe_digest(TINY_RECIPE)
    # A build killed half-way leaves its temporary directory; a partial copy has no manifest.
    leftover = tmp_path / f".tmp-demo-models-{digest}-4242-deadbeef"
    (leftover / "base-v1").mkdir(parents=True)
    (leftover / "base-v1" / "model.safetensors").write_bytes(b"half")
    stale = tmp_path / f".tmp-demo-models-{digest}-4243-cafecafe"
    stale.mkdir()
    os.utime(stale, (time.time() - 3 * 24 * 3600,) * 2)
    partial = tmp_path / f"demo-models-{digest}"
    (partial / "tokenizer").mkdir(parents=True)

    lines: list[str] = []
    models = build_demo_models(tmp_path, recipe=TINY_RECIPE, progress=lines.append)
    assert not models.from_cache and models.root == partial
    # Progress per model, with the time left after each.
    assert "[2/4] building base v1 ..." in lines, lines
    assert any(
        re.fullmatch(r"\[2/4\] built base v1 in \d+ s(; about \d+ s left)?", line) for line in lines
    ), lines
    assert any(re.fullmatch(r"\[4/4\] built base v2 in \d+ s", line) for line in lines), lines
    assert read_manifest(models.root)["recipe_digest"] == digest
    assert leftover.exists()  # young: it may be another process's build in progress
    assert not stale.exists()
    assert not list(tmp_path.glob(f".tmp-demo-models-{digest}-{os.getpid()}-*"))


def test_force_rebuilds_in_place(tiny_demo: DemoModels, tmp_path: Path) -> None:
    first = build_demo_models(tmp_path, recipe=TINY_RECIPE)
    forced = build_demo_models(tmp_path, recipe=TINY_RECIPE, force=True)
    assert not forced.from_cache and forced.root == first.root
    assert read_manifest(forced.root)["weights"] == read_manifest(tiny_demo.root)["weights"]


def test_full_recipe_has_its_own_cache_key() -> None:
    assert recipe_digest(FULL_RECIPE) != recipe_digest(TINY_RECIPE)
    assert recipe_digest(FULL_RECIPE) == recipe_digest(replace(FULL_RECIPE))


# --------------------------------------------------------------------------- quality


def test_fine_tune_routes_clearly_better_than_its_base(tmp_path_factory: pytest.TempPathFactory) -> None:
    from transformers import AutoTokenizer

    models = build_demo_models(tmp_path_factory.mktemp("small"), recipe=SMALL_RECIPE)
    tokenizer = AutoTokenizer.from_pretrained(models.tokenizer)
    items = read_jsonl(EVALS / "ticket-routing" / "data.jsonl")[:100]
    with torch_threads(1):
        base = mc_accuracy(load_model(models.base_v1), tokenizer, items)
        tuned = mc_accuracy(load_model(models.base_v1, models.lora_v1), tokenizer, items)
    assert tuned > base + 0.4, (base, tuned)


@pytest.mark.slow
def test_full_demo_accuracies_tell_the_story(full_demo: DemoModels) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(full_demo.tokenizer)
    items = read_jsonl(EVALS / "ticket-routing" / "data.jsonl")
    shots = read_jsonl(EVALS / "ticket-routing" / "fewshot.jsonl")[:5]
    v1, v2 = load_model(full_demo.base_v1), load_model(full_demo.base_v2)
    acc = {
        "v1 0-shot": mc_accuracy(v1, tokenizer, items),
        "v1 5-shot": mc_accuracy(v1, tokenizer, items, shots=shots),
        "v1+lora 0-shot": mc_accuracy(load_model(full_demo.base_v1, full_demo.lora_v1), tokenizer, items),
        "v2 0-shot": mc_accuracy(v2, tokenizer, items),
        "v2 5-shot": mc_accuracy(v2, tokenizer, items, shots=shots),
    }
    print(acc)
    assert acc["v1+lora 0-shot"] >= 0.85, acc
    assert acc["v1 0-shot"] <= 0.4, acc
    assert acc["v2 0-shot"] > acc["v1 0-shot"] and acc["v2 5-shot"] > acc["v1 5-shot"], acc
    assert acc["v2 5-shot"] >= acc["v2 0-shot"] + 0.15, acc
    assert acc["v2 5-shot"] >= acc["v1+lora 0-shot"] - 0.15, acc


@pytest.mark.slow
def test_full_demo_fine_tune_ages_on_drifted_tickets(full_demo: DemoModels) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(full_demo.tokenizer)
    model = load_model(full_demo.base_v1, full_demo.lora_v1)
    fresh = mc_accuracy(model, tokenizer, data.refreshed_golden_set(120, seed=3001, drift=0.0))
    drifted = mc_accuracy(model, tokenizer, data.refreshed_golden_set(120, seed=3001, drift=1.0))
    assert fresh - drifted > 0.2, (fresh, drifted)


@pytest.mark.slow
def test_full_demo_fine_tune_answers_triage_in_json(full_demo: DemoModels) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(full_demo.tokenizer)
    model = load_model(full_demo.base_v1, full_demo.lora_v1)
    items = read_jsonl(EVALS / "ticket-triage" / "data.jsonl")
    outputs = generate_greedy(model, tokenizer, [data.TRIAGE_PROMPT.format(input=i["input"]) for i in items])
    parsed = []
    for text in outputs:
        try:
            parsed.append(json.loads(text))
        except ValueError:
            parsed.append(None)
    valid = sum(isinstance(p, dict) for p in parsed) / len(items)
    category = sum(
        isinstance(p, dict) and p.get("category") == i["target"]["category"]
        for p, i in zip(parsed, items, strict=True)
    )
    exact = sum(p == i["target"] for p, i in zip(parsed, items, strict=True))
    print({"json_valid": valid, "category": category / len(items), "exact": exact / len(items)})
    assert valid >= 0.9
    assert category / len(items) >= 0.8
    assert exact / len(items) >= 0.5
