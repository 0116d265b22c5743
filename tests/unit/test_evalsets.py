"""The eval set format: loading, prompt rendering, versioning and every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monitor.errors import EvalSetError
from monitor.evals.evalset import content_hash, load_evalset, parse_strategy

SPEC = """\
name: tickets
task: multiple_choice
prompt: "Ticket: {input}\\nCategory:"
choices: [billing, technical, account]
fewshot:
  k: 2
  pool: fewshot.jsonl
metrics: [acc, acc_norm]
"""


def write_set(
    root: Path, spec: str = SPEC, data: list | str | None = None, pool: list | str | None = None
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "evalset.yaml").write_text(spec, encoding="utf-8")
    if data is None:
        data = [
            {"id": "a", "input": "charged twice", "target": "billing"},
            {"id": "b", "input": "app crashes", "target": "technical"},
        ]
    if pool is None:
        pool = [
            {"id": "p1", "input": "refund please", "target": "billing"},
            {"id": "p2", "input": "cannot log in", "target": "account"},
            {"id": "p3", "input": "screen is blank", "target": "technical"},
        ]
    for name, content in (("data.jsonl", data), ("fewshot.jsonl", pool)):
        text = content if isinstance(content, str) else "".join(json.dumps(r) + "\n" for r in content)
        (root / name).write_text(text, encoding="utf-8")
    return root


def problems_of(path: Path) -> list[str]:
    with pytest.raises(EvalSetError) as info:
        load_evalset(path)
    return [str(p) for p in info.value.problems]


def test_loads_and_renders_like_lm_eval(tmp_path: Path) -> None:
    es = load_evalset(write_set(tmp_path / "es"))
    assert es.name == "tickets" and es.task == "multiple_choice"
    assert [i.id for i in es.items] == ["a", "b"]
    assert es.metrics == ("acc", "acc_norm")
    assert es.default_fewshot == 2
    item = es.items[0]
    assert es.render_prompt(item) == "Ticket: charged twice\nCategory:"
    # lm-eval: each shot is prompt + target_delimiter + target, joined by the separator, then the item prompt.
    assert es.render_context(item, 2) == (
        "Ticket: refund please\nCategory: billing\n\n"
        "Ticket: cannot log in\nCategory: account\n\n"
        "Ticket: charged twice\nCategory:"
    )
    assert es.render_context(item, 0) == "Ticket: charged twice\nCategory:"
    assert es.continuations(item) == (" billing", " technical", " account")
    assert item.gold_index == 0


def test_version_is_a_content_hash_of_all_files(tmp_path: Path) -> None:
    path = write_set(tmp_path / "es")
    first = load_evalset(path).version
    assert first == content_hash(path) and len(first) == 64
    assert load_evalset(path).version == first
    with (path / "fewshot.jsonl").open("a") as fh:
        fh.write(json.dumps({"id": "p4", "input": "x", "target": "billing"}) + "\n")
    assert load_evalset(path).version != first


def test_per_item_choices_and_index_targets(tmp_path: Path) -> None:
    spec = 'name: q\ntask: multiple_choice\nprompt: "Q: {input}\\nA:"\n'
    data = [
        {"id": 1, "input": "2+2", "choices": ["3", "4"], "target": 1},
        {"id": 2, "input": "sky", "choices": ["blue", "green", "red"], "target": "blue"},
    ]
    es = load_evalset(write_set(tmp_path / "q", spec, data, pool=[]))
    assert [i.gold_index for i in es.items] == [1, 0]
    assert es.items[0].target_text == "4"
    assert es.items[0].id == "1"


def test_generate_sets_accept_json_targets(tmp_path: Path) -> None:
    spec = (
        'name: triage\ntask: generate\nprompt: "Ticket: {input}\\nJSON:"\n'
        'metrics: [json_valid, json_fields, exact_match]\nmax_new_tokens: 20\nstop: ["\\n"]\n'
    )
    data = [{"id": "x", "input": "refund", "target": {"category": "billing", "priority": "high"}}]
    es = load_evalset(write_set(tmp_path / "t", spec, data, pool=[]))
    assert es.items[0].target_text == '{"category":"billing","priority":"high"}'
    assert es.spec.stop == ("\n",) and es.spec.max_new_tokens == 20


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write_set(tmp_path / "es", "name: x\ntask: [multiple_choice\nprompt: y\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path / 'evalset.yaml'}:")
    assert "invalid YAML" in problem


def test_schema_errors_name_the_key_and_its_line(tmp_path: Path) -> None:
    spec = SPEC.replace("task: multiple_choice", "task: classify") + "colour: blue\n"
    path = write_set(tmp_path / "es", spec)
    found = problems_of(path)
    assert any(p.startswith(f"{path / 'evalset.yaml'}:2: task:") for p in found), found
    assert any(p.startswith(f"{path / 'evalset.yaml'}:9: colour: unknown key") for p in found), found


def test_malformed_jsonl_names_line(tmp_path: Path) -> None:
    data = '{"id": "a", "input": "x", "target": "billing"}\n{"id": "b", "input": \n'
    path = write_set(tmp_path / "es", data=data)
    found = problems_of(path)
    assert found == [f"{path / 'data.jsonl'}:2: invalid JSON: Expecting value (column 22)"]


def test_duplicate_and_missing_ids(tmp_path: Path) -> None:
    data = [
        {"id": "a", "input": "x", "target": "billing"},
        {"input": "y", "target": "billing"},
        {"id": "a", "input": "z", "target": "billing"},
    ]
    path = write_set(tmp_path / "es", data=data)
    found = problems_of(path)
    assert f"{path / 'data.jsonl'}:2: missing field 'id'" in found
    assert f"{path / 'data.jsonl'}:3: duplicate id 'a' (first on line 1)" in found


def test_target_not_among_choices(tmp_path: Path) -> None:
    data = [{"id": "a", "input": "x", "target": "shipping"}, {"id": "b", "input": "y", "target": 7}]
    path = write_set(tmp_path / "es", data=data)
    found = problems_of(path)
    assert any(":1: target 'shipping' is not among the choices" in p for p in found), found
    assert any(":2: target index 7 is out of range" in p for p in found), found


def test_unknown_prompt_fields(tmp_path: Path) -> None:
    spec = SPEC.replace("{input}", "{input} ({product})")
    path = write_set(tmp_path / "es", spec)
    found = problems_of(path)
    assert f"{path / 'data.jsonl'}:1: prompt field {{product}} is not in this item" in found
    assert f"{path / 'fewshot.jsonl'}:1: prompt field {{product}} is not in this item" in found


def test_positional_prompt_field_is_refused(tmp_path: Path) -> None:
    path = write_set(tmp_path / "es", SPEC.replace("{input}", "{}"))
    assert any("prompt: not a valid format string" in p for p in problems_of(path))


def test_empty_files(tmp_path: Path) -> None:
    path = write_set(tmp_path / "es", data="")
    assert f"{path / 'data.jsonl'}: file is empty: an eval set needs at least one item" in problems_of(path)
    path2 = write_set(tmp_path / "es2", spec="")
    assert f"{path2 / 'evalset.yaml'}: file is empty" in problems_of(path2)


def test_non_utf8_names_line_and_byte(tmp_path: Path) -> None:
    path = write_set(tmp_path / "es")
    raw = b'{"id": "a", "input": "x", "target": "billing"}\n{"id": "b", "input": "caf\xe9", "target": "billing"}\n'
    (path / "data.jsonl").write_bytes(raw)
    assert problems_of(path) == [f"{path / 'data.jsonl'}:2: not valid UTF-8 (byte 0xe9 at column 26)"]


def test_missing_files_and_directory(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "nope") == [f"{tmp_path / 'nope'}: eval set directory not found"]
    path = write_set(tmp_path / "es")
    (path / "data.jsonl").unlink()
    assert problems_of(path) == [f"{path / 'data.jsonl'}: file not found"]


def test_fewshot_pool_problems(tmp_path: Path) -> None:
    spec = SPEC.replace("k: 2", "k: 5")
    pool = [{"id": "a", "input": "same id as data", "target": "billing"}]
    path = write_set(tmp_path / "es", spec, pool=pool)
    found = problems_of(path)
    assert any("fewshot.k: 5 is more than the pool's 1 items" in p for p in found), found
    assert any("id 'a' is also in data.jsonl (line 1)" in p for p in found), found
    escaping = write_set(tmp_path / "es2", SPEC.replace("pool: fewshot.jsonl", "pool: ../../etc/passwd"))
    assert any("fewshot.pool: must be a file inside" in p for p in problems_of(escaping))


def test_metrics_must_fit_the_task(tmp_path: Path) -> None:
    path = write_set(tmp_path / "es", SPEC.replace("[acc, acc_norm]", "[acc, token_f1]"))
    assert any(
        "metrics ['token_f1'] are not available for task multiple_choice" in p for p in problems_of(path)
    )


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    data = "".join(json.dumps({"id": f"i{n}", "input": "x", "target": "nope"}) + "\n" for n in range(3))
    path = write_set(tmp_path / "es", data=data)
    assert len(problems_of(path)) == 3


def test_strategies(tmp_path: Path) -> None:
    es = load_evalset(write_set(tmp_path / "es"))
    assert parse_strategy("zero-shot", es) == 0
    assert parse_strategy("3-shot", es) == 3
    assert parse_strategy("evalset", es) == 2
    with pytest.raises(EvalSetError):
        parse_strategy("many-shot", es)
    with pytest.raises(EvalSetError, match="pool has 3 items"):
        es.render_fewshot_prefix(4)


def test_shipped_eval_sets_are_valid() -> None:
    root = Path(__file__).resolve().parents[2] / "evals"
    found = [p.parent for p in root.glob("*/evalset.yaml")]
    assert found, "the repository ships eval sets under evals/"
    for path in found:
        es = load_evalset(path)
        assert es.items
