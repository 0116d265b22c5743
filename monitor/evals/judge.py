"""The ``judge`` scorer: a configured model grades each output against a rubric.

A metric entry of ``evalset.yaml``::

    - name: judge
      key: helpful                  # optional, as for every metric
      model: judge-model            # a model of monitor.yaml (hf or openai), loaded through the service
      rubric: rubric.txt            # a file of the eval set folder, or the rubric's text inline
      scale: binary                 # binary (PASS / FAIL) or 1-5
      max_new_tokens: 64
      format: auto                  # auto | text | chat: how the rubric is sent to the judge
      calibration: calibration.jsonl   # people's labels, re-scored every run (see monitor.analysis.judge)
      min_agreement: 0.6            # the kappa below which the judge is not trusted

The rubric is a Python format string, as the eval set's ``prompt``: ``{output}`` is
the (filtered) output being judged, ``{reference}`` the item's target as text, and
every other ``{name}`` an item field (``{{`` and ``}}`` are literal braces).

The judge decodes greedily, in one batch per chunk (:meth:`JudgeScorer.score_batch`).
Its answer is parsed strictly (:func:`parse_verdict`): the verdict is the answer's
last non-empty line, which must be the verdict alone (``PASS``; ``Verdict: FAIL``;
``Score: 4``; ``[[4]]``; ``4/5``).  Anything else is a :class:`ScoreError`, an
item error on that metric, never a score.  Scores are normalised to 0..1
(binary: 1 for PASS; 1-5: ``(score - 1) / 4``) so paired tests and verdicts
read them as any other graded metric.

:meth:`JudgeScorer.settings` carries the judge's model fingerprint (once loaded),
the rubric's hash and the scale: a changed judge never pairs with the old one.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor.backends.base import (
    Backend,
    ChatBackend,
    ChatTemplate,
    GenerationRequest,
    GenerationResult,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    ModelFingerprint,
    ProgressCallback,
)
from monitor.errors import EvalSetError
from monitor.evals.evalset import EvalItem, prompt_fields
from monitor.evals.scorers import ScoreError, ScorerContext, check_options

#: The options of a ``judge`` metric entry.
JUDGE_OPTIONS = ("model", "rubric", "scale", "max_new_tokens", "format", "calibration", "min_agreement")
SCALES = ("binary", "1-5")
FORMATS = ("auto", "text", "chat")
DEFAULT_MAX_NEW_TOKENS = 64
DEFAULT_MIN_AGREEMENT = 0.6
#: The rubric fields that are not item fields.
OUTPUT_FIELD = "output"
REFERENCE_FIELD = "reference"
#: How much of an unparseable answer an item error quotes.
_QUOTED = 120

_BINARY_WORDS = {
    "pass": 1,
    "yes": 1,
    "correct": 1,
    "true": 1,
    "1": 1,
    "fail": 0,
    "no": 0,
    "incorrect": 0,
    "false": 0,
    "0": 0,
}
_LABEL_PREFIX = re.compile(
    r"^(?:final\s+)?(?:verdict|score|grade|rating|answer|judgement|judgment)\s*[:=]\s*", re.IGNORECASE
)
_BRACKETED = re.compile(r"^\[\[\s*(.*?)\s*\]\]$")
_FIVE_POINT = re.compile(r"([1-5])(?:\s*(?:/|out\s+of)\s*5)?", re.IGNORECASE)
_DECORATION = " \t*_`\"'"


# --- the scale and the strict parse -----------------------------------------------------------------


def parse_verdict(answer: str, scale: str) -> int:
    """The label of a judge's answer on ``scale`` (binary: 1 PASS, 0 FAIL; 1-5: the score).

    The verdict is the last non-empty line, alone: Markdown emphasis, quotes, a final
    full stop, ``[[...]]`` and a leading ``Verdict:`` / ``Score:`` / ``Grade:`` /
    ``Rating:`` / ``Answer:`` are allowed around it.  Binary verdicts: PASS, YES,
    CORRECT, TRUE, 1 and FAIL, NO, INCORRECT, FALSE, 0 (any case); 1-5: a whole
    number 1 to 5, optionally ``/5`` or ``out of 5``.

    Raises:
        ScoreError: the answer is empty or its last line is not a verdict on the scale.
    """
    lines = [line for line in answer.splitlines() if line.strip()]
    if not lines:
        raise ScoreError(f"the judge's answer is empty; expected {_expected(scale)}")
    text = lines[-1].strip(_DECORATION).rstrip(".").strip(_DECORATION)
    bracketed = _BRACKETED.fullmatch(text)
    if bracketed:
        text = bracketed.group(1)
    text = _LABEL_PREFIX.sub("", text, count=1).strip(_DECORATION).rstrip(".").strip(_DECORATION)
    bracketed = _BRACKETED.fullmatch(text)
    if bracketed:
        text = bracketed.group(1).strip()
    if scale == "binary":
        label = _BINARY_WORDS.get(text.lower())
        if label is not None:
            return label
    else:
        found = _FIVE_POINT.fullmatch(text)
        if found:
            return int(found.group(1))
    raise ScoreError(f"the judge's answer is not a verdict: {_quote(answer)}; expected {_expected(scale)}")


def normalise(label: int, scale: str) -> float:
    """A label on ``scale`` as a score in 0..1 (binary as is; 1-5 as ``(label - 1) / 4``)."""
    return float(label) if scale == "binary" else (label - 1) / 4.0


def parse_human_label(value: Any, scale: str) -> int:
    """A person's label from a calibration line: binary ``true``/``false``, 0/1 or a verdict word;
    1-5 a whole number 1 to 5 (or its text).

    Raises:
        ValueError: the label is not on the scale.
    """
    if scale == "binary":
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int) and value in (0, 1):
            return value
        if isinstance(value, str) and value.strip().lower() in _BINARY_WORDS:
            return _BINARY_WORDS[value.strip().lower()]
    else:
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 5:
            return value
        if isinstance(value, str) and value.strip() in {"1", "2", "3", "4", "5"}:
            return int(value.strip())
    raise ValueError(f"label {value!r} is not on the {scale} scale ({_expected(scale)})")


def _expected(scale: str) -> str:
    return "PASS or FAIL on the last line" if scale == "binary" else "a score from 1 to 5 on the last line"


def _quote(answer: str) -> str:
    flat = " ".join(answer.split())
    return repr(flat if len(flat) <= _QUOTED else flat[:_QUOTED] + "...")


# --- the rubric --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rubric:
    """The judge's prompt template, where it came from and its hash."""

    text: str
    source: str
    #: Item fields the template names (besides ``output`` and ``reference``).
    fields: frozenset[str]

    @property
    def sha256(self) -> str:
        return "sha256:" + hashlib.sha256(self.text.encode()).hexdigest()

    def render(self, output: str, item: EvalItem) -> str:
        """The rubric filled for one output of one item.

        Raises:
            ScoreError: the item lacks a field the rubric names, or a field does not fill it.
        """
        missing = sorted(self.fields - item.fields.keys())
        if missing:
            raise ScoreError(f"rubric field {{{missing[0]}}} is not in item {item.id!r}")
        values = {**item.fields, OUTPUT_FIELD: output, REFERENCE_FIELD: _reference(item)}
        try:
            return self.text.format(**values)
        except (KeyError, IndexError, AttributeError, TypeError, ValueError) as exc:
            raise ScoreError(f"rubric cannot be filled from item {item.id!r}: {exc!r}") from None


