"""lm-evaluation-harness task files read as eval sets, side by side with lm-eval itself.

The task files under ``tests/fixtures/lmeval/`` are run once by lm-eval
(``simple_evaluate`` on the tiny GPT-2, offline) and once by the monitor; each
item must get the same context, the same continuations, log-likelihoods
within 1e-4 and the same generated text.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from monitor.cli.main import app
from monitor.errors import EvalSetError
from monitor.evals.evalset import load_evalset
from monitor.evals.lmeval import LmEvalTask, load_task
from tests.conftest import TinyModels

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lmeval"
TASKS = {
    "lmeval_mc_jinja": "mc_jinja.yaml",
    "lmeval_gen_regex": "gen_regex.yaml",
    "lmeval_fewshot_split": "fewshot_split.yaml",
    "lmeval_same_split": "same_split.yaml",
}


def task(name: str) -> LmEvalTask:
    return load_task(FIXTURES / TASKS[name])


# ------------------------------------------------------------------------------- side by side with lm-eval


@dataclass(frozen=True)
class SideBySide:
    lm_eval: dict[str, list[dict[str, Any]]]  # task -> lm-eval's logged samples (first filter each doc)
    monitor: dict[str, list[Any]]  # task -> the monitor's item results, in item order


@pytest.fixture(scope="module")
def side_by_side(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SideBySide]:
    """Both tools on every fixture task, once: lm-eval resolves data_files from its working directory."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from monitor.backends.hf.backend import HFBackend
    from monitor.evals.loop import evaluate

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    here = Path.cwd()
    before = os.environ.get("HF_DATASETS_CACHE")
    os.environ["HF_DATASETS_CACHE"] = str(tmp_path_factory.mktemp("datasets-cache"))
    try:
        os.chdir(FIXTURES)
        lm = HFLM(pretrained=str(tiny_models.gpt2), device="cpu", batch_size=8)
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(TASKS),
            task_manager=TaskManager(include_path=str(FIXTURES)),
            log_samples=True,
            device="cpu",
        )
        assert results is not None
        samples: dict[str, list[dict[str, Any]]] = {}
        for name in TASKS:
            by_doc: dict[int, dict[str, Any]] = {}
            for sample in results["samples"][name]:
                first = by_doc.setdefault(int(sample["doc_id"]), sample)
                first.setdefault("by_filter", {})[sample["filter"]] = sample
            samples[name] = [by_doc[i] for i in sorted(by_doc)]
        del lm
        os.chdir(here)
        backend = HFBackend.load(str(tiny_models.gpt2), device="cpu")
        try:
            mine = {}
            for name in TASKS:
                es = task(name)
                mine[name] = evaluate(backend, es, fewshot_k=es.default_fewshot).results
        finally:
            backend.close()
        yield SideBySide(samples, mine)
    finally:
        os.chdir(here)
        torch.set_num_threads(threads)
        if before is None:
            os.environ.pop("HF_DATASETS_CACHE", None)
        else:
            os.environ["HF_DATASETS_CACHE"] = before


@pytest.mark.parametrize("name", ["lmeval_mc_jinja", "lmeval_fewshot_split", "lmeval_same_split"])
def test_multiple_choice_matches_lm_eval(side_by_side: SideBySide, name: str) -> None:
    es = task(name)
    theirs, mine = side_by_side.lm_eval[name], side_by_side.monitor[name]
    assert len(theirs) == len(mine) == len(es.items)
    worst = 0.0
    for item, sample, result in zip(es.items, theirs, mine, strict=True):
        assert result.error is None
        contexts = {ctx for ctx, _ in sample["arguments"]}
        assert contexts == {result.prompt}, f"{name} item {item.id}: contexts differ"
        assert [cont for _, cont in sample["arguments"]] == list(es.continuations(item))
        lls = [float(resp[0][0]) for resp in sample["resps"]]
        worst = max(worst, *(abs(a - b) for a, b in zip(lls, result.loglikelihoods, strict=True)))
        assert result.scores["acc"] == sample["acc"]
        assert result.scores["acc_norm"] == sample["acc_norm"]
    assert worst < 1e-4, f"log-likelihoods differ by up to {worst}"


