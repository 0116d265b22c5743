"""Production inputs and reference inputs: where input drift gets its two samples.

A model's production inputs come from a :class:`ProductionSource`, a one-method
protocol (``fetch(window)``) with two implementations, registered by name in
:data:`SOURCES`:

* ``jsonl``: a directory of JSONL files, one input per line
  (``{"timestamp": "2025-01-07T09:30:00+00:00", "input": "...", ...}``);
* ``sql``: a table of timestamped inputs behind a SQLAlchemy URL, read with a
  query bounded to the window.

A :class:`Window` is the last N days (``window: 7d``) ending at an injected
``now``; timestamps are timezone-aware UTC and a window is half-open
``[start, end)``.  The reference sample is the fine-tune's training inputs (a
JSONL file or directory) or its golden eval set's inputs.

The ``drift:`` configuration schema is :class:`monitor.config.DriftConfig`.  This
module holds the drift errors, so that reading inputs never imports Evidently::

    MonitorError
    └── DriftError                   input drift cannot be measured (problems carry file:line)
        └── InsufficientSamplesError a window or reference holds fewer inputs than the minimum
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal, Protocol

from monitor.config.schema import JsonlSourceConfig, ReferenceConfig, SqlSourceConfig
from monitor.errors import MonitorError, Problem
from monitor.schedule import Duration, parse_interval

#: Problems listed in one error message at most; the rest are counted.
MAX_PROBLEMS = 20
#: How far the SQL pre-filter reaches past the window: covers zone offsets and ISO text compared as text.
SQL_MARGIN = timedelta(days=2)


# --------------------------------------------------------------------------- errors


class DriftError(MonitorError):
    """Input drift cannot be measured: a source cannot be read, a sample is too small, Evidently failed."""

    def __init__(self, message: str, problems: Iterable[Problem] = ()) -> None:
        self.problems: list[Problem] = list(problems)
        lines = [message, *(f"  {p}" for p in _capped(self.problems))]
        super().__init__("\n".join(lines))


class InsufficientSamplesError(DriftError):
    """A production window (or the reference) holds fewer inputs than drift needs."""

    def __init__(self, what: str, count: int, minimum: int) -> None:
        self.what = what
        self.count = count
        self.minimum = minimum
        super().__init__(
            f"{what} has {count} input{'s' if count != 1 else ''}; drift needs at least {minimum}"
        )


def _capped(problems: list[Problem]) -> list[Problem]:
    """The problems with each message counted once (``800 lines: no 'timestamp' field (first at
    log.jsonl:3)``), in the order first seen, at most :data:`MAX_PROBLEMS` of them."""
    groups: dict[str, list[str]] = {}
    for problem in problems:
        groups.setdefault(problem.message, []).append(problem.location)
    counted = [
        Problem(places[0], message)
        if len(places) == 1
        else Problem(
            "", f"{len(places)} lines: {message}" + (f" (first at {places[0]})" if places[0] else "")
        )
        for message, places in groups.items()
    ]
    if len(counted) <= MAX_PROBLEMS:
        return counted
    extra = sum(len(places) for places in list(groups.values())[MAX_PROBLEMS:])
    return [*counted[:MAX_PROBLEMS], Problem("", f"... and {extra} more problems")]


# --------------------------------------------------------------------------- windows and samples


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"{value!r} is not timezone-aware")
    return value.astimezone(timezone.utc)


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Window:
    """A half-open time window ``[start, end)`` in UTC; ``length`` is how it was asked for (``7d``)."""

    start: datetime
    end: datetime
    length: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", _utc(self.start))
        object.__setattr__(self, "end", _utc(self.end))
        if self.end <= self.start:
            raise ValueError(f"window ends ({self.end}) before it starts ({self.start})")

    @classmethod
    def last(cls, length: str | timedelta, *, now: datetime) -> Window:
        """The window of ``length`` (``7d``, a configured duration or a timedelta) that ends at ``now``."""
        span = parse_interval(length) if isinstance(length, str) else length
        label = str(length) if isinstance(length, str | Duration) else f"{span.total_seconds():g}s"
        end = _utc(now)
        return cls(end - span, end, label)

    def contains(self, timestamp: datetime) -> bool:
        return self.start <= timestamp < self.end

    def __str__(self) -> str:
        span = f"last {self.length} " if self.length else ""
        return f"{span}[{_iso(self.start)}, {_iso(self.end)})"


@dataclass(frozen=True)
class ProductionInput:
    """One production input: when it arrived, its text, and where it was read (``file:line``, ``table``)."""

    timestamp: datetime
    text: str
    location: str = ""


@dataclass(frozen=True)
class ProductionSample:
    """The production inputs of one window, oldest first, with the lines that had to be left out."""

    window: Window
    source: str
    inputs: tuple[ProductionInput, ...]
    problems: tuple[Problem, ...] = ()
    #: The source held more rows than it was allowed to read; the oldest of the window were left out.
    truncated: bool = False

    @property
    def texts(self) -> list[str]:
        return [item.text for item in self.inputs]

    def __len__(self) -> int:
        return len(self.inputs)

    def describe(self) -> str:
        return f"production window {self.window} of {self.source}"

    def require(self, minimum: int) -> None:
        """Raise :class:`InsufficientSamplesError` when the window holds fewer than ``minimum`` inputs."""
        if len(self.inputs) < minimum:
            raise InsufficientSamplesError(self.describe(), len(self.inputs), minimum)


@dataclass(frozen=True)
class ReferenceSample:
    """The reference inputs and a description of where they came from."""

    source: str
    texts: tuple[str, ...] = field(default_factory=tuple)

    def __len__(self) -> int:
        return len(self.texts)

    def describe(self) -> str:
        return f"reference {self.source}"


class ProductionSource(Protocol):
    """Where a model's production inputs are read from."""

    def fetch(self, window: Window) -> ProductionSample:
        """The inputs whose timestamps fall in ``window``, oldest first.

        Raises:
            DriftError: the source cannot be read, or (when bad lines are errors) a line is bad.
        """
        ...


