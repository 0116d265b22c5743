"""lm-evaluation-harness task files, read directly as eval sets.

:func:`load_task` reads one lm-eval task YAML (``dataset_path`` ``json`` /
``csv`` / ``parquet`` with local ``data_files``, or a folder saved with
``datasets``), renders every document's ``doc_to_text`` / ``doc_to_choice`` /
``doc_to_target`` as lm-eval does (Jinja with ``StrictUndefined``, a field
name, an index or a list), and builds an :class:`~monitor.evals.evalset.EvalSet`
from the monitor's own items.  Few-shot contexts follow lm-eval's
``fewshot_context``: the description, then each example as
``text + target_delimiter + answer + fewshot_delimiter``, then the item's text;
the examples are the first n (``first_n``) or lm-eval's default sampler, one
``random.Random(seed)`` drawing ``sample(pool, n)`` for each document in order
(``n + 1`` less the document itself when the pool is the evaluated split).

Keys that need Python code (``!function``, ``process_docs``,
``process_results``, ``class``, ...) and keys the monitor does not reproduce
are refused, one located line each: a task file either gives lm-eval's prompts
exactly or does not load.  ``datasets`` is only needed for a folder saved with
``datasets`` (and imported only then); ``pyarrow`` only for parquet.
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from monitor.errors import EvalSetError, Problem
from monitor.evals.evalset import EvalItem, EvalSet, EvalSetSpec, FewshotSpec

#: lm-eval's default few-shot seed (``simple_evaluate(fewshot_random_seed=1234)``).
DEFAULT_FEWSHOT_SEED = 1234
#: lm-eval's default ``max_gen_toks``.
DEFAULT_MAX_GEN_TOKS = 256
#: The prompt of an lm-eval eval set: each item's rendered ``doc_to_text`` is its ``input`` field.
PROMPT = "{input}"
#: lm-eval's default metrics per output type.
DEFAULT_METRICS = {"multiple_choice": ("acc", "acc_norm"), "generate_until": ("exact_match",)}

#: Keys read from a task file.
SUPPORTED_KEYS = frozenset(
    {
        "task",
        "task_alias",
        "tag",
        "dataset_path",
        "dataset_name",
        "dataset_kwargs",
        "training_split",
        "validation_split",
        "test_split",
        "fewshot_split",
        "fewshot_config",
        "num_fewshot",
        "doc_to_text",
        "doc_to_choice",
        "doc_to_target",
        "description",
        "target_delimiter",
        "fewshot_delimiter",
        "output_type",
        "generation_kwargs",
        "filter_list",
        "metric_list",
        "metadata",
        "repeats",
        "should_decontaminate",
        "doc_to_decontamination_query",
    }
)
#: Keys that run Python code, or stand for code, in lm-eval.
CODE_KEYS = frozenset(
    {
        "process_docs",
        "process_results",
        "custom_dataset",
        "class",
        "doc_to_image",
        "doc_to_audio",
        "use_prompt",
    }
)
FEWSHOT_KEYS = frozenset(
    {
        "sampler",
        "split",
        "fewshot_indices",
        "doc_to_text",
        "doc_to_choice",
        "doc_to_target",
        "target_delimiter",
        "fewshot_delimiter",
    }
)
SAMPLERS = ("default", "first_n")
GENERATION_KEYS = frozenset({"until", "max_gen_toks", "do_sample", "temperature"})
#: lm-eval filters and what they become (``take_first`` is a no-op on one answer per item).
FILTERS = ("regex", "take_first", "lowercase", "uppercase")
EXACT_MATCH_OPTIONS = frozenset({"ignore_case", "ignore_punctuation", "regexes_to_ignore"})
DEFAULT_REGEX = r"#### (\-?[0-9\.\,]+)"
DEFAULT_FALLBACK = "[invalid]"


class _Function:
    """A ``!function module.name`` value: kept so that the refusal can name its key."""

    def __init__(self, value: str) -> None:
        self.value = value


class _TaskLoader(yaml.SafeLoader):
    """The safe loader plus lm-eval's ``!function`` tag (read, never run)."""


_TaskLoader.add_constructor(
    "!function",
    lambda loader, node: _Function(str(loader.construct_scalar(node))),  # type: ignore[arg-type]
)


@dataclass(frozen=True)
class _Located:
    path: Path
    lines: Mapping[tuple[str | int, ...], int]

    def at(self, *loc: str | int) -> str:
        for end in range(len(loc), 0, -1):
            line = self.lines.get(tuple(loc[:end]))
            if line is not None:
                return f"{self.path}:{line}"
        return str(self.path)

    def error(self, message: str, *loc: str | int) -> EvalSetError:
        return EvalSetError([Problem(self.at(*loc), message)])


