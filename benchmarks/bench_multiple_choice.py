"""Benchmark ``monitor eval`` against lm-evaluation-harness on multiple-choice scoring.

One run builds (or reuses) a seeded GPT-2-shaped model and a seeded 5-choice eval
set, writes the eval set twice — as a monitor eval set folder and as an
lm-evaluation-harness task — and scores it with both tools, few-shot and zero-shot:

* lm-eval runs in a fresh process per batch size (HF backend, CPU, float32), with
  ``log_samples`` so every per-choice log-likelihood and every rendered prompt
  comes back;
* the monitor runs as ``python -m monitor eval ... --output results.jsonl --json``.

Both processes get the same thread settings.  The script prints one table row per
setting (timings, speed-up, agreement of predictions and log-likelihoods, and the
token counts that bound what prefix sharing can save) and writes the same as JSON.
It exits non-zero when a prediction differs, when a log-likelihood differs by more
than ``--tolerance``, or when lm-eval rendered a prompt other than the monitor's
rendering rule says it should.

``--format chat`` runs the same comparison through a chat template: the model's
tokenizer gets a ChatML-like template with a system role, the monitor's eval set
is ``format: chat`` with a ``system:`` prompt and multi-turn few-shot, and lm-eval
runs with ``apply_chat_template=True``, ``fewshot_as_multiturn=True`` and
``system_instruction``.  Every context lm-eval logged must equal the monitor's
``prompt`` for the item and the tokenizer's own ``apply_chat_template`` output.

Usage::

    python benchmarks/bench_multiple_choice.py                    # everything
    python benchmarks/bench_multiple_choice.py --only lm-eval     # lm-eval half only
    python benchmarks/bench_multiple_choice.py --format chat --report benchmarks/results_chat.json
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import random
import resource
import shlex
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPORT_VERSION = 1
TASK_NAME = "bench_mc"
EVALSET_NAME = "bench-mc"
N_CHOICES = 5
POOL_SIZE = 16
#: Exit codes: 1 = the tools disagree, 2 = the benchmark could not run.
EXIT_DISAGREEMENT = 1
EXIT_SETUP = 2


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class PromptFormat:
    """How items become text: the eval set's ``prompt``, ``target_delimiter`` and few-shot separator."""

    prompt: str = "Question: {input}\nAnswer:"
    target_delimiter: str = " "
    separator: str = "\n\n"

    def digest(self) -> str:
        """A short name for this format, to keep eval set folders of different formats apart."""
        return hashlib.sha256(json.dumps(asdict(self)).encode()).hexdigest()[:8]


DEFAULT_FORMAT = PromptFormat()

#: Chat templates for ``--format chat``: both ChatML-like with a system role.  ``im-sep`` is
#: Phi-4's variant, whose headers end in ``<|im_sep|>``; ``chatml``'s end in a newline.
CHAT_TEMPLATES = {
    "im-sep": (
        "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}<|im_sep|>{{ m['content'] }}"
        "<|im_end|>{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant<|im_sep|>{% endif %}"
    ),
    "chatml": (
        "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
}
DEFAULT_CHAT_PROMPT = "Question: {input}"
DEFAULT_SYSTEM = "You are a careful assistant. Answer each question with one of its options only."


@dataclass(frozen=True)
class ChatFormat:
    """``--format chat``: the template style, the user turn's ``prompt`` and the system prompt."""

    template: str = "im-sep"
    prompt: str = DEFAULT_CHAT_PROMPT
    system: str = DEFAULT_SYSTEM

    def digest(self) -> str:
        return "chat-" + hashlib.sha256(json.dumps(asdict(self)).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class McItem:
    """One multiple-choice item, in the monitor's ``data.jsonl`` shape."""

    id: str
    input: str
    choices: tuple[str, ...]
    target: str

    def to_json(self) -> dict[str, Any]:
        """The JSON line written to ``data.jsonl`` / ``fewshot.jsonl``."""
        return {"id": self.id, "input": self.input, "choices": list(self.choices), "target": self.target}


class _Lexicon:
    """Seeded pseudo-words, so the tokenizer and the items share a vocabulary nothing else has."""

    def __init__(self, rng: random.Random) -> None:
        self.nouns = _pseudo_words(rng, 300)
        self.adjectives = _pseudo_words(rng, 120)
        self.verbs = _pseudo_words(rng, 80)
        self.names = [w.capitalize() for w in _pseudo_words(rng, 60)]
        # A few words outside ASCII and with punctuation, as real benchmarks have.
        self.odd = ["café", "naïve", "über", "déjà vu", "São Paulo", "rock'n'roll", "x-ray", "e.g."]


def _pseudo_words(rng: random.Random, n: int) -> list[str]:
    consonants, vowels = "bcdfghklmnprstvz", "aeiou"
    words: set[str] = set()
    while len(words) < n:
        syllables = rng.randint(2, 3)
        words.add("".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables)))
    return sorted(words)