# --------------------------------------------------------------------------- JSONL


def _lookup(record: dict[str, Any], dotted: str) -> Any:
    value: Any = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return value


def parse_timestamp(value: Any, *, naive_is_utc: bool = False) -> datetime:
    """An ISO 8601 string (or a datetime) as an aware UTC datetime.

    Raises:
        ValueError: not a timestamp, or without a zone (unless ``naive_is_utc``).
    """
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO 8601 timestamp") from None
    else:
        raise ValueError(f"{value!r} is not an ISO 8601 timestamp string")
    if parsed.tzinfo is None:
        if not naive_is_utc:
            raise ValueError(f"{value!r} has no time zone (add Z or an offset like +00:00)")
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def _jsonl_files(path: Path, pattern: str) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.glob(pattern) if p.is_file())
    raise DriftError(f"{path}: no such file or directory")


def _jsonl_records(files: Sequence[Path], problems: list[Problem]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(file:line, object)`` for every well-formed line; bad lines become problems."""
    for file in files:
        try:
            handle = file.open(encoding="utf-8")
        except OSError as exc:
            problems.append(Problem(str(file), f"cannot read: {exc.strerror or exc}"))
            continue
        with handle:
            lineno = 0
            try:
                for lineno, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    where = f"{file}:{lineno}"
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        problems.append(Problem(where, f"invalid JSON: {exc.msg} (column {exc.colno})"))
                        continue
                    if not isinstance(record, dict):
                        problems.append(Problem(where, "each line must be a JSON object"))
                        continue
                    yield where, record
            except UnicodeDecodeError:
                problems.append(
                    Problem(f"{file}:{lineno + 1}", "not UTF-8 text; the rest of the file is skipped")
                )


class JsonlDirectorySource:
    """Production inputs logged as JSONL files in a directory (every file matching ``pattern``)."""

    def __init__(
        self,
        path: str | Path,
        *,
        text_field: str = "input",
        timestamp_field: str = "timestamp",
        pattern: str = "*.jsonl",
        on_bad_line: Literal["error", "skip"] = "error",
    ) -> None:
        self.path = Path(path)
        self.text_field = text_field
        self.timestamp_field = timestamp_field
        self.pattern = pattern
        self.on_bad_line = on_bad_line

    def __repr__(self) -> str:
        return f"JsonlDirectorySource({str(self.path)!r})"

    def fetch(self, window: Window) -> ProductionSample:
        problems: list[Problem] = []
        found: list[ProductionInput] = []
        for where, record in _jsonl_records(_jsonl_files(self.path, self.pattern), problems):
            # A line without a usable timestamp is reported wherever it is: it might belong to the window.
            try:
                timestamp = parse_timestamp(_lookup(record, self.timestamp_field))
            except KeyError:
                problems.append(Problem(where, f"no {self.timestamp_field!r} field"))
                continue
            except ValueError as exc:
                problems.append(Problem(where, f"{self.timestamp_field}: {exc}"))
                continue
            if not window.contains(timestamp):
                continue
            try:
                text = _lookup(record, self.text_field)
            except KeyError:
                problems.append(Problem(where, f"no {self.text_field!r} field"))
                continue
            if not isinstance(text, str):
                problems.append(
                    Problem(where, f"{self.text_field}: must be a string, not {type(text).__name__}")
                )
                continue
            found.append(ProductionInput(timestamp, text, where))
        if problems and self.on_bad_line == "error":
            raise DriftError(f"{self.path}: {len(problems)} bad line(s) in the production log", problems)
        found.sort(key=lambda item: item.timestamp)
        return ProductionSample(window, str(self.path), tuple(found), tuple(problems))


# --------------------------------------------------------------------------- SQL


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid database URL>"


class SqlTableSource:
    """Production inputs in a SQL table: one row per input, with a text and a timestamp column.

    The query reads only the window (plus a margin of :data:`SQL_MARGIN` on both
    sides, so that ISO 8601 text compared as text and zone offsets cannot lose a
    row) and at most ``max_rows`` rows, newest first; the exact window is then
    applied to the parsed timestamps.  The table is only read, never changed.
    """

    def __init__(
        self,
        url: str,
        table: str,
        *,
        text_column: str,
        timestamp_column: str,
        timestamp_format: Literal["datetime", "epoch"] = "datetime",
        max_rows: int = 100_000,
    ) -> None:
        self.url = url
        self.table = table
        self.text_column = text_column
        self.timestamp_column = timestamp_column
        self.timestamp_format = timestamp_format
        self.max_rows = max_rows

    def __repr__(self) -> str:
        return f"SqlTableSource({_redacted(self.url)!r}, {self.table!r})"

    def _query(self, window: Window) -> Any:
        from sqlalchemy import DateTime, Float, bindparam, column, select, table

        schema, _, name = self.table.rpartition(".")
        source = table(name, column(self.text_column), column(self.timestamp_column), schema=schema or None)
        ts = source.c[self.timestamp_column]
        low, high = window.start - SQL_MARGIN, window.end + SQL_MARGIN
        lower: Any
        upper: Any
        if self.timestamp_format == "epoch":
            lower = bindparam("low", low.timestamp(), type_=Float())
            upper = bindparam("high", high.timestamp(), type_=Float())
        else:
            lower = bindparam("low", low, type_=DateTime(timezone=True))
            upper = bindparam("high", high, type_=DateTime(timezone=True))
        return (
            select(source.c[self.text_column], ts)
            .where(ts >= lower, ts < upper)
            .order_by(ts.desc())
            .limit(self.max_rows + 1)
        )

    def _timestamp(self, value: Any) -> datetime:
        if self.timestamp_format == "epoch":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{value!r} is not a number of seconds since the epoch")
            return datetime.fromtimestamp(float(value), tz=timezone.utc)
        return parse_timestamp(value, naive_is_utc=True)

    def fetch(self, window: Window) -> ProductionSample:
        from sqlalchemy import create_engine
        from sqlalchemy.exc import SQLAlchemyError

        where = f"{_redacted(self.url)} table {self.table}"
        try:
            engine = create_engine(self.url)
        except (SQLAlchemyError, ValueError, ImportError) as exc:
            raise DriftError(f"cannot open the traffic database {_redacted(self.url)}: {exc}") from exc
        try:
            with engine.connect() as connection:
                rows = connection.execute(self._query(window)).all()
        except SQLAlchemyError as exc:
            message = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            raise DriftError(f"cannot read production inputs from {where}: {message}") from exc
        finally:
            engine.dispose()
        truncated = len(rows) > self.max_rows
        problems: list[Problem] = []
        found: list[ProductionInput] = []
        for text, raw in rows[: self.max_rows]:
            try:
                timestamp = self._timestamp(raw)
            except (ValueError, OverflowError, OSError) as exc:
                problems.append(Problem(where, f"{self.timestamp_column}: {exc}"))
                continue
            if not window.contains(timestamp):
                continue
            if not isinstance(text, str):
                if text is None:
                    continue
                problems.append(Problem(where, f"{self.text_column}: {text!r} is not text"))
                continue
            found.append(ProductionInput(timestamp, text, where))
        # Equal timestamps come back in any order: sort by text too, so that a check is reproducible.
        found.sort(key=lambda item: (item.timestamp, item.text))
        return ProductionSample(window, where, tuple(found), tuple(problems), truncated)


# --------------------------------------------------------------------------- registry and references


def _jsonl_source(config: JsonlSourceConfig, base_dir: Path) -> ProductionSource:
    return JsonlDirectorySource(
        _resolve(config.path, base_dir),
        text_field=config.text_field,
        timestamp_field=config.timestamp_field,
        pattern=config.pattern,
        on_bad_line=config.on_bad_line,
    )


def _sql_source(config: SqlSourceConfig, base_dir: Path) -> ProductionSource:
    url = config.url
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        rest = url[len(prefix) :]
        if rest and rest != ":memory:" and not rest.startswith("file:"):
            url = prefix + str(_resolve(rest, base_dir))
    return SqlTableSource(
        url,
        config.table,
        text_column=config.text_column,
        timestamp_column=config.timestamp_column,
        timestamp_format=config.timestamp_format,
        max_rows=config.max_rows,
    )


#: Source kinds by the name used in ``source.kind``.
SOURCES: dict[str, Any] = {"jsonl": _jsonl_source, "sql": _sql_source}


def build_source(config: JsonlSourceConfig | SqlSourceConfig, base_dir: Path = Path()) -> ProductionSource:
    """The production source a ``source:`` section describes; relative paths resolve against ``base_dir``."""
    return SOURCES[config.kind](config, base_dir)  # type: ignore[no-any-return]


def _resolve(path: str, base_dir: Path) -> Path:
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else base_dir / candidate


def read_training_inputs(
    path: str | Path, *, field: str = "input", pattern: str = "*.jsonl"
) -> ReferenceSample:
    """The inputs of a training set: a JSONL file, or every matching file of a directory.

    Raises:
        DriftError: a line is not a JSON object with a string ``field`` (each problem names file:line).
    """
    location = Path(path)
    problems: list[Problem] = []
    texts: list[str] = []
    for where, record in _jsonl_records(_jsonl_files(location, pattern), problems):
        try:
            text = _lookup(record, field)
        except KeyError:
            problems.append(Problem(where, f"no {field!r} field"))
            continue
        if not isinstance(text, str):
            problems.append(Problem(where, f"{field}: must be a string, not {type(text).__name__}"))
            continue
        texts.append(text)
    if problems:
        raise DriftError(f"{location}: {len(problems)} bad line(s) in the training inputs", problems)
    return ReferenceSample(f"training inputs {location}", tuple(texts))


def read_evalset_inputs(path: str | Path, *, field: str = "input") -> ReferenceSample:
    """The inputs of a golden eval set: ``item.fields[field]`` of every item.

    Raises:
        EvalSetError: the eval set is invalid.
        DriftError: an item has no string ``field``.
    """
    from monitor.evals.evalset import DATA_FILE, load_evalset

    evalset = load_evalset(path)
    problems: list[Problem] = []
    texts: list[str] = []
    for item in evalset.items:
        value = item.fields.get(field)
        if not isinstance(value, str):
            what = "no" if value is None else f"a non-string ({type(value).__name__})"
            problems.append(
                Problem(f"{evalset.path / DATA_FILE}:{item.line}", f"item {item.id!r} has {what} {field!r}")
            )
            continue
        texts.append(value)
    if problems:
        raise DriftError(f"eval set {evalset.name}: {len(problems)} item(s) without a usable input", problems)
    return ReferenceSample(f"eval set {evalset.name} ({evalset.path})", tuple(texts))


def load_reference(config: ReferenceConfig, base_dir: Path = Path()) -> ReferenceSample:
    """The reference inputs a ``reference:`` section describes."""
    path = _resolve(config.path, base_dir)
    if config.kind == "evalset":
        return read_evalset_inputs(path, field=config.field)
    return read_training_inputs(path, field=config.field)
