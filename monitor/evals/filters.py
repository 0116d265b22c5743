"""Extraction filters: what a metric scores of a model's output (lm-evaluation-harness's ``filter_list``).

A metric entry's ``filters:`` is a list applied in order, each one of::

    lowercase | uppercase | strip
    {regex: PATTERN, group: 1, take: first|last, fallback: "[invalid]"}
    {json_extract: "a.b.0"}

``regex`` follows lm-eval's ``RegexFilter``: all matches are found (``re.findall``),
the first (``take: first``, the default) or the last is kept, a match of a pattern
with several groups keeps its first non-empty group, and the result is stripped;
no match gives ``fallback`` (``"[invalid]"``, as lm-eval).  ``group: N`` keeps that
group of each match instead.  ``json_extract`` parses the output as JSON (a Markdown
fence allowed) and keeps one field by dotted path (list indexes as numbers): a
string as it is, anything else as compact JSON; an output that does not parse or
lacks the field gives ``fallback``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: What a filter gives when it finds nothing (lm-eval's default fallback).
FALLBACK = "[invalid]"
SIMPLE_FILTERS = ("lowercase", "uppercase", "strip")


@dataclass(frozen=True)
class Filter:
    """One step of a filter chain; ``spec`` is its canonical form (it enters the settings digest)."""

    kind: str
    spec: Any
    pattern: re.Pattern[str] | None = None
    group: int | None = None
    take: str = "first"
    fallback: str = FALLBACK
    path: tuple[str, ...] = ()

    def apply(self, text: str) -> str:
        if self.kind == "lowercase":
            return text.lower()
        if self.kind == "uppercase":
            return text.upper()
        if self.kind == "strip":
            return text.strip()
        if self.kind == "regex":
            return self._regex(text)
        return self._json(text)

    def _regex(self, text: str) -> str:
        assert self.pattern is not None
        if self.group is not None:
            found: list[Any] = [m.group(self.group) for m in self.pattern.finditer(text)]
            found = [f for f in found if f is not None]
        else:
            found = self.pattern.findall(text)
        if not found:
            return self.fallback
        match = found[0] if self.take == "first" else found[-1]
        if isinstance(match, tuple):
            nonempty = [m for m in match if m]
            if not nonempty:
                return self.fallback
            match = nonempty[0]
        return str(match).strip()

    def _json(self, text: str) -> str:
        try:
            value = parse_json_output(text)
        except ValueError:
            return self.fallback
        for part in self.path:
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif (
                isinstance(value, list)
                and part.lstrip("-").isdigit()
                and -len(value) <= int(part) < len(value)
            ):
                value = value[int(part)]
            else:
                return self.fallback
        if isinstance(value, str):
            return value
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def parse_json_output(text: str) -> Any:
    """Parse a model's JSON answer, tolerating surrounding space and a Markdown code fence.

    Raises:
        ValueError: the text is not JSON.
    """
    stripped = text.strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", stripped, flags=re.DOTALL)
    if fence:
        stripped = fence.group(1)
    return json.loads(stripped)


def apply_filters(filters: Sequence[Filter], text: str) -> str:
    """The output after every filter of the chain, in order."""
    for f in filters:
        text = f.apply(text)
    return text


def parse_filters(raw: Any) -> tuple[Filter, ...]:
    """The filter chain of a metric entry's ``filters:`` value.

    Raises:
        ValueError: ``filters[i]...: message`` for the first bad filter (a regex that does not compile,
            an unknown filter or option).
    """
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ValueError(
            "filters: must be a list of filters (lowercase, uppercase, strip, {regex: ...}, {json_extract: ...})"
        )
    return tuple(_parse_one(entry, f"filters[{i}]") for i, entry in enumerate(raw))


def _parse_one(entry: Any, at: str) -> Filter:
    if isinstance(entry, str):
        if entry not in SIMPLE_FILTERS:
            raise ValueError(
                f"{at}: unknown filter {entry!r}; use {', '.join(SIMPLE_FILTERS)}, regex or json_extract"
            )
        return Filter(entry, entry)
    if not isinstance(entry, dict):
        raise ValueError(f"{at}: a filter is a name or a mapping like {{regex: ..., group: 1}}")
    if "regex" in entry:
        unknown = sorted(set(entry) - {"regex", "group", "take", "fallback"})
        if unknown:
            raise ValueError(f"{at}.{unknown[0]}: unknown option of regex (group, take, fallback)")
        pattern = entry["regex"]
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"{at}.regex: must be a non-empty pattern string")
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{at}.regex: does not compile: {exc}") from exc
        group = entry.get("group")
        if group is not None and (isinstance(group, bool) or not isinstance(group, int) or group < 0):
            raise ValueError(f"{at}.group: must be a group number (0 for the whole match)")
        if group is not None and group > compiled.groups:
            raise ValueError(f"{at}.group: the pattern has {compiled.groups} groups, not {group}")
        take = entry.get("take", "first")
        if take not in ("first", "last"):
            raise ValueError(f"{at}.take: must be first or last, not {take!r}")
        fallback = entry.get("fallback", FALLBACK)
        if not isinstance(fallback, str):
            raise ValueError(f"{at}.fallback: must be a string")
        spec = {"regex": pattern, "group": group, "take": take, "fallback": fallback}
        return Filter("regex", spec, compiled, group, take, fallback)
    if "json_extract" in entry:
        unknown = sorted(set(entry) - {"json_extract", "fallback"})
        if unknown:
            raise ValueError(f"{at}.{unknown[0]}: unknown option of json_extract (fallback)")
        path = entry["json_extract"]
        if not isinstance(path, str) or not path or any(not p for p in path.split(".")):
            raise ValueError(f"{at}.json_extract: must be a dotted field path like a.b or items.0")
        fallback = entry.get("fallback", FALLBACK)
        if not isinstance(fallback, str):
            raise ValueError(f"{at}.fallback: must be a string")
        spec = {"json_extract": path, "fallback": fallback}
        return Filter("json_extract", spec, fallback=fallback, path=tuple(path.split(".")))
    raise ValueError(
        f"{at}: unknown filter {sorted(entry)}; use {', '.join(SIMPLE_FILTERS)}, regex or json_extract"
    )