def _reference(item: EvalItem) -> str:
    if item.target is None:
        return ""
    return item.target_text


def load_rubric(value: Any, evalset_dir: Path) -> Rubric:
    """The rubric of option ``rubric``: a file of the eval set folder, or the template inline.

    A value without ``{`` names a file (an inline rubric must show ``{output}``).

    Raises:
        ValueError: ``rubric: ...`` (no rubric, a file outside the folder or missing,
            not a format string, no ``{output}``).
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError("rubric: give the judge's rubric, a file of the eval set folder or its text inline")
    source = "inline"
    text = value
    if "{" not in value:
        path = evalset_dir / value.strip()
        if not path.resolve().is_relative_to(evalset_dir.resolve()):
            raise ValueError(f"rubric: {value.strip()} must be inside the eval set folder")
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ValueError(
                f"rubric: file {path} not found (an inline rubric must name {{output}})"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"rubric: cannot read {path}: {exc}") from None
        source = value.strip()
    try:
        names = prompt_fields(text)
    except ValueError as exc:
        raise ValueError(f"rubric: {exc} (write literal braces as {{{{ and }}}})") from None
    if OUTPUT_FIELD not in names:
        raise ValueError("rubric: the rubric never shows the judge the output: name {output} in it")
    return Rubric(text, source, frozenset(names - {OUTPUT_FIELD, REFERENCE_FIELD}))


# --- calibration lines -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationLine:
    """One human-labelled line: the item it stands for, the output people judged and their label."""

    id: str
    item: EvalItem
    output: str
    label: int
    line: int


def load_calibration(
    value: Any, evalset_dir: Path, scale: str, rubric: Rubric
) -> tuple[Path, list[CalibrationLine]]:
    """The calibration file of option ``calibration``: JSON lines, each with the item's fields, an
    ``output``, the ``reference`` (or ``target``) when the rubric shows it, and a human ``label``.

    Raises:
        ValueError: ``calibration: FILE:LINE: ...`` for the first problem found.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError("calibration: give the calibration file, relative to the eval set folder")
    path = evalset_dir / value.strip()
    if not path.resolve().is_relative_to(evalset_dir.resolve()):
        raise ValueError(f"calibration: {value.strip()} must be inside the eval set folder")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"calibration: file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"calibration: cannot read {path}: {exc}") from None
    lines: list[CalibrationLine] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"calibration: {path}:{lineno}"
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{where}: each line must be a JSON object")
        output = record.get("output")
        if not isinstance(output, str):
            raise ValueError(f"{where}: needs 'output', the text people judged (a string)")
        if "label" not in record:
            raise ValueError(f"{where}: needs 'label', the people's verdict")
        try:
            label = parse_human_label(record["label"], scale)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        missing = sorted(rubric.fields - record.keys())
        if missing:
            raise ValueError(f"{where}: rubric field {{{missing[0]}}} is not in this line")
        reference = record.get("reference", record.get("target"))
        if REFERENCE_FIELD in prompt_fields(rubric.text) and reference is None:
            raise ValueError(f"{where}: the rubric shows {{reference}}: give 'reference' (or 'target')")
        line_id = str(record.get("id", lineno))
        if line_id in seen:
            raise ValueError(f"{where}: duplicate id {line_id!r} (first on line {seen[line_id]})")
        seen[line_id] = lineno
        fields = {k: v for k, v in record.items() if k not in ("output", "label")}
        item = EvalItem(line_id, fields, reference, line=lineno)
        try:
            rubric.render(output, item)
        except ScoreError as exc:
            raise ValueError(f"{where}: {exc}") from None
        lines.append(CalibrationLine(line_id, item, output, label, lineno))
    if not lines:
        raise ValueError(f"calibration: {path} has no lines")
    return path, lines


