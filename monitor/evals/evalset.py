"""Golden eval sets: the on-disk format, its validation, prompt rendering and content hash.

An eval set is a directory with ``evalset.yaml`` and ``data.jsonl`` (and, for
few-shot prompting, a pool file).  Everything wrong with it is found before
anything runs and reported one problem per line with its file and line.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from monitor._yaml import Strict, load_yaml, pydantic_problems, read_text
from monitor.errors import EvalSetError, Problem

SPEC_FILE = "evalset.yaml"
DATA_FILE = "data.jsonl"
FORMAT_VERSION = 1

MULTIPLE_CHOICE_METRICS = frozenset({"acc", "acc_norm"})
GENERATE_METRICS = frozenset({"exact_match", "contains", "token_f1", "regex", "json_valid", "json_fields"})
#: How many problems of one eval set are listed before the rest are counted.
MAX_PROBLEMS = 50


class FewshotSpec(Strict):
    """``fewshot:`` in evalset.yaml: the first ``k`` items of ``pool`` in file order."""

    k: Annotated[int, Field(ge=0)]
    pool: str
    separator: str = "\n\n"


class EvalSetSpec(Strict):
    """The schema of ``evalset.yaml``."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    task: Literal["multiple_choice", "generate"]
    prompt: Annotated[str, Field(min_length=1)]
    description: str = ""
    choices: tuple[str, ...] | None = None
    target_delimiter: str = " "
    fewshot: FewshotSpec | None = None
    metrics: tuple[str, ...] | None = None
    max_new_tokens: Annotated[int, Field(ge=1, le=8192)] = 64
    stop: tuple[str, ...] = ()

    @field_validator("prompt")
    @classmethod
    def _prompt_is_a_format_string(cls, value: str) -> str:
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
        known = MULTIPLE_CHOICE_METRICS if self.task == "multiple_choice" else GENERATE_METRICS
        unknown = [m for m in self.metrics or () if m not in known]
        if unknown:
            raise ValueError(
                f"metrics {unknown} are not available for task {self.task}; choose from {sorted(known)}"
            )
        if self.task == "generate" and self.choices is not None:
            raise ValueError("choices are only for multiple_choice tasks")
        return self


@dataclass(frozen=True)
class EvalItem:
    """One golden item: its id, all its fields, its target and (multiple choice) its choices."""

    id: str
    fields: dict[str, Any]
    target: Any
    choices: tuple[str, ...] = ()
    line: int = 0

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

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def metrics(self) -> tuple[str, ...]:
        """The configured metrics, or the task's default."""
        if self.spec.metrics:
            return self.spec.metrics
        return ("acc",) if self.task == "multiple_choice" else ("exact_match",)

    @property
    def default_fewshot(self) -> int:
        return self.spec.fewshot.k if self.spec.fewshot else 0

    def render_prompt(self, item: EvalItem) -> str:
        """The item's own prompt: the format string filled with its fields."""
        return self.spec.prompt.format(**item.fields)

    def render_fewshot_prefix(self, k: int) -> str:
        """The few-shot examples as lm-evaluation-harness renders them, ending with the separator."""
        if k <= 0:
            return self.spec.description
        if self.spec.fewshot is None:
            raise EvalSetError(
                f"fewshot: {k}-shot asked for, but the eval set has no fewshot pool", str(self.path)
            )
        if k > len(self.pool):
            raise EvalSetError(
                f"fewshot: {k}-shot asked for, but the pool has {len(self.pool)} items", str(self.path)
            )
        sep = self.spec.fewshot.separator
        shots = [self.render_prompt(ex) + self.spec.target_delimiter + ex.target_text for ex in self.pool[:k]]
        return self.spec.description + sep.join(shots) + sep

    def render_context(self, item: EvalItem, k: int = 0) -> str:
        """The full prompt for one item under a ``k``-shot strategy."""
        return self.render_fewshot_prefix(k) + self.render_prompt(item)

    def continuations(self, item: EvalItem) -> tuple[str, ...]:
        """What is scored after the context for each choice: the delimiter plus the choice."""
        return tuple(self.spec.target_delimiter + choice for choice in item.choices)

    def settings_digest(self, k: int) -> str:
        """A hash of everything that decides what the model is asked: prompt, few-shot setting, decoding."""
        spec = self.spec.model_dump(mode="json")
        payload = json.dumps({"spec": spec, "fewshot_k": k}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


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
    """Load and validate the eval set in directory ``path``.

    Raises:
        EvalSetError: with one problem per finding, each naming its file and line.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise EvalSetError(
            "eval set directory not found" if not directory.exists() else "not a directory", str(directory)
        )
    problems: list[Problem] = []
    spec_path = directory / SPEC_FILE
    spec = _load_spec(spec_path, problems)
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
    if problems:
        if len(problems) > MAX_PROBLEMS:
            extra = len(problems) - MAX_PROBLEMS
            problems = [*problems[:MAX_PROBLEMS], Problem(str(directory), f"... and {extra} more problems")]
        raise EvalSetError(problems)
    assert spec is not None
    return EvalSet(directory, spec, tuple(items), tuple(pool), content_hash(directory))


def _load_spec(path: Path, problems: list[Problem]) -> EvalSetSpec | None:
    text, read_problems = read_text(path)
    problems.extend(read_problems)
    if text is None:
        return None
    if not text.strip():
        problems.append(Problem(str(path), "file is empty"))
        return None
    located, yaml_problems = load_yaml(text, path)
    problems.extend(yaml_problems)
    if located is None:
        return None
    if not isinstance(located.data, dict):
        problems.append(Problem(f"{path}:1", "must be a mapping of keys (name, task, prompt, ...)"))
        return None
    try:
        return EvalSetSpec.model_validate(located.data)
    except ValidationError as exc:
        problems.extend(pydantic_problems(exc, path, located))
        return None


def _load_items(path: Path, spec: EvalSetSpec | None, problems: list[Problem]) -> list[EvalItem]:
    text, read_problems = read_text(path)
    problems.extend(read_problems)
    if text is None:
        return []
    items: list[EvalItem] = []
    seen: dict[str, int] = {}
    fields = prompt_fields(spec.prompt) if spec is not None else set()
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
    missing = sorted(fields - record.keys())
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
    try:
        spec.prompt.format(**record)
    except (KeyError, IndexError, AttributeError, TypeError, ValueError) as exc:
        problems.append(Problem(where, f"prompt cannot be filled from this item: {exc!r}"))
        return None
    return EvalItem(str(raw_id), record, record["target"], choices, lineno)


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