def _question(rng: random.Random, lex: _Lexicon) -> tuple[str, list[str]]:
    """One question and five distinct choices (the first is not necessarily correct)."""
    kind = rng.randrange(5)
    noun, adj, verb, name = (
        lambda: rng.choice(lex.nouns),
        lambda: rng.choice(lex.adjectives),
        lambda: rng.choice(lex.verbs),
        lambda: rng.choice(lex.names),
    )
    preamble = ""
    if rng.random() < 0.5:
        preamble = f"The {adj()} {noun()} of {name()} was {adj()} and {adj()}. "
    if kind == 0:
        question = f"Which {noun()} did the {adj()} {noun()} {verb()} near the {noun()}?"
        shared = adj()
        # Choices that share their first tokens, as "the red ..." answers do.
        generate = lambda: f"the {shared} {noun()}"  # noqa: E731
    elif kind == 1:
        question = f"What does {name()} {verb()} when the {noun()} is {adj()}?"
        generate = lambda: noun() if rng.random() < 0.5 else f"{adj()} {noun()}"  # noqa: E731
    elif kind == 2:
        question = f"How many {noun()}s did {name()} {verb()} before the {adj()} {noun()} arrived?"
        generate = lambda: str(rng.choice([1, 2, 3, 7, 12, 19, 27, 41, 100, 256, 1000]))  # noqa: E731
    elif kind == 3:
        question = f"Where would a {adj()} {noun()} {verb()} the {noun()} of {name()}?"
        generate = lambda: (  # noqa: E731
            f"in {rng.choice(lex.odd)}" if rng.random() < 0.3 else f"near the {noun()}, then {verb()}"
        )
    else:
        question = f"Is the {noun()} of {name()} {adj()}?"
        generate = lambda: rng.choice(  # noqa: E731
            ["yes", "no", "maybe", "yes, always", "no, never", "only on Sundays", f"if {name()} agrees"]
        )
    choices: list[str] = []
    while len(choices) < N_CHOICES:
        candidate = generate()
        if candidate not in choices:
            choices.append(candidate)
    return preamble + question, choices


def synthetic_items(seed: int, n_items: int, *, prefix: str, lex: _Lexicon) -> list[McItem]:
    """``n_items`` seeded 5-choice items with per-item choices and a uniformly placed target."""
    rng = random.Random(f"{seed}-{prefix}")
    items = []
    for i in range(n_items):
        question, choices = _question(rng, lex)
        target = choices[rng.randrange(N_CHOICES)]
        items.append(McItem(f"{prefix}{i:05d}", question, tuple(choices), target))
    return items


def synthetic_corpus(seed: int, lex: _Lexicon, n_texts: int = 4000) -> list[str]:
    """Texts to train the tokenizer on: rendered question/answer pairs from the same lexicon."""
    rng = random.Random(f"{seed}-corpus")
    texts = []
    for _ in range(n_texts):
        question, choices = _question(rng, lex)
        texts.append(
            DEFAULT_FORMAT.prompt.format(input=question)
            + DEFAULT_FORMAT.target_delimiter
            + rng.choice(choices)
        )
    return texts


def render_prompt(item: McItem, fmt: PromptFormat) -> str:
    """The item's prompt, as the monitor renders ``prompt`` over the item's fields."""
    return fmt.prompt.format(**item.to_json())


def render_context(item: McItem, pool: Sequence[McItem], k: int, fmt: PromptFormat) -> str:
    """The monitor's few-shot rule: the first ``k`` pool items with their targets, then the item."""
    shots = [render_prompt(shot, fmt) + fmt.target_delimiter + shot.target for shot in pool[:k]]
    if not shots:
        return render_prompt(item, fmt)
    return fmt.separator.join(shots) + fmt.separator + render_prompt(item, fmt)


def chat_messages(item: McItem, pool: Sequence[McItem], k: int, chat: ChatFormat) -> list[dict[str, str]]:
    """The conversation both tools must build: system, ``k`` (user, assistant) example turns, the item."""
    messages = [{"role": "system", "content": chat.system}]
    for shot in pool[:k]:
        messages.append({"role": "user", "content": chat.prompt.format(**shot.to_json())})
        messages.append({"role": "assistant", "content": shot.target})
    messages.append({"role": "user", "content": chat.prompt.format(**item.to_json())})
    return messages


def render_chat_context(
    tokenizer: Any, item: McItem, pool: Sequence[McItem], k: int, chat: ChatFormat
) -> str:
    """The item's context as the tokenizer's own ``apply_chat_template`` renders it, generation prompt included."""
    text = tokenizer.apply_chat_template(
        chat_messages(item, pool, k, chat), tokenize=False, add_generation_prompt=True
    )
    assert isinstance(text, str)
    return text


def python_format_to_jinja(template: str) -> str:
    """Turn ``"Question: {input}"`` into lm-eval's ``"Question: {{input}}"``, refusing anything subtler."""
    parts = []
    for literal, field_name, format_spec, conversion in string.Formatter().parse(template):
        if any(marker in literal for marker in ("{", "}", "{%", "{#")):
            raise ValueError(f"literal text {literal!r} would need Jinja escaping")
        parts.append(literal)
        if field_name is not None:
            if format_spec or conversion or not field_name.isidentifier():
                raise ValueError(f"field {field_name!r} has a format the Jinja template cannot mirror")
            parts.append("{{" + field_name + "}}")
    return "".join(parts)