@dataclass(frozen=True)
class JudgeCalibration:
    """The judge's labels on a calibration file (``None``: an answer off the scale), duplicates counted once.

    Two lines are duplicates when the judge is asked the same thing (the same rendered
    rubric) and people gave the same label: the judge answers both alike, so they are
    one observation, not two.
    """

    file: str
    file_sha256: str
    ids: tuple[str, ...]
    human: tuple[int, ...]
    judge: tuple[int | None, ...]
    duplicates: int
    errors: tuple[str, ...] = ()


# --- the scorer --------------------------------------------------------------------------------------


class JudgeScorer:
    """Grades outputs with a judge model through a rubric (see the module's docstring)."""

    def __init__(
        self,
        *,
        model: str,
        rubric: Rubric,
        scale: str,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        format: str = "auto",
        calibration: tuple[Path, list[CalibrationLine]] | None = None,
        min_agreement: float = DEFAULT_MIN_AGREEMENT,
        backend_for: Callable[[str], Backend] | None = None,
        evalset_dir: Path | None = None,
    ) -> None:
        self.model = model
        self.rubric = rubric
        self.scale = scale
        self.max_new_tokens = max_new_tokens
        self.format = format
        self.calibration = calibration
        self.min_agreement = min_agreement
        self._backend_for = backend_for
        self._evalset_dir = evalset_dir
        self._backend: Backend | None = None
        self._chat: ChatTemplate | None = None
        self._lock = threading.Lock()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.requests = 0

    # the scorer protocol

    def score(self, output: str, item: EvalItem) -> float:
        (found,) = self.score_batch([output], [item])
        if isinstance(found, ScoreError):
            raise found
        return found

    def score_batch(self, outputs: Sequence[str], items: Sequence[EvalItem]) -> list[float | ScoreError]:
        """One greedy judge request per output, all in one call to the judge's backend."""
        return [
            label if isinstance(label, ScoreError) else normalise(label, self.scale)
            for label in self.judge_labels(outputs, items)
        ]

    def settings(self) -> dict[str, Any]:
        """What decides the judge's scores: its model (and, once loaded, its fingerprint), the
        rubric's hash, the scale, the answer length and how the rubric is sent."""
        out: dict[str, Any] = {
            "judge_model": self.model,
            "rubric_sha256": self.rubric.sha256,
            "scale": self.scale,
            "max_new_tokens": self.max_new_tokens,
            "format": self.format,
        }
        if self._backend_for is not None:
            fingerprint = self.fingerprint()
            out["judge_fingerprint"] = fingerprint.digest
            if fingerprint.stack_digest is not None:
                out["judge_stack_digest"] = fingerprint.stack_digest
        return out

    def close(self) -> None:
        """Nothing to release: the judge's backend belongs to whoever loaded it (the model pool)."""
        self._backend = None

    # the judge

    def backend(self) -> Backend:
        """The judge's backend, asked of ``backend_for`` once.

        Raises:
            EvalSetError: no judge models can be loaded here (no ``backend_for``).
        """
        with self._lock:
            if self._backend is None:
                if self._backend_for is None:
                    where = str(self._evalset_dir) if self._evalset_dir is not None else ""
                    raise EvalSetError(
                        f"metrics: the judge model {self.model!r} cannot be loaded here: run with a "
                        "configuration that defines it (monitor eval --judge-model or --config)",
                        where,
                    )
                backend = self._backend_for(self.model)
                template = backend.chat_template() if isinstance(backend, ChatBackend) else None
                self._chat = template
                self._backend = backend
            return self._backend

    def fingerprint(self) -> ModelFingerprint:
        return self.backend().fingerprint()

    def describe(self) -> dict[str, Any]:
        """The judge as a run records it: model, fingerprint, rubric, scale and the tokens it cost."""
        fingerprint = self.fingerprint()
        return {
            "model": self.model,
            "fingerprint": fingerprint.digest,
            "stack_digest": fingerprint.stack_digest,
            "rubric": self.rubric.source,
            "rubric_sha256": self.rubric.sha256,
            "scale": self.scale,
            "min_agreement": self.min_agreement,
            "tokens": {
                "requests": self.requests,
                "prompt": self.prompt_tokens,
                "completion": self.completion_tokens,
            },
        }

    def judge_labels(self, outputs: Sequence[str], items: Sequence[EvalItem]) -> list[int | ScoreError]:
        """The judge's label of each output (a :class:`ScoreError` where there is none)."""
        out: list[int | ScoreError | None] = []
        prompts: list[str] = []
        where: list[int] = []
        for output, item in zip(outputs, items, strict=True):
            try:
                prompts.append(self.rubric.render(output, item))
            except ScoreError as exc:
                out.append(exc)
                continue
            where.append(len(out))
            out.append(None)
        if prompts:
            for index, answer in zip(where, self._ask(prompts), strict=True):
                out[index] = answer
        return [x for x in out if x is not None]

    def _ask(self, prompts: Sequence[str]) -> list[int | ScoreError]:
        backend = self.backend()
        requests = [self._request(backend, prompt) for prompt in prompts]
        results = backend.generate(requests)
        with self._lock:
            self.requests += len(results)
            self.prompt_tokens += sum(r.prompt_tokens for r in results)
            self.completion_tokens += sum(r.completion_tokens for r in results)
        answers: list[int | ScoreError] = []
        for result in results:
            if result.error is not None:
                answers.append(ScoreError(f"the judge could not answer: {result.error}"))
                continue
            try:
                answers.append(parse_verdict(result.text, self.scale))
            except ScoreError as exc:
                answers.append(exc)
        return answers

    def _request(self, backend: Backend, prompt: str) -> GenerationRequest:
        chat = self._chat
        as_chat = self.format == "chat" or (
            self.format == "auto" and chat is not None and chat.source == "tokenizer"
        )
        if not as_chat:
            return GenerationRequest(prompt, self.max_new_tokens)
        messages = (("user", prompt),)
        text = (
            backend.render_chat(messages) if isinstance(backend, ChatBackend) and chat is not None else None
        )
        return GenerationRequest(text or "", self.max_new_tokens, messages=messages)

    def calibrate(self) -> JudgeCalibration | None:
        """Have the judge label the calibration file again (None without one); duplicates once."""
        if self.calibration is None:
            return None
        path, lines = self.calibration
        unique: dict[tuple[str, int], CalibrationLine] = {}
        for line in lines:
            key = (self.rubric.render(line.output, line.item), line.label)
            unique.setdefault(key, line)
        kept = list(unique.values())
        labels = self.judge_labels([line.output for line in kept], [line.item for line in kept])
        digest = hashlib.sha256()
        for (prompt, label), line in unique.items():
            digest.update(f"{line.id}\0{prompt}\0{label}\n".encode())
        return JudgeCalibration(
            file=str(path),
            file_sha256="sha256:" + digest.hexdigest(),
            ids=tuple(line.id for line in kept),
            human=tuple(line.label for line in kept),
            judge=tuple(None if isinstance(label, ScoreError) else label for label in labels),
            duplicates=len(lines) - len(kept),
            errors=tuple(str(label) for label in labels if isinstance(label, ScoreError))[:5],
        )


