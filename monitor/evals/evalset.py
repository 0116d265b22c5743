"""Golden eval sets: the on-disk format, its validation, prompt rendering and content hash.

An eval set is a directory with ``evalset.yaml`` and ``data.jsonl`` (and, for
few-shot prompting, a pool file).  Everything wrong with it is found before
anything runs and reported one problem per line with its file and line.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import random
import re
import string
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from monitor._yaml import LocatedYaml, Strict, load_yaml, pydantic_problems, read_text
from monitor.errors import EvalSetError, Problem
from monitor.evals.filters import Filter, parse_filters

if TYPE_CHECKING:
    from monitor.evals.scorers import Scorer, ScorerContext

SPEC_FILE = "evalset.yaml"
DATA_FILE = "data.jsonl"
FORMAT_VERSION = 1

MULTIPLE_CHOICE_METRICS = frozenset({"acc", "acc_norm"})
GENERATE_METRICS = frozenset({"exact_match", "contains", "token_f1", "regex", "json_valid", "json_fields"})
#: Generation metrics that are pass/fail (0 or 1 per item): the ones ``pass_at_k`` can reduce.
PASS_FAIL_METRICS = frozenset({"exact_match", "contains", "regex", "json_valid", "json_schema"})
#: How many problems of one eval set are listed before the rest are counted.
MAX_PROBLEMS = 50
#: The roles a ``messages`` item may use.
ROLES = ("system", "user", "assistant")
#: The few-shot samplers (``fewshot.sampler``) and the default seed (lm-eval's).
SAMPLERS = ("first_n", "random", "balanced", "similar")
#: The samplers whose examples change with the seed (``fewshot.draws`` needs one).
SEEDED_SAMPLERS = ("random", "balanced")
DEFAULT_FEWSHOT_SEED = 1234
#: Keys of a metric mapping that are not the scorer's options.
METRIC_ENTRY_KEYS = ("name", "key", "filters")
#: Reducers of repeated samples: ``mean``, ``majority`` and ``pass_at_<k>`` (``pass_at_k``: k = repeats).
REDUCER_PATTERN = r"^(mean|majority|pass_at_k|pass_at_[1-9][0-9]*)$"

#: A chat message: (role, content).
Message = tuple[str, str]


class FewshotSpec(Strict):
    """``fewshot:`` in evalset.yaml: ``k`` items of ``pool`` as examples, chosen by ``sampler``.

    ``first_n`` (the default): the first ``k`` in file order, the same for every item.
    ``random``: lm-eval's default sampler, one ``random.Random(seed)`` over the items in
    file order, ``k`` pool items drawn per item.  ``balanced``: the pool grouped by label
    (``label_field`` of the pool items, else the target), each group shuffled with
    ``random.Random(seed)``, then one example per label in turn (labels in the order they
    first appear) until ``k``; the same for every item.  ``similar``: per item, the ``k``
    pool items nearest to it by all-MiniLM-L6-v2 embedding of the rendered prompt
    (cosine; ties by pool order), nearest last (next to the item).

    Under ``format: chat`` each example is a user turn and an assistant turn
    (lm-eval's ``fewshot_as_multiturn``); ``multiturn: false`` puts the
    examples and the item into one user turn instead, joined by ``separator``.

    ``draws: N`` (the seeded samplers ``random`` and ``balanced``) evaluates every
    item under N draws of its examples, with seeds ``seed``, ``seed + 1``, ...: the
    item's score is the mean over the draws, each draw's score is kept, and the run
    reports the spread of the score over the draws.  Draw 0 is the single draw of
    ``draws: 1``.
    """

    k: Annotated[int, Field(ge=0)]
    pool: str
    separator: str = "\n\n"
    multiturn: bool = True
    sampler: Literal["first_n", "random", "balanced", "similar"] = "first_n"
    seed: int = DEFAULT_FEWSHOT_SEED
    label_field: Annotated[str, Field(min_length=1)] | None = None
    draws: Annotated[int, Field(ge=1, le=50)] = 1

    @field_validator("draws")
    @classmethod
    def _draws_need_a_seeded_sampler(cls, value: int, info: ValidationInfo) -> int:
        sampler = info.data.get("sampler", "first_n")
        if value > 1 and sampler not in SEEDED_SAMPLERS:
            raise ValueError(
                f"{value} draws need a seeded sampler (random or balanced); {sampler} picks the same "
                "examples every time"
            )
        return value

    @property
    def per_item(self) -> bool:
        """Whether each item gets its own shots (no shared prefix)."""
        return self.sampler in ("random", "similar")


class GenerationSpec(Strict):
    """``generation:`` in evalset.yaml: how answers are decoded (greedy unless a temperature is set).

    ``repeats`` samples per item are reduced per metric by ``reduce`` (``mean``
    by default; ``majority`` scores the most frequent answer; ``pass_at_k`` the
    unbiased pass@k of Chen et al. 2021, ``pass_at_3`` for k = 3).
    """

    temperature: Annotated[float, Field(ge=0.0, le=5.0)] = 0.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    top_k: Annotated[int, Field(ge=0)] = 0
    seed: int | None = None
    max_new_tokens: Annotated[int, Field(ge=1, le=8192)] | None = None
    stop: tuple[str, ...] | None = None
    repeats: Annotated[int, Field(ge=1, le=100)] = 1
    reduce: dict[str, Annotated[str, Field(pattern=REDUCER_PATTERN)]] = Field(default_factory=dict)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @model_validator(mode="after")
    def _repeats_need_sampling(self) -> GenerationSpec:
        if self.repeats > 1 and self.greedy:
            raise ValueError(
                f"repeats: {self.repeats} repeats of greedy decoding give the same answer {self.repeats} "
                "times; set temperature above 0 to sample, or leave repeats at 1"
            )
        for metric, reducer in self.reduce.items():
            k = pass_at_k_of(reducer, self.repeats)
            if k is not None and k > self.repeats:
                raise ValueError(f"reduce.{metric}: {reducer} needs at least {k} repeats, not {self.repeats}")
        return self


class EvalSetSpec(Strict):
    """The schema of ``evalset.yaml``."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    task: Literal["multiple_choice", "generate"]
    #: ``text``: the prompt is sent as text; ``chat``: as messages, through the model's chat template.
    format: Literal["text", "chat"] = "text"
    prompt: Annotated[str, Field(min_length=1)] | None = None
    #: The system prompt of ``format: chat`` (a format string over item fields, like ``prompt``).
    system: Annotated[str, Field(min_length=1)] | None = None
    description: str = ""
    choices: tuple[str, ...] | None = None
    target_delimiter: str = " "
    fewshot: FewshotSpec | None = None
    #: Plain scorer names or mappings ``{name, key, filters, ...options}`` (see :func:`parse_metric`).
    metrics: tuple[str | dict[str, Any], ...] | None = None
    max_new_tokens: Annotated[int, Field(ge=1, le=8192)] = 64
    stop: tuple[str, ...] = ()
    generation: GenerationSpec | None = None

    @field_validator("prompt", "system")
    @classmethod
    def _prompt_is_a_format_string(cls, value: str | None) -> str | None:
        if value is not None:
            prompt_fields(value)
        return value

    @field_validator("choices")
    @classmethod
    def _choices_unique(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            if len(value) < 2:
                raise ValueError("needs at least two choices")
            if len(set(value)) != len(value):
                raise ValueError("choices must be unique")
        return value

    @model_validator(mode="after")
    def _metrics_fit_the_task(self) -> EvalSetSpec:
        if self.task == "multiple_choice":
            known = MULTIPLE_CHOICE_METRICS
            unknown = [m for m in self.metrics or () if not isinstance(m, str) or m not in known]
            if unknown:
                raise ValueError(
                    f"metrics {unknown} are not available for task {self.task}; choose from {sorted(known)}"
                )
        metric_names: dict[str, str] = {}
        for index, entry in enumerate(self.metrics or ()):
            try:
                parsed = parse_metric(entry)
            except ValueError as exc:
                raise ValueError(f"metrics.{index}.{exc}") from None
            if parsed.key in metric_names:
                raise ValueError(
                    f"metrics.{index}.key: {parsed.key!r} is used twice; give each entry its own key"
                )
            metric_names[parsed.key] = parsed.name
        if self.task == "generate" and self.choices is not None:
            raise ValueError("choices are only for multiple_choice tasks")
        if self.prompt is None and self.format == "text":
            raise ValueError(
                "prompt: a text eval set needs a prompt (only format: chat items may bring messages)"
            )
        if self.system is not None and self.format != "chat":
            raise ValueError("system: a system prompt needs format: chat")
        generation = self.generation
        if generation is not None:
            if self.task == "multiple_choice" and (generation.repeats > 1 or not generation.greedy):
                raise ValueError(
                    "generation: multiple choice is scored by log-likelihood, which does not sample; "
                    "temperature and repeats are for generate tasks"
                )
            if generation.max_new_tokens is not None and "max_new_tokens" in self.model_fields_set:
                raise ValueError("max_new_tokens: give it once, at the top or under generation, not both")
            if generation.stop is not None and "stop" in self.model_fields_set:
                raise ValueError("stop: give it once, at the top or under generation, not both")
            metrics = tuple(metric_names) or (
                ("acc",) if self.task == "multiple_choice" else ("exact_match",)
            )
            for metric, reducer in generation.reduce.items():
                if metric not in metrics:
                    raise ValueError(
                        f"generation.reduce.{metric}: not one of this eval set's metrics {list(metrics)}"
                    )
                if (
                    reducer.startswith("pass_at_")
                    and metric_names.get(metric, metric) not in PASS_FAIL_METRICS
                ):
                    raise ValueError(
                        f"generation.reduce.{metric}: {reducer} needs a pass/fail metric "
                        f"({', '.join(sorted(PASS_FAIL_METRICS))}); {metric} is graded: use mean or majority"
                    )
        return self

    @property
    def decoding(self) -> GenerationSpec:
        """The generation settings in force: ``generation:`` with the top-level max_new_tokens and stop."""
        generation = self.generation or GenerationSpec()
        return generation.model_copy(
            update={
                "max_new_tokens": generation.max_new_tokens or self.max_new_tokens,
                "stop": generation.stop if generation.stop is not None else self.stop,
            }
        )

    @property
    def choice_delimiter(self) -> str:
        """What goes between the context and each choice: ``target_delimiter``, or nothing after a chat
        template's generation prompt unless ``target_delimiter`` is given (as lm-eval does)."""
        if self.format == "chat" and "target_delimiter" not in self.model_fields_set:
            return ""
        return self.target_delimiter


#: Run settings a chat eval set or sampled decoding adds (see :meth:`EvalSet.comparison_settings` and
#: :func:`monitor.evals.loop.chat_settings`); absent from older runs, where they read as None.
CHAT_COMPARED_SETTINGS = (
    "format",
    "system",
    "fewshot_multiturn",
    "choice_delimiter",
    "generation",
    "system_prompt",
)


def chat_template_change(baseline: dict[str, Any] | None, run: dict[str, Any] | None) -> str | None:
    """``chat template changed: sha256:… -> sha256:…`` when two runs' settings name different chat
    templates (one without a template counts as ``none``); None when they agree."""
    before = (baseline or {}).get("chat_template_sha256")
    after = (run or {}).get("chat_template_sha256")
    if before == after:
        return None
    return f"chat template changed: {_short_template(before)} -> {_short_template(after)}"


def _short_template(value: Any) -> str:
    if value is None:
        return "none"
    text = str(value)
    return text[: len("sha256:") + 12] if text.startswith("sha256:") else text


def pass_at_k_of(reducer: str, repeats: int) -> int | None:
    """The k of a ``pass_at_<k>`` reducer (``pass_at_k``: all repeats); None for other reducers."""
    if reducer == "pass_at_k":
        return repeats
    if reducer.startswith("pass_at_"):
        return int(reducer.removeprefix("pass_at_"))
    return None


@dataclass(frozen=True)
class MetricSpec:
    """One ``metrics:`` entry: the scorer ``name``, the ``key`` its score is kept under, the output
    filters and the scorer's options (the mapping less name, key and filters)."""

    name: str
    key: str
    filters: tuple[Filter, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)

    def filter_specs(self) -> list[Any]:
        return [f.spec for f in self.filters]


def parse_metric(entry: str | dict[str, Any]) -> MetricSpec:
    """A ``metrics:`` entry (a plain scorer name or a mapping) as a :class:`MetricSpec`.

    Raises:
        ValueError: ``field: message`` (``name``, ``key``, ``filters[i].regex``, ...).
    """
    if isinstance(entry, str):
        if not entry:
            raise ValueError("name: a metric needs a scorer name")
        return MetricSpec(entry, entry)
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("name: a metric mapping needs name: (the scorer, e.g. exact_match)")
    key = entry.get("key", name)
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ValueError(f"key: {key!r} must be a name of letters, digits, _ . and -")
    filters = parse_filters(entry.get("filters"))
    options = {k: v for k, v in entry.items() if k not in METRIC_ENTRY_KEYS}
    return MetricSpec(name, key, filters, options)


_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class EvalItem:
    """One golden item: its id, all its fields, its target and (multiple choice) its choices."""

    id: str
    fields: dict[str, Any]
    target: Any
    choices: tuple[str, ...] = ()
    line: int = 0
    #: The item's own conversation (``format: chat``), instead of ``prompt`` filled with its fields.
    messages: tuple[tuple[str, str], ...] = ()

    @property
    def gold_index(self) -> int:
        """The index of the target among the choices (multiple choice only)."""
        if isinstance(self.target, int) and not isinstance(self.target, bool):
            return self.target
        return self.choices.index(self.target)

    @property
    def target_text(self) -> str:
        """The target as text: the gold choice, the string, or compact JSON for an object."""
        if self.choices:
            return self.choices[self.gold_index]
        if isinstance(self.target, str):
            return self.target
        return json.dumps(self.target, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class EvalSet:
    """A validated eval set, ready to render prompts for."""

    path: Path
    spec: EvalSetSpec
    items: tuple[EvalItem, ...]
    pool: tuple[EvalItem, ...]
    version: str
    #: Embeds texts for ``fewshot.sampler: similar`` (rows of a 2-D array); None: all-MiniLM-L6-v2.
    embedder: Callable[[Sequence[str]], Any] | None = field(default=None, compare=False, repr=False)
    _cache: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)
    _cache_lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def metrics(self) -> tuple[str, ...]:
        """The keys the configured metrics are kept under, or the task's default."""
        return tuple(m.key for m in self.metric_specs)

    @property
    def metric_specs(self) -> tuple[MetricSpec, ...]:
        """The configured metric entries (the task's default when none are given)."""
        if self.spec.metrics:
            return tuple(parse_metric(m) for m in self.spec.metrics)
        return (
            (MetricSpec("acc", "acc"),)
            if self.task == "multiple_choice"
            else (MetricSpec("exact_match", "exact_match"),)
        )

    def scorers(self, context: ScorerContext | None = None) -> dict[str, Scorer]:
        """The scorer of each generation metric by key, built with ``context`` (default: this eval set's
        folder, no backends; built once and kept).

        Raises:
            EvalSetError: a scorer cannot be built (its located problem).
        """
        if self.task == "multiple_choice":
            return {}
        from monitor.evals.scorers import ScorerContext, make_scorer

        default = context is None
        if default:
            with self._cache_lock:
                found = self._cache.get("scorers")
            if found is not None:
                return dict(found)
        ctx = context or ScorerContext(self.path)
        built: dict[str, Scorer] = {}
        for index, metric in enumerate(self.metric_specs):
            try:
                built[metric.key] = make_scorer(metric.name, metric.options, ctx)
            except ValueError as exc:
                raise EvalSetError(f"metrics.{index}.{exc}", str(self.path / SPEC_FILE)) from None
        if default:
            with self._cache_lock:
                self._cache["scorers"] = built
        return dict(built)

    def scorer_settings(self) -> dict[str, Any]:
        """Each metric's scorer ``settings()`` (by key), where a scorer has any."""
        from monitor.evals.scorers import scorer_settings

        out = {}
        for key, scorer in self.scorers().items():
            found = scorer_settings(scorer)
            if found:
                out[key] = found
        return out

    @property
    def default_fewshot(self) -> int:
        return self.spec.fewshot.k if self.spec.fewshot else 0

    @property
    def is_chat(self) -> bool:
        return self.spec.format == "chat"

    def fewshot_draws(self, k: int) -> int:
        """How many draws of examples a ``k``-shot run evaluates (``fewshot.draws``; 1 at zero shots)."""
        fewshot = self.spec.fewshot
        return fewshot.draws if fewshot is not None and k > 0 else 1

    def draw_seeds(self, k: int) -> tuple[int, ...]:
        """The sampler seed of each draw of a ``k``-shot run (empty when the run draws nothing)."""
        fewshot = self.spec.fewshot
        if fewshot is None or k <= 0 or fewshot.sampler not in SEEDED_SAMPLERS:
            return ()
        return tuple(fewshot.seed + d for d in range(fewshot.draws))

    def for_draw(self, draw: int) -> EvalSet:
        """This eval set with the examples of draw ``draw`` (sampler seed ``seed + draw``, one draw).

        Kept, so that each draw's examples are drawn once however many chunks ask.
        """
        fewshot = self.spec.fewshot
        if fewshot is None or (draw == 0 and fewshot.draws == 1):
            return self

        def make() -> EvalSet:
            one = fewshot.model_copy(update={"seed": fewshot.seed + draw, "draws": 1})
            return replace(
                self,
                spec=self.spec.model_copy(update={"fewshot": one}),
                _cache={},
                _cache_lock=threading.Lock(),
            )

        return self._cached(("draw", draw), make)  # type: ignore[no-any-return]

    def render_prompt(self, item: EvalItem) -> str:
        """The item's own prompt: the format string filled with its fields (a chat item: its last user turn)."""
        if item.messages:
            return item.messages[-1][1]
        assert self.spec.prompt is not None  # the schema asks for one unless items bring messages
        return self.spec.prompt.format(**item.fields)

    def render_fewshot_prefix(self, k: int, item: EvalItem | None = None) -> str:
        """The few-shot examples as lm-evaluation-harness renders them, ending with the separator.

        Without ``item`` this is the prefix every item shares: under a per-item sampler
        (``random``, ``similar``) only the description, after checking that every item's
        shots can be drawn (so an impossible strategy fails before anything runs).
        """
        if k <= 0:
            return self.spec.description
        if item is None and self.spec.fewshot is not None and self.spec.fewshot.per_item:
            self._check_shots(k)
            for each in self.items:
                self.shots_for(each, k)
            return self.spec.description
        shots = self.shots_for(item, k)
        sep = self.spec.fewshot.separator if self.spec.fewshot else ""
        rendered = [self.render_prompt(ex) + self.spec.target_delimiter + ex.target_text for ex in shots]
        return self.spec.description + sep.join(rendered) + sep

    def _check_shots(self, k: int) -> FewshotSpec:
        if self.spec.fewshot is None:
            raise EvalSetError(
                f"fewshot: {k}-shot asked for, but the eval set has no fewshot pool", str(self.path)
            )
        need = k + 1 if self._pool_is_data and self.spec.fewshot.sampler != "first_n" else k
        if need > len(self.pool):
            raise EvalSetError(
                f"fewshot: {k}-shot asked for, but the pool has {len(self.pool)} items", str(self.path)
            )
        return self.spec.fewshot

    @property
    def _pool_is_data(self) -> bool:
        return bool(self.pool) and self.pool == self.items

    def shots_for(self, item: EvalItem | None, k: int) -> tuple[EvalItem, ...]:
        """The ``k`` few-shot examples of ``item`` under ``fewshot.sampler`` (``item`` may be None for
        the samplers whose shots every item shares: first_n and balanced).

        Per-item shots are drawn once per shot count over every item in file order, so chunks
        and resumed runs get the same examples.
        """
        fewshot = self._check_shots(k)
        if fewshot.sampler == "first_n":
            return self.pool[:k]
        if fewshot.sampler == "balanced":
            return self._cached(("balanced", k), lambda: self._balanced(fewshot, k))
        if item is None:
            raise EvalSetError(
                f"fewshot.sampler: {fewshot.sampler} draws shots per item; there is no shared prefix",
                str(self.path),
            )
        table = self._cached(
            (fewshot.sampler, k),
            lambda: self._random(fewshot, k) if fewshot.sampler == "random" else self._similar(k),
        )
        found = table.get(item.id)
        if found is None:  # an item not of this eval set: its own seeded draw
            rnd = random.Random(f"{fewshot.seed}:{item.id}")
            return tuple(rnd.sample(self.pool, k))
        return tuple(self.pool[i] for i in found)

    def _cached(self, key: Any, compute: Callable[[], Any]) -> Any:
        with self._cache_lock:
            if key not in self._cache:
                self._cache[key] = compute()
            return self._cache[key]

    def _random(self, fewshot: FewshotSpec, k: int) -> dict[str, tuple[int, ...]]:
        # lm-eval's default sampler: one Random(seed) per eval set, rnd.sample per item in order; when
        # the pool is the evaluated data, k + 1 are drawn and the item itself dropped.
        rnd = random.Random(fewshot.seed)
        indices = list(range(len(self.pool)))
        out: dict[str, tuple[int, ...]] = {}
        for item in self.items:
            if self._pool_is_data:
                drawn = [i for i in rnd.sample(indices, k + 1) if self.pool[i] != item][:k]
                if len(drawn) < k:  # copies of the item in the pool: lm-eval draws again without them
                    drawn = rnd.sample([i for i in indices if self.pool[i] != item], k)
            else:
                drawn = rnd.sample(indices, k)
            out[item.id] = tuple(drawn)
        return out

    def _balanced(self, fewshot: FewshotSpec, k: int) -> tuple[EvalItem, ...]:
        groups: dict[str, list[EvalItem]] = {}
        for ex in self.pool:
            label = ex.fields.get(fewshot.label_field) if fewshot.label_field else ex.target_text
            groups.setdefault(json.dumps(label, sort_keys=True, default=str), []).append(ex)
        rnd = random.Random(fewshot.seed)
        for members in groups.values():
            rnd.shuffle(members)
        picked: list[EvalItem] = []
        queues = list(groups.values())
        while len(picked) < k:
            for members in queues:
                if members and len(picked) < k:
                    picked.append(members.pop(0))
        return tuple(picked)

    def _similar(self, k: int) -> dict[str, tuple[int, ...]]:
        embed = self.embedder
        if embed is None:
            from monitor.evals.embeddings import MiniLMEmbedder, embeddings_unavailable

            reason = embeddings_unavailable()
            if reason is not None:
                raise EvalSetError(
                    f"fewshot.sampler: similar needs all-MiniLM-L6-v2 embeddings: {reason}",
                    str(self.path / SPEC_FILE),
                )
            embed = MiniLMEmbedder().encode
        import numpy as np

        from monitor.evals.embeddings import cosine_rows

        items = np.asarray(embed([self.render_prompt(item) for item in self.items]))
        pool = np.asarray(embed([self.render_prompt(ex) for ex in self.pool]))
        sims = cosine_rows(items, pool)
        out: dict[str, tuple[int, ...]] = {}
        for row, item in enumerate(self.items):
            order = sorted(range(len(self.pool)), key=lambda j: (-sims[row, j], j))
            if self._pool_is_data:
                order = [j for j in order if self.pool[j] != item]
            out[item.id] = tuple(reversed(order[:k]))  # the nearest example last, next to the item
        return out

    def render_context(self, item: EvalItem, k: int = 0) -> str:
        """The full prompt for one item under a ``k``-shot strategy (``format: text``)."""
        return self.render_fewshot_prefix(k, item) + self.render_prompt(item)

    def render_messages(self, item: EvalItem, k: int = 0) -> tuple[Message, ...]:
        """The conversation sent for one item under a ``k``-shot strategy (``format: chat``), as (role, content).

        The system prompt (and ``description``) first; then, multi-turn, each
        example's prompt as a user turn and its target as the assistant's
        answer; then the item (its own ``messages``, or its prompt as a user
        turn).  With ``fewshot.multiturn: false`` the examples are rendered as
        text (as ``render_fewshot_prefix`` does) at the start of the item's first user turn.
        """
        messages: list[Message] = []
        own = list(item.messages)
        if own and own[0][0] == "system":
            system = own.pop(0)[1]
        else:
            system = self.spec.system.format(**item.fields) if self.spec.system is not None else ""
        system = "\n\n".join(part for part in (system, self.spec.description) if part)
        if system:
            messages.append(("system", system))
        turns = own or [("user", self.render_prompt(item))]
        if k > 0:
            shots = self.shots_for(item, k)
            if self.spec.fewshot is not None and self.spec.fewshot.multiturn:
                for ex in shots:
                    example = [(r, c) for r, c in ex.messages if r != "system"]
                    messages.extend(example or [("user", self.render_prompt(ex))])
                    messages.append(("assistant", ex.target_text))
            else:
                sep = self.spec.fewshot.separator if self.spec.fewshot else ""
                rendered = [
                    self.render_prompt(ex) + self.spec.target_delimiter + ex.target_text for ex in shots
                ]
                first = next(i for i, (role, _) in enumerate(turns) if role == "user")
                turns[first] = ("user", sep.join(rendered) + sep + turns[first][1])
        messages.extend(turns)
        return tuple(messages)

    def continuations(self, item: EvalItem) -> tuple[str, ...]:
        """What is scored after the context for each choice: the delimiter plus the choice."""
        return tuple(self.spec.choice_delimiter + choice for choice in item.choices)

    def settings_digest(self, k: int, *, chat_template_sha256: str | None = None) -> str:
        """A hash of everything that decides what the model is asked: prompt, few-shot setting, decoding,
        and (``format: chat``) the chat template's hash.

        Settings left at their defaults that older eval sets did not have are left out,
        so a text eval set keeps the digest it had before chat formats existed.
        """
        spec = self.spec.model_dump(mode="json")
        for key, default in (("format", "text"), ("system", None), ("generation", None)):
            if spec.get(key) == default:
                del spec[key]
        if spec.get("prompt") is None:
            del spec["prompt"]
        if isinstance(spec.get("fewshot"), dict):
            fewshot = spec["fewshot"]
            if fewshot.get("multiturn") is True:
                del fewshot["multiturn"]
            if fewshot.get("sampler") == "first_n":
                del fewshot["sampler"]
                del fewshot["seed"]  # first_n draws nothing
            if fewshot.get("label_field") is None:
                fewshot.pop("label_field", None)
            if fewshot.get("draws") == 1:
                del fewshot["draws"]
        payload: dict[str, Any] = {"spec": spec, "fewshot_k": k}
        scorers = self.scorer_settings()
        if scorers:
            payload["scorers"] = scorers
        if chat_template_sha256 is not None:
            payload["chat_template_sha256"] = chat_template_sha256
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def comparison_settings(self, k: int) -> dict[str, Any]:
        """What a chat eval set or sampled decoding adds to the run settings that decide comparability.

        Empty for a greedy text eval set (its settings are as before).
        """
        spec = self.spec
        out: dict[str, Any] = {}
        if self.is_chat:
            out["format"] = "chat"
            out["system"] = spec.system
            out["fewshot_multiturn"] = spec.fewshot.multiturn if spec.fewshot and k > 0 else None
            out["choice_delimiter"] = spec.choice_delimiter
        if spec.generation is not None and self.task == "generate":
            out["generation"] = spec.decoding.model_dump(mode="json")
        if self.fewshot_draws(k) > 1:
            out["fewshot_draws"] = self.fewshot_draws(k)
            out["fewshot_draw_seeds"] = list(self.draw_seeds(k))
        return out


def prompt_fields(prompt: str) -> set[str]:
    """The item fields a prompt format string refers to (``{input}``, ``{meta[x]}`` -> ``meta``)."""
    names = set()
    try:
        for _, field_name, _, _ in string.Formatter().parse(prompt):
            if field_name is None:
                continue
            root = field_name.split(".", 1)[0].split("[", 1)[0]
            if not root or root.isdigit():
                raise ValueError("prompt fields must be named, like {input}; positional {} is not allowed")
            names.add(root)
    except ValueError as exc:
        raise ValueError(f"not a valid format string: {exc}") from exc
    return names


def content_hash(directory: Path) -> str:
    """The eval set's version: sha256 over every file's relative path and bytes."""
    digest = hashlib.sha256()
    for file in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = file.relative_to(directory)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        digest.update(rel.as_posix().encode() + b"\0")
        digest.update(file.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def load_evalset(path: str | Path) -> EvalSet:
    """Load and validate the eval set in directory ``path`` (or the lm-evaluation-harness task file
    ``path``, a ``.yaml``/``.yml`` file: :func:`monitor.evals.lmeval.load_task`).

    Every metric's scorer is built here (its options and files checked), so a bad metric is a
    load error naming its line.

    Raises:
        EvalSetError: with one problem per finding, each naming its file and line.
    """
    directory = Path(path)
    if directory.is_file() and directory.suffix in (".yaml", ".yml"):
        try:  # imported by name: lmeval builds on this module (no import cycle)
            load_task = importlib.import_module("monitor.evals.lmeval").load_task
        except ImportError as exc:
            raise EvalSetError(
                f"lm-evaluation-harness task files are not supported in this build ({exc})", str(directory)
            ) from None
        return load_task(directory)
    if not directory.is_dir():
        raise EvalSetError(
            "eval set directory not found" if not directory.exists() else "not a directory", str(directory)
        )
    problems: list[Problem] = []
    spec_path = directory / SPEC_FILE
    spec, located = _load_spec(spec_path, problems)
    items = _load_items(directory / DATA_FILE, spec, problems)
    pool: list[EvalItem] = []
    if spec is not None and spec.fewshot is not None:
        pool_path = directory / spec.fewshot.pool
        if not pool_path.resolve().is_relative_to(directory.resolve()):
            problems.append(
                Problem(str(spec_path), "fewshot.pool: must be a file inside the eval set directory")
            )
        else:
            pool = _load_items(pool_path, spec, problems)
            if spec.fewshot.k > len(pool) and pool:
                problems.append(
                    Problem(
                        str(spec_path),
                        f"fewshot.k: {spec.fewshot.k} is more than the pool's {len(pool)} items",
                    )
                )
            data_ids = {item.id: item.line for item in items}
            for ex in pool:
                if ex.id in data_ids:
                    problems.append(
                        Problem(
                            f"{pool_path}:{ex.line}",
                            f"id {ex.id!r} is also in {DATA_FILE} (line {data_ids[ex.id]}); "
                            "few-shot examples must not be evaluated",
                        )
                    )
    if spec is not None and spec.task == "generate":
        _check_scorers(spec, directory, spec_path, located, problems)
    if problems:
        if len(problems) > MAX_PROBLEMS:
            extra = len(problems) - MAX_PROBLEMS
            problems = [*problems[:MAX_PROBLEMS], Problem(str(directory), f"... and {extra} more problems")]
        raise EvalSetError(problems)
    assert spec is not None
    return EvalSet(directory, spec, tuple(items), tuple(pool), content_hash(directory))


def _load_spec(path: Path, problems: list[Problem]) -> tuple[EvalSetSpec | None, LocatedYaml | None]:
    text, read_problems = read_text(path)
    problems.extend(read_problems)
    if text is None:
        return None, None
    if not text.strip():
        problems.append(Problem(str(path), "file is empty"))
        return None, None
    located, yaml_problems = load_yaml(text, path)
    problems.extend(yaml_problems)
    if located is None:
        return None, None
    if not isinstance(located.data, dict):
        problems.append(Problem(f"{path}:1", "must be a mapping of keys (name, task, prompt, ...)"))
        return None, located
    try:
        return EvalSetSpec.model_validate(located.data), located
    except ValidationError as exc:
        problems.extend(_metric_located(pydantic_problems(exc, path, located), path, located))
        return None, located


def _metric_located(problems: list[Problem], path: Path, located: LocatedYaml) -> list[Problem]:
    """Re-locate a ``metrics.<i>.<field>: ...`` problem raised by the spec's validator on its entry's line."""
    out = []
    for problem in problems:
        match = re.match(r"^\(document\): metrics\.(\d+)\.([A-Za-z_]+)", problem.message)
        if match:
            index, name = int(match.group(1)), match.group(2)
            message = problem.message.removeprefix("(document): ")
            out.append(_metric_problem(path, located, index, name, message))
        else:
            out.append(problem)
    return out


def _metric_problem(path: Path, located: LocatedYaml | None, index: int, name: str, message: str) -> Problem:
    line = located.line_of(("metrics", index, name)) if located is not None else None
    if line is None and located is not None:
        line = located.line_of(("metrics", index))
    return Problem(f"{path}:{line}" if line else str(path), message)


def _check_scorers(
    spec: EvalSetSpec, directory: Path, path: Path, located: LocatedYaml | None, problems: list[Problem]
) -> None:
    """Build every metric's scorer once, so that an unknown scorer or a bad option is found at load."""
    from monitor.evals.scorers import ScorerContext, make_scorer

    context = ScorerContext(directory)
    for index, entry in enumerate(spec.metrics or ()):
        metric = parse_metric(entry)  # the spec's validator parsed it already
        try:
            make_scorer(metric.name, metric.options, context)
        except ValueError as exc:
            text = str(exc)
            name = text.split(":", 1)[0].split(".", 1)[0].split("[", 1)[0]
            problems.append(_metric_problem(path, located, index, name, f"metrics.{index}.{text}"))


def _load_items(path: Path, spec: EvalSetSpec | None, problems: list[Problem]) -> list[EvalItem]:
    text, read_problems = read_text(path)
    problems.extend(read_problems)
    if text is None:
        return []
    items: list[EvalItem] = []
    seen: dict[str, int] = {}
    fields = prompt_fields(spec.prompt) if spec is not None and spec.prompt is not None else set()
    if not text.strip():
        problems.append(Problem(str(path), "file is empty: an eval set needs at least one item"))
        return items
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(Problem(where, f"invalid JSON: {exc.msg} (column {exc.colno})"))
            continue
        if not isinstance(record, dict):
            problems.append(Problem(where, "each line must be a JSON object"))
            continue
        item = _validate_item(record, where, lineno, spec, fields, problems)
        if item is None:
            continue
        if item.id in seen:
            problems.append(Problem(where, f"duplicate id {item.id!r} (first on line {seen[item.id]})"))
            continue
        seen[item.id] = lineno
        items.append(item)
    return items


def _validate_item(
    record: dict[str, Any],
    where: str,
    lineno: int,
    spec: EvalSetSpec | None,
    fields: set[str],
    problems: list[Problem],
) -> EvalItem | None:
    before = len(problems)
    raw_id = record.get("id")
    if raw_id is None or raw_id == "":
        problems.append(Problem(where, "missing field 'id'"))
    elif not isinstance(raw_id, str | int) or isinstance(raw_id, bool):
        problems.append(Problem(where, f"'id' must be a string or an integer, not {type(raw_id).__name__}"))
    if "target" not in record:
        problems.append(Problem(where, "missing field 'target'"))
    messages = _item_messages(record, spec, where, problems) if "messages" in record else ()
    needed = set() if "messages" in record else set(fields)
    if spec is not None and spec.system is not None and not (messages and messages[0][0] == "system"):
        needed |= prompt_fields(spec.system)
    if spec is not None and "messages" not in record and spec.prompt is None:
        problems.append(Problem(where, "no prompt in evalset.yaml and no 'messages' in this item"))
    missing = sorted(needed - record.keys())
    for name in missing:
        problems.append(Problem(where, f"prompt field {{{name}}} is not in this item"))
    choices: tuple[str, ...] = ()
    if spec is not None and spec.task == "multiple_choice":
        choices = _item_choices(record, spec, where, problems)
        target = record.get("target")
        if choices and "target" in record:
            if isinstance(target, bool) or not isinstance(target, str | int):
                problems.append(Problem(where, "target must be one of the choices (or its index)"))
            elif isinstance(target, int) and not 0 <= target < len(choices):
                problems.append(
                    Problem(where, f"target index {target} is out of range for {len(choices)} choices")
                )
            elif isinstance(target, str) and target not in choices:
                problems.append(Problem(where, f"target {target!r} is not among the choices {list(choices)}"))
    elif spec is not None and "target" in record:
        target = record["target"]
        if not isinstance(target, str | dict | list) or target == "":
            problems.append(Problem(where, "target must be a non-empty string or a JSON object"))
    if len(problems) > before or spec is None:
        return None
    if missing:
        return None
    for name, template in (("prompt", None if messages else spec.prompt), ("system", spec.system)):
        if template is None:
            continue
        try:
            template.format(**record)
        except (KeyError, IndexError, AttributeError, TypeError, ValueError) as exc:
            problems.append(Problem(where, f"{name} cannot be filled from this item: {exc!r}"))
            return None
    return EvalItem(str(raw_id), record, record["target"], choices, lineno, messages)


def _item_messages(
    record: dict[str, Any], spec: EvalSetSpec | None, where: str, problems: list[Problem]
) -> tuple[tuple[str, str], ...]:
    """The item's ``messages`` as (role, content) pairs, each checked; () after a problem."""
    raw = record["messages"]
    if spec is not None and spec.format != "chat":
        problems.append(Problem(where, "messages: an item conversation needs format: chat in evalset.yaml"))
        return ()
    if not isinstance(raw, list) or not raw:
        problems.append(Problem(where, "messages: must be a non-empty list of {role, content} objects"))
        return ()
    out: list[tuple[str, str]] = []
    for index, message in enumerate(raw):
        at = f"messages[{index}]"
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            problems.append(Problem(where, f"{at}: must be an object with exactly 'role' and 'content'"))
            return ()
        role, content = message["role"], message["content"]
        if role not in ROLES:
            problems.append(
                Problem(where, f"{at}.role: unknown role {role!r}; use one of {', '.join(ROLES)}")
            )
            return ()
        if not isinstance(content, str) or not content.strip():
            problems.append(Problem(where, f"{at}.content: must be a non-empty string"))
            return ()
        if role == "system" and index != 0:
            problems.append(Problem(where, f"{at}.role: a system message can only come first"))
            return ()
        out.append((role, content))
    if out[-1][0] != "user":
        problems.append(Problem(where, f"messages[{len(out) - 1}].role: the last message must be the user's"))
        return ()
    return tuple(out)


def _item_choices(
    record: dict[str, Any], spec: EvalSetSpec, where: str, problems: list[Problem]
) -> tuple[str, ...]:
    if "choices" in record:
        raw = record["choices"]
        if not isinstance(raw, list) or len(raw) < 2 or not all(isinstance(c, str) for c in raw):
            problems.append(Problem(where, "'choices' must be a list of at least two strings"))
            return ()
        if len(set(raw)) != len(raw):
            problems.append(Problem(where, "'choices' must be unique"))
            return ()
        return tuple(raw)
    if spec.choices is None:
        problems.append(Problem(where, "no choices: give 'choices' in evalset.yaml or in every item"))
        return ()
    return spec.choices


def parse_strategy(strategy: str | int | None, evalset: EvalSet) -> int:
    """Turn a prompt strategy (``zero-shot``, ``5-shot``, ``evalset`` or an int) into a shot count."""
    if strategy is None or strategy == "evalset":
        return evalset.default_fewshot
    if isinstance(strategy, int):
        return strategy
    if strategy == "zero-shot":
        return 0
    if strategy.endswith("-shot") and strategy[:-5].isdigit():
        return int(strategy[:-5])
    raise EvalSetError(f"unknown prompt strategy {strategy!r}; use zero-shot, N-shot or evalset")


def strategy_name(k: int) -> str:
    """The canonical name of a ``k``-shot strategy."""
    return "zero-shot" if k == 0 else f"{k}-shot"


def check_evalsets(paths: Sequence[Path]) -> list[Problem]:
    """Validate several eval sets, collecting every problem instead of stopping at the first."""
    problems: list[Problem] = []
    for path in paths:
        try:
            load_evalset(path)
        except EvalSetError as exc:
            problems.extend(exc.problems)
    return problems