def test_generate_until_matches_lm_eval(side_by_side: SideBySide) -> None:
    name = "lmeval_gen_regex"
    es = task(name)
    theirs, mine = side_by_side.lm_eval[name], side_by_side.monitor[name]
    assert len(theirs) == len(mine) == len(es.items) == 6
    for item, sample, result in zip(es.items, theirs, mine, strict=True):
        assert result.error is None
        (ctx, kwargs), *_ = sample["arguments"]
        assert ctx == result.prompt, f"item {item.id}: contexts differ"
        assert kwargs["until"] == list(es.spec.decoding.stop or ())
        assert kwargs["max_gen_toks"] == es.spec.decoding.max_new_tokens
        assert sample["resps"][0][0] == result.prediction, f"item {item.id}: predictions differ"
        assert sample["target"] == item.target
        for filter_name, key in (("strict-match", "exact_match_strict_match"), ("none", "exact_match_none")):
            theirs_filtered = sample["by_filter"][filter_name]
            assert result.scores[key] == theirs_filtered["exact_match"], f"item {item.id}: {key} differs"
            filtered = (result.filtered or {}).get(key, result.prediction)
            assert filtered == theirs_filtered["filtered_resps"][0], f"item {item.id}: {key} filtered differs"


def test_monitor_eval_reads_a_task_file(tiny_models: TinyModels, side_by_side: SideBySide) -> None:
    """``monitor eval --evalset TASK.yaml``: the task file through the CLI, lm-eval's accuracy."""
    task_file = str(FIXTURES / "fewshot_split.yaml")
    result = CliRunner().invoke(
        app, ["eval", "--model", str(tiny_models.gpt2), "--evalset", task_file, "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    theirs = side_by_side.lm_eval["lmeval_fewshot_split"]
    assert summary["metrics"]["acc"]["value"] == pytest.approx(sum(s["acc"] for s in theirs) / len(theirs))
    assert summary["metrics"]["acc"]["n"] == len(theirs)


def test_monitor_eval_refuses_a_bad_task_file(tmp_path: Path) -> None:
    path = write_task(tmp_path, BASE + "process_docs: !function utils.process_docs\n")
    result = CliRunner().invoke(app, ["eval", "--model", "unused", "--evalset", str(path)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "process_docs: !function" in lines[0]


def test_default_sampler_draws_as_lm_eval() -> None:
    """The seeded sampler's shots, separate split and own split, by lm-eval's own ContextSampler."""
    from lm_eval.api.samplers import ContextSampler

    for name in ("lmeval_fewshot_split", "lmeval_same_split"):
        es = task(name)
        k = es.default_fewshot
        docs = [ex.fields["doc"] for ex in es.pool]
        sampler = ContextSampler(docs, rnd=None).set_rnd(1234)
        for item in es.items:
            expected = sampler.sample(n=k, eval_doc=item.fields["doc"] if es.exclude_self else None)
            assert [docs[i] for i in es.shot_indices(k)[item.id]] == list(expected)
        assert es.exclude_self == (name == "lmeval_same_split")


# --------------------------------------------------------------------------------------- reading tasks


def test_items_fields_and_ids() -> None:
    mc = task("lmeval_mc_jinja")
    assert [i.id for i in mc.items][:2] == ["t0", "t1"]  # the documents' own id field
    assert mc.items[1].target == 1 and mc.items[1].choices == ("billing", "technical", "account", "shipping")
    assert mc.items[1].fields["doc"]["ticket"] == "the app crashes when I open settings"
    gen = task("lmeval_gen_regex")
    assert [i.id for i in gen.items] == ["0", "1", "2", "3", "4", "5"]  # CSV without ids: the index
    assert gen.items[0].target == "billing"
    assert gen.spec.decoding.stop == ("\n", "Ticket:") and gen.spec.decoding.max_new_tokens == 6


def test_other_shot_counts_and_errors() -> None:
    es = task("lmeval_fewshot_split")
    assert es.render_context(es.items[0], 0) == "Ticket: I was charged twice for my subscription\nCategory:"
    assert es.render_context(es.items[0], 1).count("Category:") == 2
    with pytest.raises(EvalSetError, match="7 documents"):
        es.render_fewshot_prefix(8)
    same = task("lmeval_same_split")
    with pytest.raises(EvalSetError, match="one more is drawn"):
        same.render_fewshot_prefix(8)


def test_saved_dataset_and_parquet(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = [json.loads(line) for line in (FIXTURES / "data" / "tickets_test.jsonl").read_text().splitlines()]
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "saved"))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "test.parquet"))
    body = (FIXTURES / "mc_jinja.yaml").read_text()
    (tmp_path / "saved.yaml").write_text(
        body.replace("dataset_path: json", "dataset_path: saved").replace(
            "dataset_kwargs:\n  data_files:\n    test: data/tickets_test.jsonl\n", ""
        )
    )
    (tmp_path / "parquet.yaml").write_text(
        body.replace("dataset_path: json", "dataset_path: parquet").replace(
            "data/tickets_test.jsonl", "test.parquet"
        )
    )
    reference = task("lmeval_mc_jinja")
    for file in ("saved.yaml", "parquet.yaml"):
        es = load_task(tmp_path / file)
        assert [es.render_context(i) for i in es.items] == [
            reference.render_context(i) for i in reference.items
        ]
        assert [i.target for i in es.items] == [i.target for i in reference.items]


# ------------------------------------------------------------------------------------------ bad input


def write_task(tmp_path: Path, text: str) -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    shutil.copy(FIXTURES / "data" / "tickets_test.jsonl", tmp_path / "data" / "tickets_test.jsonl")
    path = tmp_path / "task.yaml"
    path.write_text(text)
    return path


BASE = (FIXTURES / "mc_jinja.yaml").read_text()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            BASE + "process_docs: !function utils.process_docs\n",
            "process_docs: !function utils.process_docs runs Python code",
        ),
        (
            BASE.replace(
                'doc_to_text: "Ticket: {{ ticket | trim }}\\nCategory:"', "doc_to_text: !function utils.text"
            ),
            "doc_to_text: !function",
        ),
        (BASE + "process_results: utils.process\n", "process_results: needs Python code"),
        (BASE + "use_chat_template_please: true\n", "use_chat_template_please: not supported"),
        (BASE.replace("data/tickets_test.jsonl", "data/missing.jsonl"), "missing.jsonl: file not found"),
        (
            BASE.replace("{{ ticket | trim }}", "{{ ticket | trim }"),
            "doc_to_text: not a valid Jinja template",
        ),
        (
            BASE.replace("{{ ticket | trim }}", "{{ subject }}"),
            "doc_to_text: test document 0: 'subject' is undefined",
        ),
        (BASE.replace("metric: acc_norm", "metric: bleu"), "metric_list[1].metric: 'bleu' is not supported"),
    ],
)
def test_refusals_are_one_located_line(tmp_path: Path, text: str, message: str) -> None:
    path = write_task(tmp_path, text)
    with pytest.raises(EvalSetError) as info:
        load_task(path)
    (problem,) = info.value.problems
    assert problem.location.startswith(str(path))
    assert message in problem.message
    result = CliRunner().invoke(app, ["import", "lm-eval", str(path), str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output


def test_function_refusal_names_its_line(tmp_path: Path) -> None:
    path = write_task(tmp_path, BASE + "process_docs: !function utils.process_docs\n")
    with pytest.raises(EvalSetError) as info:
        load_task(path)
    line = len(BASE.splitlines()) + 1
    assert info.value.problems[0].location == f"{path}:{line}"


# --------------------------------------------------------------------------------------------- import


@pytest.mark.parametrize("name", list(TASKS))
def test_import_writes_an_equivalent_evalset(tmp_path: Path, name: str) -> None:
    out = tmp_path / "evalset"
    result = CliRunner().invoke(app, ["import", "lm-eval", str(FIXTURES / TASKS[name]), str(out)])
    assert result.exit_code == 0, result.output
    es, imported = task(name), load_evalset(out)
    k, wk = es.default_fewshot, imported.default_fewshot
    # shots from another split keep a pool; shots from the evaluated split are written into each input
    assert wk == (0 if name == "lmeval_same_split" else k)
    assert [imported.render_context(i, wk) for i in imported.items] == [
        es.render_context(i, k) for i in es.items
    ]
    assert [i.id for i in imported.items] == [i.id for i in es.items]
    assert [i.target for i in imported.items] == [i.target for i in es.items]
    assert imported.metrics == es.metrics
    if es.task == "generate":
        assert imported.spec.decoding == es.spec.decoding


def test_import_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "evalset"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = CliRunner().invoke(app, ["import", "lm-eval", str(FIXTURES / "mc_jinja.yaml"), str(out)])
    assert result.exit_code == 2
    assert "not empty" in result.output
    assert (out / "notes.txt").read_text() == "mine"