def make_judge(options: Mapping[str, Any], context: ScorerContext) -> JudgeScorer:
    """The ``judge`` scorer of a metric entry (see the module's docstring).

    Raises:
        ValueError: ``field: message`` for a bad option: no model, a model the
            configuration does not define, a missing or broken rubric, an unknown
            scale, a broken calibration file.
    """
    check_options("judge", options, JUDGE_OPTIONS)
    model = options.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ValueError("model: name the judge, a model of the configuration (models: in monitor.yaml)")
    if context.models and model not in context.models:
        raise ValueError(
            f"model: judge model {model!r} is not configured; configured models: "
            f"{', '.join(sorted(context.models))}"
        )
    scale = str(options.get("scale", "binary"))
    if scale not in SCALES:
        raise ValueError(f"scale: {scale!r} is not a judge scale; use binary or 1-5")
    max_new_tokens = options.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    if (
        not isinstance(max_new_tokens, int)
        or isinstance(max_new_tokens, bool)
        or not 1 <= max_new_tokens <= 8192
    ):
        raise ValueError(f"max_new_tokens: {max_new_tokens!r} must be a whole number from 1 to 8192")
    fmt = str(options.get("format", "auto"))
    if fmt not in FORMATS:
        raise ValueError(f"format: {fmt!r} must be auto, text or chat")
    min_agreement = options.get("min_agreement", DEFAULT_MIN_AGREEMENT)
    if (
        isinstance(min_agreement, bool)
        or not isinstance(min_agreement, int | float)
        or not -1 <= min_agreement <= 1
    ):
        raise ValueError(f"min_agreement: {min_agreement!r} must be a kappa from -1 to 1")
    rubric = load_rubric(options.get("rubric"), context.evalset_dir)
    calibration = None
    if options.get("calibration") is not None:
        calibration = load_calibration(options["calibration"], context.evalset_dir, scale, rubric)
    return JudgeScorer(
        model=model,
        rubric=rubric,
        scale=scale,
        max_new_tokens=max_new_tokens,
        format=fmt,
        calibration=calibration,
        min_agreement=float(min_agreement),
        backend_for=context.backend_for,
        evalset_dir=context.evalset_dir,
    )


