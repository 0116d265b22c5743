"""The built-in generation scorers (see :data:`monitor.evals.scorers.BUILTIN_SCORERS`).

Text overlap goes through the standard packages: ROUGE-L through ``rouge-score``
(the F-measure of ``rougeL``, with its Porter stemmer off, as the package's default),
chrF and BLEU through ``sacrebleu``'s sentence-level scores.  Every score is on
a 0-1 scale (sacrebleu's 0-100 divided by 100) so that every metric reads alike.

``json_schema`` validates the (filtered) output against a JSON Schema with the
``jsonschema`` library: an output that breaks the schema, or is not JSON at all,
scores 0 and keeps why (the failing path) in ``ItemResult.metric_errors`` beside its 0.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

from monitor.evals.evalset import EvalItem
from monitor.evals.scorers import ScoreError, ScorerContext, check_options
from monitor.evals.scoring import (
    contains,
    exact_match,
    json_fields,
    json_valid,
    normalize_text,
    parse_json_output,
    regex_match,
    token_f1,
)


class ScoredWithReason(float):
    """A score that comes with a reason (a 0 for an output that breaks a JSON Schema): the loop keeps
    the reason in ``ItemResult.metric_errors`` beside the score."""

    reason: str

    def __new__(cls, value: float, reason: str) -> ScoredWithReason:
        obj = super().__new__(cls, value)
        obj.reason = reason
        return obj


class _Plain:
    """A scorer of :mod:`monitor.evals.scoring` without options."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def score(self, output: str, item: EvalItem) -> float:
        return float(self.fn(output, item))


def make_contains(options: Mapping[str, Any], context: ScorerContext) -> _Plain:
    check_options("contains", options, ())
    return _Plain(contains)


def make_token_f1(options: Mapping[str, Any], context: ScorerContext) -> _Plain:
    check_options("token_f1", options, ())
    return _Plain(token_f1)


def make_regex(options: Mapping[str, Any], context: ScorerContext) -> _Plain:
    check_options("regex", options, ())
    return _Plain(regex_match)


def make_json_valid(options: Mapping[str, Any], context: ScorerContext) -> _Plain:
    check_options("json_valid", options, ())
    return _Plain(json_valid)


def make_json_fields(options: Mapping[str, Any], context: ScorerContext) -> _Plain:
    check_options("json_fields", options, ())
    return _Plain(json_fields)


# --- exact match ------------------------------------------------------------------------------------

_EXACT_OPTIONS = ("ignore_case", "ignore_punctuation", "regexes_to_ignore", "normalize")
_PUNCT_TABLE = str.maketrans("", "", string.punctuation)


class ExactMatch:
    """``exact_match``: with ``normalize: squad`` (the default) SQuAD-normalised text (an object target:
    parsed JSON equality); with ``normalize: none`` plain equality.  ``regexes_to_ignore`` (removed from
    both sides, in order), ``ignore_case`` and ``ignore_punctuation`` come first, in that order, as in
    lm-evaluation-harness's ``exact_match``."""

    def __init__(
        self,
        *,
        ignore_case: bool = False,
        ignore_punctuation: bool = False,
        regexes_to_ignore: Sequence[str] = (),
        normalize: str = "squad",
    ) -> None:
        self.ignore_case = ignore_case
        self.ignore_punctuation = ignore_punctuation
        self.regexes = tuple(regexes_to_ignore)
        self.compiled = tuple(re.compile(r) for r in self.regexes)
        self.normalize = normalize

    def _prepare(self, text: str) -> str:
        for pattern in self.compiled:
            text = pattern.sub("", text)
        if self.ignore_case:
            text = text.lower()
        if self.ignore_punctuation:
            text = text.translate(_PUNCT_TABLE)
        return text

    def score(self, output: str, item: EvalItem) -> float:
        if self.normalize == "squad" and isinstance(item.target, dict | list) and not self._options_set:
            return exact_match(output, item)
        pred, gold = self._prepare(output), self._prepare(item.target_text)
        if self.normalize == "squad":
            return float(normalize_text(pred) == normalize_text(gold))
        return float(pred == gold)

    @property
    def _options_set(self) -> bool:
        return bool(self.ignore_case or self.ignore_punctuation or self.regexes)


def make_exact_match(options: Mapping[str, Any], context: ScorerContext) -> ExactMatch:
    check_options("exact_match", options, _EXACT_OPTIONS)
    for flag in ("ignore_case", "ignore_punctuation"):
        if flag in options and not isinstance(options[flag], bool):
            raise ValueError(f"{flag}: must be true or false")
    regexes = options.get("regexes_to_ignore", ())
    if isinstance(regexes, str):
        regexes = [regexes]
    if not isinstance(regexes, list | tuple) or not all(isinstance(r, str) for r in regexes):
        raise ValueError("regexes_to_ignore: must be a list of patterns")
    for i, pattern in enumerate(regexes):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"regexes_to_ignore[{i}]: does not compile: {exc}") from exc
    normalize = options.get("normalize", "squad")
    if normalize not in ("squad", "none"):
        raise ValueError(f"normalize: must be squad or none, not {normalize!r}")
    return ExactMatch(
        ignore_case=bool(options.get("ignore_case", False)),
        ignore_punctuation=bool(options.get("ignore_punctuation", False)),
        regexes_to_ignore=tuple(regexes),
        normalize=str(normalize),
    )