@dataclass(frozen=True)
class LmEvalTask(EvalSet):
    """An eval set read from an lm-eval task file: each item's context is built as lm-eval builds it.

    ``pool`` holds the few-shot documents (their ``input`` is the few-shot ``doc_to_text``, their
    ``target`` the answer text); the shots of each item are drawn once per shot count, over all
    items in file order, so chunks and resumed runs get the same examples.
    """

    source: Path = field(default=Path())
    sampler: str = "default"
    seed: int = DEFAULT_FEWSHOT_SEED
    #: Leave the item itself out of its shots (the few-shot split is the evaluated split).
    exclude_self: bool = False
    fewshot_target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    #: The rendered ``description`` of each item (lm-eval renders it per document).
    descriptions: Mapping[str, str] = field(default_factory=dict)
    task_digest: str = ""
    _shots_by_k: dict[int, dict[str, tuple[int, ...]]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def shot_indices(self, k: int) -> dict[str, tuple[int, ...]]:
        """The pool indices of each item's ``k`` shots (item id -> indices), drawn as lm-eval draws them."""
        with self._lock:
            found = self._shots_by_k.get(k)
            if found is None:
                found = self._draw(k)
                self._shots_by_k[k] = found
            return found

    def _draw(self, k: int) -> dict[str, tuple[int, ...]]:
        n = len(self.pool)
        need = k + 1 if self.exclude_self and self.sampler == "default" else k
        if k > 0 and need > n:
            raise EvalSetError(
                f"fewshot: {k}-shot asked for, but the few-shot split has {n} documents"
                + (" (the evaluated split: one more is drawn and the item left out)" if need > k else ""),
                str(self.source),
            )
        # a seed set on the spec (a seeded draw of a challenger's shots) wins over the task's
        rnd = random.Random(getattr(self.spec.fewshot, "seed", self.seed))
        docs = [ex.fields["doc"] for ex in self.pool]
        out: dict[str, tuple[int, ...]] = {}
        for item in self.items:
            if k == 0:
                out[item.id] = ()
                continue
            doc = item.fields["doc"]
            if self.sampler == "first_n":
                picks = [i for i in range(n) if not (self.exclude_self and docs[i] == doc)]
                if len(picks) < k:
                    raise EvalSetError(
                        f"fewshot: {k}-shot asked for, but only {len(picks)} documents are left for item "
                        f"{item.id!r}",
                        str(self.source),
                    )
                out[item.id] = tuple(picks[:k])
            elif not self.exclude_self:
                out[item.id] = tuple(rnd.sample(range(n), k))
            else:
                # lm-eval: sample n + 1, drop every copy of the document, keep n; resample if too few.
                drawn = [i for i in rnd.sample(range(n), k + 1) if docs[i] != doc][:k]
                if len(drawn) < k:
                    rest = [i for i in range(n) if docs[i] != doc]
                    if len(rest) < k:
                        raise EvalSetError(
                            f"fewshot: {k}-shot asked for, but only {len(rest)} documents differ from item "
                            f"{item.id!r}",
                            str(self.source),
                        )
                    drawn = rnd.sample(rest, k)
                out[item.id] = tuple(drawn)
        return out

    def _shots_text(self, item: EvalItem, k: int) -> str:
        if k <= 0:
            return ""
        shots = [self.pool[i] for i in self.shot_indices(k)[item.id]]
        return "".join(
            self.render_prompt(ex) + self.fewshot_target_delimiter + ex.target_text + self.fewshot_delimiter
            for ex in shots
        )

    def render_fewshot_prefix(self, k: int, item: EvalItem | None = None) -> str:
        """An item's description and shots (without ``item``: the first item's, after checking that
        every item's ``k`` shots can be drawn; each item has its own, see :meth:`render_context`).

        Raises:
            EvalSetError: ``k`` shots cannot be drawn from the few-shot split.
        """
        if k > 0:
            self.shot_indices(k)
        if item is None:
            if not self.items:
                return ""
            item = self.items[0]
        return self.descriptions.get(item.id, "") + self._shots_text(item, k)

    def render_context(self, item: EvalItem, k: int = 0) -> str:
        """lm-eval's context for one item: description, its ``k`` shots, its text."""
        return self.descriptions.get(item.id, "") + self._shots_text(item, k) + self.render_prompt(item)

    def render_messages(self, item: EvalItem, k: int = 0) -> tuple[tuple[str, str], ...]:
        raise EvalSetError("lm-eval task files are evaluated as text (format: text)", str(self.source))

    def settings_digest(self, k: int, *, chat_template_sha256: str | None = None) -> str:
        """The eval set's digest with the task file's prompt settings folded in."""
        base = super().settings_digest(k, chat_template_sha256=chat_template_sha256)
        return hashlib.sha256(f"{base}:{self.task_digest}".encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------- loading


def load_task(path: Path) -> LmEvalTask:
    """Load the lm-eval task file ``path`` as an eval set.

    Raises:
        EvalSetError: one located line for the first thing lm-eval would do that the monitor does not
            reproduce, or for a document that cannot be rendered.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EvalSetError("task file not found", str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalSetError(f"cannot read: {exc}", str(path)) from None
    try:
        node = yaml.compose(text, Loader=_TaskLoader)
        config = yaml.load(text, Loader=_TaskLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        what = " ".join(part for part in (exc.context, exc.problem) if part)
        raise EvalSetError(f"invalid YAML: {what}", where) from None
    except yaml.YAMLError as exc:
        raise EvalSetError(f"invalid YAML: {exc}", str(path)) from None
    lines: dict[tuple[str | int, ...], int] = {}
    if node is not None:
        _collect_lines(node, (), lines)
    at = _Located(path, lines)
    if not isinstance(config, dict):
        raise at.error("an lm-eval task file must be a mapping of keys (task, dataset_path, ...)")
    _refuse_code(config, at)
    return _build(config, at, text)


def is_task_file(path: Path) -> bool:
    """Whether ``path`` names an lm-eval task file (a ``.yaml`` / ``.yml`` file) rather than an eval set folder."""
    return path.suffix in (".yaml", ".yml") and not path.is_dir()


def _collect_lines(
    node: yaml.Node, prefix: tuple[str | int, ...], out: dict[tuple[str | int, ...], int]
) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            loc = (*prefix, str(key_node.value))
            out[loc] = key_node.start_mark.line + 1
            _collect_lines(value_node, loc, out)
    elif isinstance(node, yaml.SequenceNode):
        for index, child in enumerate(node.value):
            loc = (*prefix, index)
            out[loc] = child.start_mark.line + 1
            _collect_lines(child, loc, out)


def _refuse_code(value: Any, at: _Located, loc: tuple[str | int, ...] = ()) -> None:
    """Refuse the first ``!function`` anywhere in the file, naming its key."""
    if isinstance(value, _Function):
        dotted = ".".join(str(part) for part in loc)
        raise at.error(
            f"{dotted}: !function {value.value} runs Python code, which the monitor does not run; "
            "write it as a Jinja template or a field name",
            *loc,
        )
    if isinstance(value, dict):
        for key, child in value.items():
            _refuse_code(child, at, (*loc, str(key)))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            _refuse_code(child, at, (*loc, index))


def _build(config: dict[str, Any], at: _Located, text: str) -> LmEvalTask:
    for key in config:
        if key in CODE_KEYS:
            raise at.error(f"{key}: needs Python code, which the monitor does not run", key)
        if key == "include":
            raise at.error("include: task inheritance is not supported; write the keys out in one file", key)
        if key not in SUPPORTED_KEYS:
            raise at.error(f"{key}: not supported in lm-eval task files read by the monitor", key)
    output_type = config.get("output_type", "generate_until")
    if output_type not in DEFAULT_METRICS:
        raise at.error(
            f"output_type: {output_type!r} is not supported; use multiple_choice or generate_until",
            "output_type",
        )
    if config.get("repeats", 1) != 1:
        raise at.error("repeats: only 1 is supported", "repeats")
    if config.get("dataset_name") is not None:
        raise at.error(
            "dataset_name: hub dataset configurations are not read; give local data_files", "dataset_name"
        )
    name = str(config.get("task") or at.path.stem)
    target_delimiter = _string(config, "target_delimiter", " ", at)
    fewshot_delimiter = _string(config, "fewshot_delimiter", "\n\n", at)
    description = _string(config, "description", "", at)

    splits = _load_splits(config, at)
    test_split = config.get("test_split")
    eval_split = test_split if test_split is not None else config.get("validation_split")
    if eval_split is None:
        raise at.error("test_split: a task needs test_split (or validation_split) to evaluate", "test_split")
    eval_key = "test_split" if test_split is not None else "validation_split"
    if eval_split not in splits:
        raise at.error(f"{eval_key}: no split {eval_split!r}; the data has {sorted(splits)}", eval_key)

    fewshot_cfg = config.get("fewshot_config") or {}
    if not isinstance(fewshot_cfg, dict):
        raise at.error("fewshot_config: must be a mapping", "fewshot_config")
    for key in fewshot_cfg:
        if key == "process_docs":
            raise at.error("fewshot_config.process_docs: needs Python code", "fewshot_config", key)
        if key not in FEWSHOT_KEYS:
            raise at.error(f"fewshot_config.{key}: not supported", "fewshot_config", key)
    sampler = fewshot_cfg.get("sampler", "default")
    if sampler not in SAMPLERS:
        raise at.error(
            f"fewshot_config.sampler: {sampler!r} is not supported; use default or first_n",
            "fewshot_config",
            "sampler",
        )
    fewshot_split = fewshot_cfg.get("split", config.get("fewshot_split"))
    if fewshot_split is not None:
        pool_split = fewshot_split
    else:  # lm-eval: the training split, else the validation split, else the evaluated docs
        pool_split = next(
            (s for s in (config.get("training_split"), config.get("validation_split")) if s is not None),
            eval_split,
        )
    if pool_split not in splits:
        key = "fewshot_split" if fewshot_split is not None else "training_split"
        raise at.error(f"{key}: no split {pool_split!r}; the data has {sorted(splits)}", key)
    exclude_self = fewshot_split == test_split  # lm-eval's test, None == None included

    num_fewshot = config.get("num_fewshot")
    if num_fewshot is not None and (not isinstance(num_fewshot, int) or num_fewshot < 0):
        raise at.error("num_fewshot: must be a whole number, 0 or more", "num_fewshot")

    templates = {key: config.get(key) for key in ("doc_to_text", "doc_to_choice", "doc_to_target")}
    if templates["doc_to_text"] is None or templates["doc_to_target"] is None:
        missing = "doc_to_text" if templates["doc_to_text"] is None else "doc_to_target"
        raise at.error(f"{missing}: required", missing)
    multiple_choice = output_type == "multiple_choice"
    if multiple_choice and templates["doc_to_choice"] is None:
        raise at.error("doc_to_choice: a multiple_choice task needs its choices", "doc_to_choice")
    fs_templates = {key: fewshot_cfg.get(key, value) for key, value in templates.items()}

    renderer = _Renderer(at)
    docs = splits[eval_split]
    items: list[EvalItem] = []
    descriptions: dict[str, str] = {}
    seen: dict[str, int] = {}
    for index, doc in enumerate(docs):
        item_id = _doc_id(doc, index)
        where = f"{eval_split} document {index}"
        if item_id in seen:
            raise at.error(f"{where}: duplicate id {item_id!r} (first in document {seen[item_id]})")
        seen[item_id] = index
        item = _eval_item(doc, item_id, index, templates, multiple_choice, renderer, where)
        items.append(item)
        if description:
            descriptions[item_id] = renderer.resolve(description, doc, "description", where)
    if not items:
        raise at.error(f"{eval_key}: split {eval_split!r} has no documents", eval_key)

    pool_docs = splits[pool_split]
    indices = fewshot_cfg.get("fewshot_indices")
    if indices is not None:
        if not isinstance(indices, list) or not all(
            isinstance(i, int) and 0 <= i < len(pool_docs) for i in indices
        ):
            raise at.error(
                f"fewshot_config.fewshot_indices: must list indices of the {len(pool_docs)} few-shot documents",
                "fewshot_config",
                "fewshot_indices",
            )
        pool_docs = [pool_docs[i] for i in indices]
    pool = [_pool_item(doc, index, pool_split, fs_templates, renderer) for index, doc in enumerate(pool_docs)]

    metrics = _metrics(config, output_type, at)
    generation = _generation(config, fewshot_delimiter, at) if not multiple_choice else None
    spec_data: dict[str, Any] = {
        "name": _evalset_name(name),
        "task": "multiple_choice" if multiple_choice else "generate",
        "prompt": PROMPT,
        "target_delimiter": target_delimiter,
        "metrics": metrics,
    }
    if pool:
        spec_data["fewshot"] = FewshotSpec(
            k=num_fewshot or 0,
            pool=str(pool_split),
            separator=fewshot_delimiter,
            sampler="random" if sampler == "default" else "first_n",  # named in the settings digest
            seed=DEFAULT_FEWSHOT_SEED,
        )
    if generation is not None:
        spec_data.update(generation)
    try:
        spec = EvalSetSpec.model_validate(spec_data)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        first = str(exc).splitlines()
        raise at.error(f"cannot be expressed as an eval set: {' '.join(first[:3])}") from None
    digest_source = json.dumps(
        {
            "templates": templates,
            "fewshot": fs_templates,
            "description": description,
            "sampler": sampler,
            "fewshot_target_delimiter": fewshot_cfg.get("target_delimiter", target_delimiter),
            "fewshot_delimiter": fewshot_cfg.get("fewshot_delimiter", fewshot_delimiter),
            "exclude_self": exclude_self,
            "pool": [ex.fields for ex in pool],
        },
        sort_keys=True,
        default=str,
    )
    version = hashlib.sha256(text.encode() + b"\0" + _data_digest(items, pool).encode()).hexdigest()
    return LmEvalTask(
        path=at.path.parent,
        spec=spec,
        items=tuple(items),
        pool=tuple(pool),
        version=version,
        source=at.path,
        sampler=sampler,
        seed=DEFAULT_FEWSHOT_SEED,
        exclude_self=exclude_self,
        fewshot_target_delimiter=str(fewshot_cfg.get("target_delimiter", target_delimiter)),
        fewshot_delimiter=str(fewshot_cfg.get("fewshot_delimiter", fewshot_delimiter)),
        descriptions=descriptions,
        task_digest=hashlib.sha256(digest_source.encode()).hexdigest()[:16],
    )


def _string(config: Mapping[str, Any], key: str, default: str, at: _Located) -> str:
    value = config.get(key, default)
    if not isinstance(value, str):
        raise at.error(f"{key}: must be a string", key)
    return value


def _evalset_name(task: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", task).strip("_.-")
    return cleaned or "lm_eval_task"


def _doc_id(doc: Mapping[str, Any], index: int) -> str:
    raw = doc.get("id")
    if raw is None or raw == "" or isinstance(raw, bool) or not isinstance(raw, str | int):
        return str(index)
    return str(raw)


def _data_digest(items: Sequence[EvalItem], pool: Sequence[EvalItem]) -> str:
    payload = json.dumps([[i.fields for i in items], [p.fields for p in pool]], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


# ------------------------------------------------------------------------------------------- rendering


class _Renderer:
    """lm-eval's ``doc_to_*`` resolution: a field name, a Jinja template, an index or a list."""

    def __init__(self, at: _Located) -> None:
        import jinja2

        self._jinja = jinja2
        self._env = jinja2.Environment(
            loader=jinja2.BaseLoader(), undefined=jinja2.StrictUndefined, keep_trailing_newline=True
        )
        self._env.filters["regex_replace"] = lambda s, pattern, repl, count=0: re.sub(
            pattern, repl, s, count=count
        )
        self._compiled: dict[str, Any] = {}
        self._at = at

    def template(self, source: str, key: str) -> Any:
        found = self._compiled.get(source)
        if found is None:
            try:
                found = self._env.from_string(source)
            except self._jinja.TemplateSyntaxError as exc:
                raise self._at.error(
                    f"{key}: not a valid Jinja template: {exc.message} (line {exc.lineno})", key
                ) from None
            self._compiled[source] = found
        return found

    def apply(self, source: str, doc: Mapping[str, Any], key: str, where: str) -> str:
        template = self.template(source, key)
        try:
            return str(template.render(**doc))
        except self._jinja.UndefinedError as exc:
            raise self._at.error(f"{key}: {where}: {exc.message}", key) from None
        except Exception as exc:  # a template error is the task file's, named with its document
            raise self._at.error(f"{key}: {where}: cannot render: {type(exc).__name__}: {exc}", key) from None

    def resolve(self, source: str, doc: Mapping[str, Any], key: str, where: str) -> Any:
        """A field's value when ``source`` names one, else the rendered template (lm-eval's resolve_field)."""
        if source in doc:
            return doc[source]
        return self.apply(source, doc, key, where)

    def text(
        self, source: Any, doc: Mapping[str, Any], has_choices: bool, where: str, key: str = "doc_to_text"
    ) -> str:
        if isinstance(source, int) and not isinstance(source, bool):
            raise self._at.error(f"{key}: an index (several inputs per document) is not supported", key)
        if not isinstance(source, str):
            raise self._at.error(f"{key}: must be a field name or a Jinja template", key)
        if source in doc:
            value = doc[source]
        else:
            value = self.apply(source, doc, key, where)
            if value.isdigit() and has_choices:
                raise self._at.error(
                    f"{key}: {where}: renders as an index (several inputs per document), which is not supported",
                    key,
                )
        if not isinstance(value, str):
            raise self._at.error(f"{key}: {where}: gives {type(value).__name__}, not text", key)
        return value

    def choices(
        self, source: Any, doc: Mapping[str, Any], where: str, key: str = "doc_to_choice"
    ) -> list[Any]:
        if isinstance(source, list):
            value: Any = source
        elif isinstance(source, dict):
            value = list(source.values())
        elif isinstance(source, str):
            if source in doc:
                value = doc[source]
            else:
                rendered = self.apply(source, doc, key, where)
                try:
                    value = ast.literal_eval(rendered)
                except (SyntaxError, ValueError):
                    raise self._at.error(
                        f"{key}: {where}: renders as {rendered[:80]!r}, not a Python list", key
                    ) from None
        else:
            raise self._at.error(f"{key}: must be a field name, a Jinja template, a list or a mapping", key)
        if (
            not isinstance(value, list | tuple)
            or not all(isinstance(c, str) for c in value)
            or len(value) < 2
        ):
            raise self._at.error(f"{key}: {where}: must give a list of at least two strings", key)
        return list(value)

    def target(
        self, source: Any, doc: Mapping[str, Any], has_choices: bool, where: str, key: str = "doc_to_target"
    ) -> Any:
        if isinstance(source, int) and not isinstance(source, bool):
            return source
        if isinstance(source, list):
            return source
        if not isinstance(source, str):
            raise self._at.error(f"{key}: must be a field name, a Jinja template or an index", key)
        if source in doc:
            return doc[source]
        rendered = self.apply(source, doc, key, where)
        if rendered.isdigit() and has_choices:
            return ast.literal_eval(rendered)
        if len(rendered) >= 2 and rendered[0] == "[" and rendered[-1] == "]":
            try:
                return ast.literal_eval(rendered)
            except (SyntaxError, ValueError):
                return rendered
        return rendered


def _eval_item(
    doc: Mapping[str, Any],
    item_id: str,
    index: int,
    templates: Mapping[str, Any],
    multiple_choice: bool,
    renderer: _Renderer,
    where: str,
) -> EvalItem:
    has_choices = templates["doc_to_choice"] is not None
    text = renderer.text(templates["doc_to_text"], doc, has_choices, where)
    choices = renderer.choices(templates["doc_to_choice"], doc, where) if has_choices else None
    target = renderer.target(templates["doc_to_target"], doc, has_choices, where)
    if isinstance(target, list):
        raise renderer._at.error(
            f"doc_to_target: {where}: several targets are not supported", "doc_to_target"
        )
    fields: dict[str, Any] = {"id": item_id, "input": text}
    if multiple_choice:
        assert choices is not None
        if isinstance(target, str):
            if target not in choices:
                raise renderer._at.error(
                    f"doc_to_target: {where}: {target!r} is not among the choices {choices}", "doc_to_target"
                )
            target = choices.index(target)
        if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < len(choices):
            raise renderer._at.error(
                f"doc_to_target: {where}: {target!r} is not an index of its {len(choices)} choices",
                "doc_to_target",
            )
        fields.update(target=target, choices=choices, doc=dict(doc))
        return EvalItem(item_id, fields, target, tuple(choices), index + 1)
    if choices is not None:  # lm-eval: a generate task with choices scores against choices[target]
        if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < len(choices):
            raise renderer._at.error(
                f"doc_to_target: {where}: {target!r} is not an index of its {len(choices)} choices",
                "doc_to_target",
            )
        target = choices[target]
    target = str(target)
    if not target:
        raise renderer._at.error(f"doc_to_target: {where}: the target is empty", "doc_to_target")
    fields.update(target=target, doc=dict(doc))
    return EvalItem(item_id, fields, target, (), index + 1)


def _pool_item(
    doc: Mapping[str, Any], index: int, split: str, templates: Mapping[str, Any], renderer: _Renderer
) -> EvalItem:
    """A few-shot document: its text and its answer as lm-eval's ``build_qa_turn`` writes it."""
    where = f"few-shot {split} document {index}"
    has_choices = templates["doc_to_choice"] is not None
    text = renderer.text(templates["doc_to_text"], doc, has_choices, where, "fewshot doc_to_text")
    choices = renderer.choices(templates["doc_to_choice"], doc, where) if has_choices else None
    answer = renderer.target(templates["doc_to_target"], doc, has_choices, where)
    if choices and isinstance(answer, int) and not isinstance(answer, bool):
        if not 0 <= answer < len(choices):
            raise renderer._at.error(
                f"doc_to_target: {where}: {answer} is not an index of its {len(choices)} choices",
                "doc_to_target",
            )
        answer = choices[answer]
    elif isinstance(answer, list):
        answer = answer[0] if answer else ""
    if not isinstance(answer, str) or answer == "":
        raise renderer._at.error(
            f"doc_to_target: {where}: the answer is {answer!r}; a few-shot answer must be non-empty text",
            "doc_to_target",
        )
    item_id = f"{split}/{_doc_id(doc, index)}"
    fields: dict[str, Any] = {"id": item_id, "input": text, "target": answer}
    if choices is not None:
        fields["choices"] = choices
    fields["doc"] = dict(doc)
    return EvalItem(item_id, fields, answer, (), index + 1)


# ------------------------------------------------------------------------------------ metrics, decoding


def _metrics(config: Mapping[str, Any], output_type: str, at: _Located) -> list[Any]:
    """lm-eval's metric_list x filter_list as the monitor's metric entries (see docs/lm-eval.md)."""
    raw = config.get("metric_list")
    entries: list[tuple[str, dict[str, Any], int | None]] = []
    if raw is None:
        entries = [(name, {}, None) for name in DEFAULT_METRICS[output_type]]
    else:
        if not isinstance(raw, list) or not raw:
            raise at.error("metric_list: must be a list of {metric: ...} entries", "metric_list")
        for index, entry in enumerate(raw):
            if not isinstance(entry, dict) or "metric" not in entry:
                raise at.error(f"metric_list[{index}]: needs a metric", "metric_list", index)
            metric = entry["metric"]
            allowed = ("acc", "acc_norm") if output_type == "multiple_choice" else ("exact_match",)
            if metric not in allowed:
                raise at.error(
                    f"metric_list[{index}].metric: {metric!r} is not supported for {output_type}; "
                    f"use {', '.join(allowed)}",
                    "metric_list",
                    index,
                )
            if entry.get("aggregation", "mean") != "mean":
                raise at.error(
                    f"metric_list[{index}].aggregation: only mean is supported", "metric_list", index
                )
            if entry.get("higher_is_better", True) is not True:
                raise at.error(f"metric_list[{index}].higher_is_better: must be true", "metric_list", index)
            options = {
                k: v for k, v in entry.items() if k not in ("metric", "aggregation", "higher_is_better")
            }
            for key in options:
                if metric != "exact_match" or key not in EXACT_MATCH_OPTIONS:
                    raise at.error(f"metric_list[{index}].{key}: not supported", "metric_list", index, key)
            entries.append((metric, options, index))
    if output_type == "multiple_choice":
        if config.get("filter_list") is not None:
            raise at.error(
                "filter_list: filters apply to generated answers, not to multiple_choice", "filter_list"
            )
        return [name for name, _, _ in entries]
    pipelines = _filter_pipelines(config, at)
    metrics: list[Any] = []
    for filter_name, filters in pipelines:
        for metric, options, _ in entries:
            mapped: dict[str, Any] = {"name": metric, "normalize": "none", **options}
            if filter_name is not None:
                mapped["key"] = _evalset_name(f"{metric}_{filter_name}").replace(".", "_").replace("-", "_")
            if filters:
                mapped["filters"] = filters
            metrics.append(mapped)
    return metrics


def _filter_pipelines(config: Mapping[str, Any], at: _Located) -> list[tuple[str | None, list[Any]]]:
    raw = config.get("filter_list")
    if raw is None:
        return [(None, [])]
    if not isinstance(raw, list) or not raw:
        raise at.error("filter_list: must be a list of {name, filter} entries", "filter_list")
    out: list[tuple[str | None, list[Any]]] = []
    names: set[str] = set()
    for index, pipeline in enumerate(raw):
        if not isinstance(pipeline, dict) or set(pipeline) != {"name", "filter"}:
            raise at.error(f"filter_list[{index}]: needs exactly name and filter", "filter_list", index)
        name = str(pipeline["name"])
        if name in names:
            raise at.error(f"filter_list[{index}].name: {name!r} is given twice", "filter_list", index)
        names.add(name)
        steps: list[Any] = []
        functions = pipeline["filter"]
        if not isinstance(functions, list):
            raise at.error(f"filter_list[{index}].filter: must be a list", "filter_list", index, "filter")
        for step_index, function in enumerate(functions):
            loc = ("filter_list", index, "filter", step_index)
            where = f"filter_list[{index}].filter[{step_index}]"
            if not isinstance(function, dict) or "function" not in function:
                raise at.error(f"{where}: needs a function", *loc)
            kind = function["function"]
            options = {k: v for k, v in function.items() if k != "function"}
            if kind not in FILTERS:
                raise at.error(f"{where}.function: {kind!r} is not supported; use {', '.join(FILTERS)}", *loc)
            if kind == "take_first":
                continue  # one answer per item: taking the first is what happens anyway
            if kind in ("lowercase", "uppercase"):
                if options:
                    raise at.error(f"{where}: {kind} takes no options", *loc)
                steps.append(kind)
                continue
            steps.extend(_regex_filter(options, where, loc, at))
        out.append((name, steps))
    return out


def _regex_filter(
    options: Mapping[str, Any], where: str, loc: tuple[str | int, ...], at: _Located
) -> list[Any]:
    """lm-eval's regex filter: ``findall``, the first (0) or last (-1) match, its first non-empty group,
    stripped (the monitor's ``regex`` filter without ``group:`` does the same)."""
    unknown = set(options) - {"regex_pattern", "group_select", "fallback"}
    if unknown:
        raise at.error(f"{where}.{sorted(unknown)[0]}: not supported", *loc)
    pattern = options.get("regex_pattern", DEFAULT_REGEX)
    try:
        re.compile(pattern)
    except (re.error, TypeError) as exc:
        raise at.error(f"{where}.regex_pattern: does not compile: {exc}", *loc) from None
    select = options.get("group_select", 0)
    if select not in (0, -1):
        raise at.error(f"{where}.group_select: only 0 (first match) and -1 (last) are supported", *loc)
    step: dict[str, Any] = {"regex": pattern, "take": "first" if select == 0 else "last"}
    fallback = options.get("fallback", DEFAULT_FALLBACK)
    if fallback != DEFAULT_FALLBACK:
        step["fallback"] = str(fallback)
    return [step]


def _generation(config: Mapping[str, Any], fewshot_delimiter: str, at: _Located) -> dict[str, Any]:
    """``generation_kwargs`` as the eval set's ``max_new_tokens`` and ``stop``, with lm-eval's defaults."""
    raw = config.get("generation_kwargs")
    if raw is None:
        return {"max_new_tokens": DEFAULT_MAX_GEN_TOKS, "stop": (fewshot_delimiter,)}
    if not isinstance(raw, dict):
        raise at.error("generation_kwargs: must be a mapping", "generation_kwargs")
    for key in raw:
        if key not in GENERATION_KEYS:
            raise at.error(f"generation_kwargs.{key}: not supported", "generation_kwargs", key)
    temperature = raw.get("temperature", 0.0)
    if raw.get("do_sample", False) or not isinstance(temperature, int | float) or float(temperature) != 0.0:
        raise at.error(
            "generation_kwargs: only greedy decoding (do_sample: false, temperature: 0) is supported",
            "generation_kwargs",
        )
    until = raw.get("until", [fewshot_delimiter])
    if isinstance(until, str):
        until = [until]
    if not isinstance(until, list) or not all(isinstance(s, str) for s in until):
        raise at.error(
            "generation_kwargs.until: must be a string or a list of strings", "generation_kwargs", "until"
        )
    max_gen = raw.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)
    if not isinstance(max_gen, int) or not 1 <= max_gen <= 8192:
        raise at.error(
            "generation_kwargs.max_gen_toks: must be 1 to 8192", "generation_kwargs", "max_gen_toks"
        )
    return {"max_new_tokens": max_gen, "stop": tuple(until)}


# ---------------------------------------------------------------------------------------------- data


def _load_splits(config: Mapping[str, Any], at: _Located) -> dict[str, list[dict[str, Any]]]:
    """The documents of every split, as ``datasets`` would give them to lm-eval."""
    dataset_path = config.get("dataset_path")
    if not isinstance(dataset_path, str) or not dataset_path:
        raise at.error(
            "dataset_path: required (json, csv, parquet, or a folder saved with datasets)", "dataset_path"
        )
    kwargs = config.get("dataset_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise at.error("dataset_kwargs: must be a mapping", "dataset_kwargs")
    for key in kwargs:
        if key not in ("data_files", "trust_remote_code"):
            raise at.error(f"dataset_kwargs.{key}: not supported", "dataset_kwargs", key)
    base = at.path.parent
    if dataset_path not in ("json", "csv", "parquet"):
        folder = Path(dataset_path)
        folder = folder if folder.is_absolute() else base / folder
        if not folder.is_dir():
            raise at.error(
                f"dataset_path: {dataset_path!r} is neither json/csv/parquet nor a local folder saved with "
                "datasets (hub datasets are not downloaded)",
                "dataset_path",
            )
        return _load_saved(folder, at)
    data_files = kwargs.get("data_files")
    if data_files is None:
        raise at.error(
            f"dataset_kwargs.data_files: dataset_path {dataset_path} needs local data files", "dataset_path"
        )
    if isinstance(data_files, str | list):
        data_files = {"train": data_files}
    if not isinstance(data_files, dict):
        raise at.error(
            "dataset_kwargs.data_files: a file, a list of files or a mapping of split to files",
            "dataset_kwargs",
        )
    splits: dict[str, list[dict[str, Any]]] = {}
    for split, files in data_files.items():
        names = [files] if isinstance(files, str) else files
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise at.error(
                f"dataset_kwargs.data_files.{split}: a file or a list of files",
                "dataset_kwargs",
                "data_files",
                str(split),
            )
        rows: list[dict[str, Any]] = []
        for name in names:
            for file in _expand(name, base):
                loc = ("dataset_kwargs", "data_files", str(split))
                if not file.is_file():
                    raise at.error(f"dataset_kwargs.data_files.{split}: {file}: file not found", *loc)
                rows.extend(_read_file(dataset_path, file, at, loc))
        splits[str(split)] = _unify(rows)
    return splits


def _expand(name: str, base: Path) -> list[Path]:
    path = Path(name)
    path = path if path.is_absolute() else base / path
    if any(ch in name for ch in "*?["):
        return sorted(path.parent.glob(path.name)) or [path]
    return [path]


def _read_file(kind: str, file: Path, at: _Located, loc: tuple[str | int, ...]) -> list[dict[str, Any]]:
    where = f"{file}"
    if kind == "json":
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise at.error(f"{where}: cannot read: {exc}", *loc) from None
        if text.lstrip().startswith("["):
            try:
                records = json.loads(text)
            except json.JSONDecodeError as exc:
                raise EvalSetError(f"invalid JSON: {exc.msg}", f"{file}:{exc.lineno}") from None
        else:
            records = []
            for lineno, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise EvalSetError(
                        f"invalid JSON: {exc.msg} (column {exc.colno})", f"{file}:{lineno}"
                    ) from None
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise EvalSetError("each document must be a JSON object", str(file))
        return records
    if kind == "csv":
        import pandas as pd

        try:
            frame = pd.read_csv(file)
        except Exception as exc:  # pandas raises several parser errors
            raise EvalSetError(f"cannot read CSV: {exc}", str(file)) from None
        frame = frame.astype(object).where(frame.notna(), None)
        return [dict(row) for row in frame.to_dict(orient="records")]
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise EvalSetError("parquet data files need pyarrow: pip install pyarrow", str(file)) from None
    try:
        return [dict(row) for row in pq.read_table(file).to_pylist()]
    except Exception as exc:  # pyarrow's errors
        raise EvalSetError(f"cannot read parquet: {exc}", str(file)) from None


def _unify(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One schema for a split, as Arrow gives it: missing keys are None, ints beside floats become floats."""
    columns: dict[str, None] = {}
    for row in rows:
        for key in row:
            columns.setdefault(key, None)
    floats = {
        key
        for key in columns
        if any(isinstance(row.get(key), float) for row in rows)
        and all(
            row.get(key) is None
            or (isinstance(row.get(key), int | float) and not isinstance(row.get(key), bool))
            for row in rows
        )
    }
    out = []
    for row in rows:
        doc = {key: row.get(key) for key in columns}
        for key in floats:
            value = doc[key]
            if isinstance(value, int | float):
                doc[key] = float(value)
        out.append(doc)
    return out


def _load_saved(folder: Path, at: _Located) -> dict[str, list[dict[str, Any]]]:
    try:
        import datasets
    except ImportError:
        raise at.error(
            "dataset_path: a folder saved with datasets needs the datasets package: pip install datasets",
            "dataset_path",
        ) from None
    try:
        loaded = datasets.load_from_disk(str(folder))
    except Exception as exc:  # datasets raises FileNotFoundError and its own errors
        raise at.error(
            f"dataset_path: {folder}: not a dataset saved with datasets: {exc}", "dataset_path"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        return {str(name): [dict(row) for row in split.to_list()] for name, split in loaded.items()}
    return {"train": [dict(row) for row in loaded.to_list()]}