# --- judge models for a run ---------------------------------------------------------------------------


class JudgeModels:
    """``backend_for`` of a run's judges: a configured model name -> its backend, loaded once, metered.

    ``load(name)`` loads (or looks up) the model; ``known`` are the names that may be
    asked for (empty: any).  Each backend is wrapped in a :class:`MeteredBackend`, so the
    judges' requests and tokens are counted per judge model whoever calls them.
    """

    def __init__(self, load: Callable[[str], Backend], known: Collection[str] = ()) -> None:
        self._load = load
        self.known = tuple(known)
        self._loaded: dict[str, MeteredBackend] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str) -> Backend:
        with self._lock:
            found = self._loaded.get(name)
            if found is None:
                if self.known and name not in self.known:
                    raise EvalSetError(
                        f"the judge model {name!r} is not configured; configured models: {', '.join(self.known)}"
                    )
                found = self._loaded[name] = MeteredBackend(self._load(name))
            return found

    @property
    def loaded(self) -> dict[str, MeteredBackend]:
        with self._lock:
            return dict(self._loaded)

    def usage(self) -> dict[str, dict[str, int]]:
        """Per judge model: requests, prompt and completion tokens so far."""
        return {name: backend.usage() for name, backend in self.loaded.items()}


class MeteredBackend:
    """A backend that counts the generation requests and tokens that go through it.

    ``close()`` does nothing: the wrapped backend belongs to whoever loaded it.
    """

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self._lock = threading.Lock()
        self.requests = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def usage(self) -> dict[str, int]:
        with self._lock:
            return {
                "requests": self.requests,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
            }

    def generate(
        self, requests: Sequence[GenerationRequest], *, progress: ProgressCallback | None = None
    ) -> list[GenerationResult]:
        results = self.inner.generate(requests, progress=progress)
        with self._lock:
            self.requests += len(results)
            self.prompt_tokens += sum(r.prompt_tokens for r in results)
            self.completion_tokens += sum(r.completion_tokens for r in results)
        return results

    def loglikelihood(
        self, requests: Sequence[LoglikelihoodRequest], *, progress: ProgressCallback | None = None
    ) -> list[LoglikelihoodResult]:
        return self.inner.loglikelihood(requests, progress=progress)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def fingerprint(self) -> ModelFingerprint:
        return self.inner.fingerprint()

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def chat_template(self) -> ChatTemplate | None:
        inner = self.inner
        return inner.chat_template() if isinstance(inner, ChatBackend) else None

    def render_chat(self, messages: Sequence[tuple[str, str]]) -> str | None:
        inner = self.inner
        return inner.render_chat(messages) if isinstance(inner, ChatBackend) else None

    def close(self) -> None:
        return None