# --- JSON Schema ------------------------------------------------------------------------------------


class JsonSchemaScorer:
    """``json_schema``: 1 when the output is JSON valid under the schema, else 0 with the reason kept."""

    def __init__(self, schema: Any, schema_sha256: str) -> None:
        import jsonschema

        self.schema_sha256 = schema_sha256
        cls = jsonschema.validators.validator_for(schema)
        self.validator = cls(schema, format_checker=cls.FORMAT_CHECKER)

    def score(self, output: str, item: EvalItem) -> float:
        try:
            value = parse_json_output(output)
        except ValueError as exc:
            return ScoredWithReason(0.0, f"not JSON: {exc}")
        errors = sorted(self.validator.iter_errors(value), key=lambda e: list(e.absolute_path))
        if not errors:
            return 1.0
        first = errors[0]
        path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first.absolute_path)
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return ScoredWithReason(0.0, f"{path}: {first.message}{more}"[:2000])

    def settings(self) -> dict[str, Any]:
        return {"schema_sha256": self.schema_sha256}


def make_json_schema(options: Mapping[str, Any], context: ScorerContext) -> JsonSchemaScorer:
    import jsonschema

    check_options("json_schema", options, ("schema",))
    rel = options.get("schema")
    if not isinstance(rel, str) or not rel:
        raise ValueError("schema: give the schema file, relative to the eval set folder")
    path = context.evalset_dir / rel
    if not path.resolve().is_relative_to(context.evalset_dir.resolve()):
        raise ValueError(f"schema: {rel} must be inside the eval set folder")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"schema: cannot read {path}: {exc.strerror or exc}") from exc
    try:
        schema = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"schema: {path} is not JSON: {exc}") from exc
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise ValueError(f"schema: {path} is not a valid JSON Schema at {where}: {exc.message}") from exc
    return JsonSchemaScorer(schema, hashlib.sha256(raw).hexdigest())


# --- text overlap -----------------------------------------------------------------------------------


class RougeL:
    """``rouge_l``: rouge-score's ROUGE-L F-measure of the output against the target."""

    def __init__(self) -> None:
        from rouge_score import rouge_scorer

        self.scorer = rouge_scorer.RougeScorer(["rougeL"])

    def score(self, output: str, item: EvalItem) -> float:
        return float(self.scorer.score(item.target_text, output)["rougeL"].fmeasure)


class Chrf:
    """``chrf``: sacrebleu's sentence chrF (default settings), divided by 100."""

    def score(self, output: str, item: EvalItem) -> float:
        import sacrebleu

        return float(sacrebleu.sentence_chrf(output, [item.target_text]).score) / 100.0


class Bleu:
    """``bleu``: sacrebleu's sentence BLEU (default settings: exponential smoothing), divided by 100."""

    def score(self, output: str, item: EvalItem) -> float:
        import sacrebleu

        return float(sacrebleu.sentence_bleu(output, [item.target_text]).score) / 100.0


def make_rouge_l(options: Mapping[str, Any], context: ScorerContext) -> RougeL:
    check_options("rouge_l", options, ())
    return RougeL()


def make_chrf(options: Mapping[str, Any], context: ScorerContext) -> Chrf:
    check_options("chrf", options, ())
    return Chrf()


def make_bleu(options: Mapping[str, Any], context: ScorerContext) -> Bleu:
    check_options("bleu", options, ())
    return Bleu()


class EmbeddingSimilarity:
    """``embedding_similarity``: cosine of the output's and the target's all-MiniLM-L6-v2 embeddings."""

    def __init__(self, embedder: Any = None) -> None:
        from monitor.evals.embeddings import MiniLMEmbedder

        self.embedder = embedder or MiniLMEmbedder()

    def score(self, output: str, item: EvalItem) -> float:
        result = self.score_batch([output], [item])[0]
        if isinstance(result, ScoreError):
            raise result
        return result

    def score_batch(self, outputs: Sequence[str], items: Sequence[EvalItem]) -> list[float | ScoreError]:
        import numpy as np

        from monitor.evals.embeddings import cosine_rows

        vectors = np.asarray(self.embedder.encode([*outputs, *(item.target_text for item in items)]))
        n = len(outputs)
        sims = [cosine_rows(vectors[i : i + 1], vectors[n + i : n + i + 1])[0, 0] for i in range(n)]
        return [float(s) for s in sims]

    def settings(self) -> dict[str, Any]:
        return {"model": str(getattr(self.embedder, "name", "all-MiniLM-L6-v2"))}


def make_embedding_similarity(options: Mapping[str, Any], context: ScorerContext) -> EmbeddingSimilarity:
    from monitor.evals.embeddings import embeddings_unavailable

    check_options("embedding_similarity", options, ())
    reason = embeddings_unavailable()
    if reason is not None:
        raise ValueError(f"name: embedding_similarity needs all-MiniLM-L6-v2: {reason}")
    return EmbeddingSimilarity()