def _write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` unless the file already holds it (keeps mtimes, so datasets' cache stays valid)."""
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _jsonl(items: Iterable[McItem]) -> str:
    return "".join(json.dumps(item.to_json(), ensure_ascii=False) + "\n" for item in items)


@dataclass(frozen=True)
class EvalSetPaths:
    """Where one generated eval set lives, in both formats."""

    monitor_dir: Path
    lm_eval_dir: Path
    data_file: Path
    pool_file: Path


def write_eval_sets(
    root: Path,
    items: Sequence[McItem],
    pool: Sequence[McItem],
    k: int,
    fmt: PromptFormat,
    chat: ChatFormat | None = None,
) -> EvalSetPaths:
    """Write the monitor eval set folder and the lm-eval task folder for the same items.

    With ``chat`` the monitor's eval set is ``format: chat`` (``system:``, multi-turn few-shot,
    ``target_delimiter`` left at its chat default ``""``); the lm-eval task is the same, with its
    system prompt and chat flags passed at run time, and ``target_delimiter: ""``, which is what
    lm-eval uses under ``apply_chat_template`` without a ``gen_prefix`` whatever the task says.
    """
    import yaml

    monitor_dir = root / "monitor_evalset"
    lm_eval_dir = root / "lm_eval_task"
    data_file, pool_file = monitor_dir / "data.jsonl", monitor_dir / "fewshot.jsonl"
    _write_if_changed(data_file, _jsonl(items))
    _write_if_changed(pool_file, _jsonl(pool))
    evalset: dict[str, Any]
    if chat is None:
        evalset = {
            "name": EVALSET_NAME,
            "task": "multiple_choice",
            "prompt": fmt.prompt,
            "target_delimiter": fmt.target_delimiter,
            "fewshot": {"k": k, "pool": pool_file.name, "separator": fmt.separator},
            "metrics": ["acc"],
        }
    else:
        evalset = {
            "name": EVALSET_NAME,
            "task": "multiple_choice",
            "format": "chat",
            "system": chat.system,
            "prompt": chat.prompt,
            "fewshot": {"k": k, "pool": pool_file.name, "multiturn": True},
            "metrics": ["acc"],
        }
    _write_if_changed(
        monitor_dir / "evalset.yaml", yaml.safe_dump(evalset, sort_keys=False, allow_unicode=True)
    )
    task = {
        "task": TASK_NAME,
        "dataset_path": "json",
        "dataset_kwargs": {
            "data_files": {"test": str(data_file.resolve()), "train": str(pool_file.resolve())}
        },
        "test_split": "test",
        "fewshot_split": "train",
        # lm-eval's default sampler draws a seeded random sample; the monitor takes the first k.
        "fewshot_config": {"sampler": "first_n"},
        "output_type": "multiple_choice",
        "doc_to_text": python_format_to_jinja(fmt.prompt if chat is None else chat.prompt),
        "doc_to_choice": "choices",
        "doc_to_target": "target",
        "target_delimiter": fmt.target_delimiter if chat is None else "",
        "fewshot_delimiter": fmt.separator,
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }
    _write_if_changed(
        lm_eval_dir / f"{TASK_NAME}.yaml", yaml.safe_dump(task, sort_keys=False, allow_unicode=True)
    )
    return EvalSetPaths(monitor_dir, lm_eval_dir, data_file, pool_file)


def warm_dataset_cache(paths: EvalSetPaths) -> None:
    """Build the ``datasets`` arrow cache once, so no timed lm-eval run pays for it."""
    import datasets

    datasets.load_dataset(
        "json", data_files={"test": str(paths.data_file.resolve()), "train": str(paths.pool_file.resolve())}
    )


# -------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ModelSpec:
    """The size and seed of the benchmark model; its folder name is derived from all of it."""

    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    vocab_size: int
    n_positions: int
    seed: int

    def folder_name(self) -> str:
        return (
            f"{self.arch}-l{self.n_layer}-h{self.n_embd}-a{self.n_head}-v{self.vocab_size}"
            f"-p{self.n_positions}-s{self.seed}"
        )


def ensure_model(workdir: Path, spec: ModelSpec, corpus: Sequence[str]) -> Path:
    """Build the seeded tokenizer and model under ``workdir`` unless a finished build is there."""
    from monitor.demo.models import build_base_model, build_tokenizer

    model_dir = workdir / "models" / spec.folder_name()
    marker = model_dir / "bench_model.json"
    if marker.exists() and json.loads(marker.read_text()) == asdict(spec):
        return model_dir
    tokenizer_dir = workdir / "models" / f"tokenizer-v{spec.vocab_size}-s{spec.seed}"
    build_tokenizer(corpus, tokenizer_dir, vocab_size=spec.vocab_size)
    build_base_model(
        model_dir,
        tokenizer_dir=tokenizer_dir,
        seed=spec.seed,
        arch=spec.arch,
        n_layer=spec.n_layer,
        n_embd=spec.n_embd,
        n_head=spec.n_head,
        n_positions=spec.n_positions,
    )
    marker.write_text(json.dumps(asdict(spec)))
    return model_dir


def ensure_chat_model(model_dir: Path, template: str) -> Path:
    """A copy of ``model_dir`` whose tokenizer carries ``CHAT_TEMPLATES[template]`` (same weights)."""
    import shutil

    from transformers import AutoTokenizer

    out = model_dir.with_name(f"{model_dir.name}-chat-{template}")
    marker = out / "bench_chat.json"
    if marker.exists() and json.loads(marker.read_text()) == {"template": CHAT_TEMPLATES[template]}:
        return out
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(model_dir, out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.chat_template = CHAT_TEMPLATES[template]
    tokenizer.save_pretrained(out)
    marker.write_text(json.dumps({"template": CHAT_TEMPLATES[template]}))
    return out


# ------------------------------------------------------------------ token counts


@dataclass(frozen=True)
class TokenCounts:
    """How many token positions each strategy runs through the model (padding not counted)."""

    #: lm-eval: one row per (context, choice), minus rows its one-token cache deduplicates.
    lm_eval: int
    #: Nodes of a prefix tree over all those rows: the few-shot prefix once, each item's
    #: context once, each choice's own tokens once — the most that reuse can save.
    unique: int
    max_row: int

    @property
    def bound(self) -> float:
        return self.lm_eval / self.unique if self.unique else float("nan")


def lm_eval_encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's causal ``_encode_pair``: trailing context whitespace moves to the continuation."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer.encode(context + continuation)
    context_enc = tokenizer.encode(context)
    return context_enc, whole[len(context_enc) :]


def count_tokens(
    tokenizer: Any,
    items: Sequence[McItem],
    pool: Sequence[McItem],
    k: int,
    fmt: PromptFormat,
    contexts: dict[str, str] | None = None,
    delimiter: str | None = None,
) -> TokenCounts:
    """Count the token positions lm-eval computes and the unique ones a prefix tree needs.

    ``contexts`` (item id -> context) and ``delimiter`` replace the text rendering (chat mode).
    """
    rows: set[tuple[int, ...]] = set()
    trie: dict[int, Any] = {}
    unique = 0
    delim = fmt.target_delimiter if delimiter is None else delimiter
    for item in items:
        context = contexts[item.id] if contexts is not None else render_context(item, pool, k, fmt)
        for choice in item.choices:
            context_enc, continuation_enc = lm_eval_encode_pair(tokenizer, context, delim + choice)
            row = tuple(context_enc + continuation_enc)[:-1]
            rows.add(row)
            node = trie
            for token in row:
                if token not in node:
                    node[token] = {}
                    unique += 1
                node = node[token]
    return TokenCounts(sum(len(r) for r in rows), unique, max(len(r) for r in rows))


# ------------------------------------------------------------------------- runs


@dataclass
class ToolRun:
    """One timed evaluation by one tool: timings, per-item results, and what went wrong."""

    tool: str
    shots: int
    batch_size: str | None
    #: Wall time of the whole process: interpreter, imports, model load, evaluation.
    process_s: float
    #: CPU time (user + system) of the process and its threads; less sensitive than wall time
    #: to other work on the machine.
    process_cpu_s: float | None = None
    #: Wall time of the evaluation proper (after the model is loaded), where the tool tells us.
    eval_s: float | None = None
    #: Model load time, where known.
    load_s: float | None = None
    #: Time spent inside the model's log-likelihood scoring alone, where known.
    scoring_s: float | None = None
    accuracy: float | None = None
    #: id -> {"loglikelihoods": [...], "prediction": str | None, "contexts": [...], "continuations": [...]}
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    #: 1-minute load average when the run started: other work on the machine skews timings.
    load_before: float | None = None
    #: Process wall times of every repeat (the run kept is the fastest).
    process_s_all: list[float] = field(default_factory=list)


def best_of(repeats: int, run_once: Callable[[], ToolRun]) -> ToolRun:
    """Run ``run_once`` up to ``repeats`` times and keep the fastest run; stop at the first error."""
    kept: ToolRun | None = None
    times = []
    for _ in range(max(1, repeats)):
        load_before = os.getloadavg()[0]
        run = run_once()
        run.load_before = load_before
        times.append(run.process_s)
        if run.error:
            kept = run
            break
        if kept is None or run.process_s < kept.process_s:
            kept = run
    assert kept is not None
    kept.process_s_all = times
    return kept


def _children_cpu_s() -> float:
    """User + system CPU seconds of all finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
    )
    return env


def run_lm_eval(
    *,
    model_dir: Path,
    paths: EvalSetPaths,
    shots: int,
    batch_size: str,
    threads: int,
    workdir: Path,
    log_dir: Path,
    system_instruction: str | None = None,
) -> ToolRun:
    """Run lm-eval in a fresh process (this script in worker mode) and collect its samples.

    ``system_instruction`` (chat mode) also turns on ``apply_chat_template`` and ``fewshot_as_multiturn``.
    """
    tag = "" if system_instruction is None else "-chat"
    out = workdir / "runs" / f"lm-eval{tag}-{shots}shot-bs{batch_size}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    spec = {
        "model_dir": str(model_dir),
        "include_path": str(paths.lm_eval_dir),
        "shots": shots,
        "batch_size": batch_size,
        "threads": threads,
        "out": str(out),
    }
    if system_instruction is not None:
        spec["system_instruction"] = system_instruction
    cmd = [sys.executable, str(Path(__file__).resolve()), "--lm-eval-worker", json.dumps(spec)]
    log = log_dir / f"lm-eval{tag}-{shots}shot-bs{batch_size}.log"
    cpu_before, start = _children_cpu_s(), time.perf_counter()
    with log.open("w") as log_file:
        proc = subprocess.run(
            cmd, env=_thread_env(threads), stdout=log_file, stderr=subprocess.STDOUT, check=False
        )
    process_s = time.perf_counter() - start
    run = ToolRun("lm-eval", shots, batch_size, process_s, _children_cpu_s() - cpu_before)
    if proc.returncode != 0 or not out.exists():
        run.error = f"lm-eval worker exited with {proc.returncode}; see {log}"
        return run
    data = json.loads(out.read_text())
    run.load_s, run.eval_s, run.scoring_s = data["load_s"], data["eval_s"], data["scoring_s"]
    run.accuracy = data["accuracy"]
    run.summary = {k: v for k, v in data.items() if k != "samples"}
    run.items = {s["id"]: s for s in data["samples"]}
    return run


def _lm_eval_worker(spec: dict[str, Any]) -> None:
    """Worker mode: one timed lm-eval evaluation; writes timings and logged samples as JSON."""
    import torch

    torch.set_num_threads(spec["threads"])
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    batch_size: int | str = int(spec["batch_size"]) if spec["batch_size"].isdigit() else spec["batch_size"]
    start = time.perf_counter()
    lm = HFLM(pretrained=spec["model_dir"], dtype="float32", device="cpu", batch_size=batch_size)
    loaded = time.perf_counter()

    scoring = {"s": 0.0}
    scored = lm.loglikelihood

    def timed_loglikelihood(requests: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return scored(requests, *args, **kwargs)
        finally:
            scoring["s"] += time.perf_counter() - t0

    lm.loglikelihood = timed_loglikelihood  # type: ignore[method-assign]
    task_manager = TaskManager(include_path=spec["include_path"])
    indexed = time.perf_counter()
    chat_kwargs: dict[str, Any] = {}
    if "system_instruction" in spec:
        chat_kwargs = {
            "apply_chat_template": True,
            "fewshot_as_multiturn": True,
            "system_instruction": spec["system_instruction"],
        }
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=[TASK_NAME],
        task_manager=task_manager,
        num_fewshot=spec["shots"],
        batch_size=batch_size,
        device="cpu",
        log_samples=True,
        **chat_kwargs,
    )
    done = time.perf_counter()
    assert results is not None
    samples = []
    for sample in results["samples"][TASK_NAME]:
        responses = [_first_response(r) for r in sample["filtered_resps"]]
        samples.append(
            {
                "id": sample["doc"]["id"],
                "doc_id": sample["doc_id"],
                "contexts": [args[0] for args in sample["arguments"]],
                "continuations": [args[1] for args in sample["arguments"]],
                "loglikelihoods": [float(r[0]) for r in responses],
                "is_greedy": [bool(r[1]) for r in responses],
            }
        )
    payload = {
        "load_s": loaded - start,
        "task_index_s": indexed - loaded,
        "eval_s": done - indexed,
        "scoring_s": scoring["s"],
        "accuracy": results["results"][TASK_NAME]["acc,none"],
        "lm_eval_version": lm_eval.__version__ if hasattr(lm_eval, "__version__") else None,
        "samples": samples,
    }
    Path(spec["out"]).write_text(json.dumps(payload))


def _first_response(response: Any) -> tuple[float, bool]:
    """A multiple-choice response is ``(ll, is_greedy)``, possibly wrapped in a one-element list."""
    if isinstance(response, list | tuple) and len(response) == 1:
        response = response[0]
    ll, greedy = response
    return float(ll), bool(greedy)


def monitor_cli_available(monitor_cmd: Sequence[str]) -> bool:
    """Whether ``<monitor_cmd> --help`` works, i.e. the ``monitor eval`` command exists."""
    proc = subprocess.run([*monitor_cmd, "--help"], capture_output=True, text=True, check=False)
    return proc.returncode == 0


def run_monitor(
    *,
    monitor_cmd: Sequence[str],
    extra_args: Sequence[str],
    model_dir: Path,
    paths: EvalSetPaths,
    shots: int,
    threads: int,
    workdir: Path,
    log_dir: Path,
    tag: str = "",
) -> ToolRun:
    """Run ``monitor eval`` as a subprocess and read its per-item JSONL and summary JSON."""
    out = workdir / "runs" / f"monitor{tag}-{shots}shot.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    cmd = [
        *monitor_cmd,
        "--model",
        str(model_dir),
        "--evalset",
        str(paths.monitor_dir),
        "--fewshot",
        str(shots),
        "--output",
        str(out),
        "--json",
        *extra_args,
    ]
    log = log_dir / f"monitor{tag}-{shots}shot.log"
    cpu_before, start = _children_cpu_s(), time.perf_counter()
    proc = subprocess.run(cmd, env=_thread_env(threads), capture_output=True, text=True, check=False)
    process_s = time.perf_counter() - start
    log.write_text(f"$ {shlex.join(cmd)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    run = ToolRun("monitor", shots, None, process_s, _children_cpu_s() - cpu_before)
    if proc.returncode != 0 or not out.exists():
        run.error = f"monitor exited with {proc.returncode}; see {log}"
        return run
    run.summary = _parse_summary(proc.stdout)
    run.accuracy = _find_number(run.summary.get("metrics", {}), ("acc", "accuracy"))
    timings = run.summary.get("timings", {})
    run.load_s = _find_number(timings, ("load_s", "model_load_s", "load"))
    run.eval_s = _find_number(timings, ("eval_s", "evaluate_s", "run_s", "score_s", "scoring_s", "eval"))
    run.scoring_s = _find_number(timings, ("scoring_s", "score_s", "loglikelihood_s"))
    for line in out.read_text(encoding="utf-8").splitlines():
        record = json.loads(line) if line.strip() else {}
        if "id" in record and "loglikelihoods" in record:
            run.items[str(record["id"])] = record
    return run


def _parse_summary(stdout: str) -> dict[str, Any]:
    """The ``--json`` summary: the whole stdout, else its last line that parses as an object."""
    try:
        parsed = json.loads(stdout)
        return parsed if isinstance(parsed, dict) else {}
    except json.JSONDecodeError:
        pass
    for line in reversed(stdout.splitlines()):
        try:
            parsed = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(parsed, dict):
            return parsed
    return {}


def _find_number(mapping: Any, keys: Sequence[str]) -> float | None:
    """The first of ``keys`` that holds a number in ``mapping`` (summary fields are not fixed yet)."""
    if not isinstance(mapping, dict):
        return None
    for key in keys:
        value = mapping.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, dict):
            nested = _find_number(value, ("value", "mean", "s"))
            if nested is not None:
                return nested
    return None


# ------------------------------------------------------------------- comparison


@dataclass
class Agreement:
    """How far two tools' per-item results agree."""

    compared: int
    identical_predictions: int
    max_abs_ll_diff: float
    missing: list[str] = field(default_factory=list)
    worst: dict[str, Any] | None = None
    prediction_mismatches: list[dict[str, Any]] = field(default_factory=list)
    #: With ``per_item_offset``: the largest |other - reference| shared by all choices of an item,
    #: taken out before ``max_abs_ll_diff`` (None otherwise).
    max_abs_offset: float | None = None

    @property
    def identical_share(self) -> float:
        total = self.compared + len(self.missing)
        return self.identical_predictions / total if total else float("nan")


def _argmax(values: Sequence[float]) -> int:
    """First index of the maximum, as ``numpy.argmax`` (and so lm-eval) breaks ties."""
    best = 0
    for i, value in enumerate(values):
        if value > values[best]:
            best = i
    return best


def compare_runs(
    items: Sequence[McItem],
    reference: ToolRun,
    other: ToolRun,
    *,
    examples: int = 5,
    per_item_offset: bool = False,
) -> Agreement:
    """Compare ``other`` to ``reference`` item by item: predictions and per-choice log-likelihoods.

    ``per_item_offset``: each item's log-likelihoods are compared after taking out the mean
    difference over its choices (the tools split context and continuation at different places,
    so one scores a token the other conditions on); the largest such offset is reported.
    """
    agreement = Agreement(compared=0, identical_predictions=0, max_abs_ll_diff=0.0)
    if per_item_offset:
        agreement.max_abs_offset = 0.0
    for item in items:
        ref, oth = reference.items.get(item.id), other.items.get(item.id)
        if ref is None or oth is None:
            agreement.missing.append(item.id)
            continue
        agreement.compared += 1
        ref_lls, oth_lls = list(ref["loglikelihoods"]), list(oth["loglikelihoods"])
        ref_pred = item.choices[_argmax(ref_lls)]
        oth_pred = oth.get("prediction")
        if oth_pred is None and len(oth_lls) == len(item.choices):
            oth_pred = item.choices[_argmax(oth_lls)]
        if ref_pred == oth_pred:
            agreement.identical_predictions += 1
        elif len(agreement.prediction_mismatches) < examples:
            agreement.prediction_mismatches.append(
                {
                    "id": item.id,
                    "choices": list(item.choices),
                    f"{reference.tool}_prediction": ref_pred,
                    f"{other.tool}_prediction": oth_pred,
                    f"{reference.tool}_loglikelihoods": ref_lls,
                    f"{other.tool}_loglikelihoods": oth_lls,
                }
            )
        if len(ref_lls) != len(oth_lls):
            agreement.max_abs_ll_diff = float("inf")
            agreement.worst = {"id": item.id, "reason": f"{len(ref_lls)} vs {len(oth_lls)} log-likelihoods"}
            continue
        offset = 0.0
        if per_item_offset and ref_lls:
            offset = sum(float(b) - float(a) for a, b in zip(ref_lls, oth_lls, strict=True)) / len(ref_lls)
            agreement.max_abs_offset = max(agreement.max_abs_offset or 0.0, abs(offset))
        for choice, a, b in zip(item.choices, ref_lls, oth_lls, strict=True):
            diff = abs(float(a) + offset - float(b))
            if diff > agreement.max_abs_ll_diff:
                agreement.max_abs_ll_diff = diff
                agreement.worst = {
                    "id": item.id,
                    "choice": choice,
                    reference.tool: float(a),
                    other.tool: float(b),
                }
    return agreement


def check_rendered_prompts(
    items: Sequence[McItem],
    pool: Sequence[McItem],
    shots: int,
    fmt: PromptFormat,
    run: ToolRun,
    *,
    examples: int = 3,
    contexts: dict[str, str] | None = None,
    delimiter: str | None = None,
) -> list[dict[str, Any]]:
    """Compare lm-eval's logged (context, continuation) pairs byte for byte with the monitor's rule.

    ``contexts`` (item id -> expected context) and ``delimiter`` replace the text rule (chat mode).
    """
    mismatches = []
    delim = fmt.target_delimiter if delimiter is None else delimiter
    for item in items:
        logged = run.items.get(item.id)
        if logged is None:
            continue
        expected_context = (
            contexts[item.id] if contexts is not None else render_context(item, pool, shots, fmt)
        )
        expected = [(expected_context, delim + choice) for choice in item.choices]
        got = list(zip(logged["contexts"], logged["continuations"], strict=True))
        if got != expected:
            mismatches.append({"id": item.id, "expected": expected[:1], "lm_eval": got[:1]})
            if len(mismatches) >= examples:
                break
    return mismatches


def check_monitor_prompts(
    items: Sequence[McItem], contexts: dict[str, str], run: ToolRun, *, examples: int = 3
) -> list[dict[str, Any]]:
    """Compare the ``prompt`` the monitor recorded per item with the expected rendered context."""
    mismatches = []
    for item in items:
        logged = run.items.get(item.id)
        if logged is None:
            continue
        if logged.get("prompt") != contexts[item.id]:
            mismatches.append({"id": item.id, "expected": contexts[item.id], "monitor": logged.get("prompt")})
            if len(mismatches) >= examples:
                break
    return mismatches


# ---------------------------------------------------------------------- report


def _machine() -> dict[str, Any]:
    import torch
    import transformers

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from importlib.metadata import version

        lm_eval_version = version("lm_eval")
    except Exception:
        lm_eval_version = None
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lm_eval": lm_eval_version,
    }


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.1f}x"


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table, one row per setting."""
    header = [
        "setting",
        "items",
        "lm-eval s (bs)",
        "monitor s",
        "speed-up",
        "lm-eval cpu s",
        "monitor cpu s",
        "speed-up",
        "lm-eval eval s",
        "monitor eval s",
        "speed-up",
        "identical",
        "max |Δll|",
        "lm-eval tokens",
        "unique tokens",
        "bound",
    ]
    lines = []
    for row in rows:
        lm, mon = row.get("lm_eval") or {}, row.get("monitor") or {}
        agreement = row.get("agreement") or {}
        lines.append(
            [
                row["setting"],
                str(row["items"]),
                f"{_fmt(lm.get('process_s'))} ({lm.get('batch_size', '-')})" if lm else "-",
                _fmt(mon.get("process_s")),
                _times(row.get("speedup_process")),
                _fmt(lm.get("process_cpu_s")),
                _fmt(mon.get("process_cpu_s")),
                _times(row.get("speedup_cpu")),
                _fmt(row.get("lm_eval_eval_s")),
                _fmt(mon.get("eval_s")),
                _times(row.get("speedup_eval")),
                _fmt(agreement.get("identical_share"), ".1%") if agreement else "-",
                _fmt(agreement.get("max_abs_ll_diff"), ".2e") if agreement else "-",
                str(row["tokens"]["lm_eval"]),
                str(row["tokens"]["unique"]),
                f"{row['tokens']['bound']:.1f}x",
            ]
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    return "\n".join(out)


def _run_dict(run: ToolRun | None) -> dict[str, Any] | None:
    if run is None:
        return None
    return {
        "batch_size": run.batch_size,
        "process_s": run.process_s,
        "process_cpu_s": run.process_cpu_s,
        "load_s": run.load_s,
        "eval_s": run.eval_s,
        "scoring_s": run.scoring_s,
        "accuracy": run.accuracy,
        "error": run.error,
        "load_before": run.load_before,
        "process_s_all": run.process_s_all,
        "summary": run.summary,
    }


def _agreement_dict(agreement: Agreement | None) -> dict[str, Any] | None:
    if agreement is None:
        return None
    data = asdict(agreement)
    data["identical_share"] = agreement.identical_share
    data["missing"] = agreement.missing[:10]
    data["missing_count"] = len(agreement.missing)
    if agreement.max_abs_offset is None:
        del data["max_abs_offset"]
    return data


# ------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workdir", type=Path, default=Path(".cache/bench"), help="cache for model, data, runs"
    )
    parser.add_argument("--report", type=Path, default=Path("benchmarks/results.json"))
    parser.add_argument("--only", choices=["lm-eval", "monitor"], help="run one tool only")
    parser.add_argument("--items", type=int, default=300, help="eval items (default 300)")
    parser.add_argument("--shots", default="5,0", help="comma-separated few-shot settings (default 5,0)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--arch", choices=["gpt2", "llama"], default="gpt2")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--positions", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2, help="torch/OMP threads for both tools")
    parser.add_argument(
        "--lm-eval-batch-sizes", default="1,16,64", help="lm-eval batch sizes to try; the fastest is reported"
    )
    parser.add_argument(
        "--monitor-cmd",
        default=f"{shlex.quote(sys.executable)} -m monitor eval",
        help="command that runs `monitor eval` (default: this interpreter's `-m monitor eval`)",
    )
    parser.add_argument(
        "--monitor-args",
        default="--device cpu --dtype float32",
        help="extra arguments for `monitor eval` (default: the device and dtype lm-eval gets)",
    )
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed |Δ log-likelihood|")
    parser.add_argument(
        "--format",
        choices=["text", "chat"],
        default="text",
        help="text (default): prompts as text; chat: through a chat template, with a system prompt "
        "and multi-turn few-shot, on both tools",
    )
    parser.add_argument(
        "--chat-template",
        choices=sorted(CHAT_TEMPLATES),
        default="im-sep",
        help="(chat) the template's style: im-sep (headers end in <|im_sep|>, default) or chatml "
        "(headers end in a newline, which lm-eval moves into the continuation: compared per item "
        "up to an offset)",
    )
    parser.add_argument("--system", default=DEFAULT_SYSTEM, help="(chat) the system prompt")
    parser.add_argument(
        "--prompt",
        default=None,
        help=f"the eval set's prompt template (default {DEFAULT_FORMAT.prompt!r}; chat: the user turn, "
        f"{DEFAULT_CHAT_PROMPT!r})",
    )
    parser.add_argument("--target-delimiter", default=DEFAULT_FORMAT.target_delimiter)
    parser.add_argument("--separator", default=DEFAULT_FORMAT.separator, help="few-shot separator")
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs per tool and setting; the fastest is kept"
    )
    parser.add_argument("--lm-eval-worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Build, run both tools, print the table, write the report; the exit code says whether they agree."""
    args = parse_args(argv)
    if args.lm_eval_worker:
        _lm_eval_worker(json.loads(args.lm_eval_worker))
        return 0
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    shot_settings = [int(s) for s in args.shots.split(",") if s.strip()]
    batch_sizes = [b.strip() for b in args.lm_eval_batch_sizes.split(",") if b.strip()]
    monitor_cmd = shlex.split(args.monitor_cmd)
    run_lm, run_mon = args.only in (None, "lm-eval"), args.only in (None, "monitor")
    if run_mon and not monitor_cli_available(monitor_cmd):
        print(
            f"`{args.monitor_cmd} --help` fails: the monitor eval command is not available; "
            "use --only lm-eval or --monitor-cmd",
            file=sys.stderr,
        )
        return EXIT_SETUP

    workdir: Path = args.workdir.resolve()
    log_dir = workdir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    lex = _Lexicon(random.Random(args.seed))
    spec = ModelSpec(args.arch, args.layers, args.hidden, args.heads, args.vocab, args.positions, args.seed)
    model_dir = ensure_model(workdir, spec, synthetic_corpus(args.seed, lex))
    items = synthetic_items(args.seed, args.items, prefix="q", lex=lex)
    pool = synthetic_items(args.seed, POOL_SIZE, prefix="fs", lex=lex)
    chat: ChatFormat | None = None
    if args.format == "chat":
        chat = ChatFormat(args.chat_template, args.prompt or DEFAULT_CHAT_PROMPT, args.system)
        model_dir = ensure_chat_model(model_dir, chat.template)
        fmt = PromptFormat(chat.prompt, "", args.separator)
    else:
        fmt = PromptFormat(args.prompt or DEFAULT_FORMAT.prompt, args.target_delimiter, args.separator)
    digest = fmt.digest() if chat is None else chat.digest()
    data_root = workdir / "data" / f"items{args.items}-s{args.seed}-{digest}"
    default_k = max(shot_settings) if shot_settings else 0
    paths = write_eval_sets(data_root, items, pool, default_k, fmt, chat)
    if run_lm:
        warm_dataset_cache(paths)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tag = "" if chat is None else f"-chat-{chat.template}"
    # Under chatml the context ends in the header's newline, which lm-eval moves into each
    # continuation: both score the same text, split one token apart (see docs/speed.md).
    per_item_offset = False
    failures: list[str] = []
    setup_errors: list[str] = []
    rows: list[dict[str, Any]] = []
    for shots in shot_settings:
        contexts: dict[str, str] | None = None
        if chat is not None:
            contexts = {item.id: render_chat_context(tokenizer, item, pool, shots, chat) for item in items}
            per_item_offset = any(c != c.rstrip() for c in contexts.values())
        tokens = count_tokens(tokenizer, items, pool, shots, fmt, contexts)
        # Longer rows are left-truncated by lm-eval (and must be by the monitor): a check of
        # its own, and the token counts above no longer describe the work exactly.
        truncated = tokens.max_row > args.positions
        if truncated:
            print(
                f"[{shots}-shot] note: rows of up to {tokens.max_row} tokens exceed the model's "
                f"{args.positions}; both tools must left-truncate them",
                file=sys.stderr,
            )
        row: dict[str, Any] = {
            "setting": f"{shots}-shot",
            "shots": shots,
            "items": len(items),
            "tokens": {**asdict(tokens), "bound": tokens.bound, "truncated": truncated},
        }
        lm_runs: list[ToolRun] = []
        if run_lm:
            for bs in batch_sizes:
                print(f"[{shots}-shot] lm-eval batch size {bs} ...", file=sys.stderr, flush=True)
                lm_run = best_of(
                    args.repeats,
                    functools.partial(
                        run_lm_eval,
                        model_dir=model_dir,
                        paths=paths,
                        shots=shots,
                        batch_size=bs,
                        threads=args.threads,
                        workdir=workdir,
                        log_dir=log_dir,
                        system_instruction=chat.system if chat is not None else None,
                    ),
                )
                if lm_run.error:
                    setup_errors.append(f"{shots}-shot lm-eval bs={bs}: {lm_run.error}")
                    continue
                lm_runs.append(lm_run)
                print(f"    {lm_run.process_s:.1f}s (evaluation {lm_run.eval_s:.1f}s)", file=sys.stderr)
            for lm_run in lm_runs:
                bad = check_rendered_prompts(items, pool, shots, fmt, lm_run, contexts=contexts)
                if bad:
                    failures.append(f"{shots}-shot: lm-eval rendered prompts differently, e.g. {bad[0]}")
            row["lm_eval_runs"] = [_run_dict(r) for r in lm_runs]
            if len(lm_runs) > 1:
                row["lm_eval_batch_agreement"] = _agreement_dict(compare_runs(items, lm_runs[0], lm_runs[-1]))
        best_lm = min(lm_runs, key=lambda r: r.process_s) if lm_runs else None
        row["lm_eval"] = _run_dict(best_lm)
        row["lm_eval_eval_s"] = min((r.eval_s for r in lm_runs if r.eval_s is not None), default=None)

        mon_run: ToolRun | None = None
        if run_mon:
            print(f"[{shots}-shot] monitor ...", file=sys.stderr, flush=True)
            mon_run = best_of(
                args.repeats,
                functools.partial(
                    run_monitor,
                    monitor_cmd=monitor_cmd,
                    extra_args=shlex.split(args.monitor_args),
                    model_dir=model_dir,
                    paths=paths,
                    shots=shots,
                    threads=args.threads,
                    workdir=workdir,
                    log_dir=log_dir,
                    tag=tag,
                ),
            )
            if mon_run.error:
                setup_errors.append(f"{shots}-shot monitor: {mon_run.error}")
            else:
                print(f"    {mon_run.process_s:.1f}s", file=sys.stderr)
                if contexts is not None:
                    bad = check_monitor_prompts(items, contexts, mon_run)
                    if bad:
                        failures.append(
                            f"{shots}-shot: the monitor rendered prompts other than apply_chat_template, "
                            f"e.g. {bad[0]}"
                        )
        row["monitor"] = _run_dict(mon_run)

        if lm_runs and mon_run is not None and not mon_run.error:
            agreements = [
                compare_runs(items, lm_run, mon_run, per_item_offset=per_item_offset) for lm_run in lm_runs
            ]
            worst = min(agreements, key=lambda a: (a.identical_share, -a.max_abs_ll_diff))
            worst_ll = max(agreements, key=lambda a: a.max_abs_ll_diff)
            agreement = Agreement(
                worst.compared,
                worst.identical_predictions,
                worst_ll.max_abs_ll_diff,
                worst.missing,
                worst_ll.worst,
                worst.prediction_mismatches,
                max((a.max_abs_offset for a in agreements if a.max_abs_offset is not None), default=None),
            )
            row["agreement"] = _agreement_dict(agreement)
            row["speedup_process"] = _ratio(best_lm.process_s if best_lm else None, mon_run.process_s)
            row["speedup_cpu"] = _ratio(best_lm.process_cpu_s if best_lm else None, mon_run.process_cpu_s)
            row["speedup_eval"] = _ratio(row["lm_eval_eval_s"], mon_run.eval_s)
            if agreement.identical_share < 1.0:
                failures.append(
                    f"{shots}-shot: {agreement.identical_predictions}/{len(items)} identical predictions, "
                    f"e.g. {agreement.prediction_mismatches[:1]}"
                )
            if agreement.max_abs_ll_diff > args.tolerance:
                failures.append(
                    f"{shots}-shot: log-likelihoods differ by up to {agreement.max_abs_ll_diff:.3g} "
                    f"(tolerance {args.tolerance:g}), e.g. {agreement.worst}"
                )
        rows.append(row)

    report = {
        "version": REPORT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "threads": args.threads,
        "model": asdict(spec),
        "items": len(items),
        "seed": args.seed,
        "format": asdict(fmt),
        **({} if chat is None else {"chat": {**asdict(chat), "jinja": CHAT_TEMPLATES[chat.template]}}),
        "monitor_cmd": args.monitor_cmd if run_mon else None,
        "lm_eval_batch_sizes": batch_sizes if run_lm else None,
        "rows": rows,
        "failures": failures,
        "setup_errors": setup_errors,
    }
    args.report.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=args.report.parent, delete=False, suffix=".tmp") as tmp:
        json.dump(report, tmp, indent=2, ensure_ascii=False)
    Path(tmp.name).replace(args.report)

    print(format_table(rows))
    for row in rows:
        offset = (row.get("agreement") or {}).get("max_abs_offset")
        if offset is not None:
            print(
                f"{row['setting']}: log-likelihoods compared per item up to an offset of at most "
                f"{offset:.3g} (lm-eval scores the header's trailing whitespace, the monitor conditions on it)"
            )
    print(f"report: {args.report}")
    for error in setup_errors:
        print(f"ERROR {error}", file=sys.stderr)
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    if setup_errors:
        return EXIT_SETUP
    return EXIT_DISAGREEMENT if failures else 0


if __name__ == "__main__":
    sys.exit(main())
