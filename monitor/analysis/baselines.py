"""Baselines: the run a model was accepted with, pinned as a reviewable file.

``baselines/<model>/<evalset>.json`` holds, in a versioned format, the metrics
and their errors, the eval set version, the prompt and decoding settings, the
model fingerprint, the strategy and every item's outcome, so that baselines are
reviewed in git and survive the loss of the database.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from monitor.errors import InputError, NotFoundError, Problem
from monitor.store import RunRecord, Store, as_utc, utcnow

BASELINE_FORMAT_VERSION = 1


class BaselineError(InputError):
    """A baseline file is missing, corrupt or from an unknown format version."""


@dataclass(frozen=True)
class BaselineItem:
    """One item's outcome in the baseline run."""

    id: str
    prediction: str | None
    correct: bool | None
    score: float | None
    scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Baseline:
    """A pinned baseline."""

    model: str
    evalset: str
    evalset_version: str
    strategy: str
    fewshot_k: int
    settings_digest: str
    settings: dict[str, Any]
    model_fingerprint: str | None
    run_id: int
    run_finished_at: str | None
    pinned_at: str
    metrics: dict[str, dict[str, Any]]
    items: tuple[BaselineItem, ...]
    model_version: str | None = None
    format_version: int = BASELINE_FORMAT_VERSION

    def to_json(self) -> str:
        data = asdict(self)
        data["items"] = [asdict(item) for item in self.items]
        ordered = {"format_version": data.pop("format_version"), **data}
        return json.dumps(ordered, indent=2, ensure_ascii=False, sort_keys=False) + "\n"


def baseline_path(root: Path, model: str, evalset: str) -> Path:
    return root / model / f"{evalset}.json"


def pin_baseline(store: Store, root: Path, model: str, evalset: str, run_id: int | None = None) -> Baseline:
    """Pin ``run_id`` (default: the newest succeeded run of ``model`` on ``evalset``) as the baseline.

    Raises:
        NotFoundError: no such run, or no succeeded run to pin.
        InputError: the run is not a succeeded run of that model on that eval set.
    """
    run = _choose_run(store, model, evalset, run_id)
    assert run.id is not None
    items = tuple(
        BaselineItem(r.item_id, r.prediction, r.correct, r.score, dict(r.scores or {}))
        for r in store.item_results(run.id)
        if not r.error
    )
    baseline = Baseline(
        model=model,
        evalset=evalset,
        evalset_version=run.evalset_version,
        strategy=run.strategy,
        fewshot_k=run.fewshot_k,
        settings_digest=run.settings_digest,
        settings=dict(run.settings),
        model_fingerprint=run.model_fingerprint,
        run_id=run.id,
        run_finished_at=_iso(run),
        pinned_at=utcnow().isoformat(),
        metrics=dict(run.metrics),
        items=items,
        model_version=run.model_version,
    )
    path = baseline_path(root, model, evalset)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, baseline.to_json())
    return baseline


def _iso(run: RunRecord) -> str | None:
    finished = as_utc(run.finished_at)
    return finished.isoformat() if finished else None


def _choose_run(store: Store, model: str, evalset: str, run_id: int | None) -> RunRecord:
    if run_id is None:
        runs = store.runs(model=model, evalset=evalset, status="succeeded", limit=1)
        if not runs:
            raise NotFoundError(f"no succeeded run of model {model!r} on eval set {evalset!r} to pin")
        return runs[0][0]
    run = store.get_run(run_id)
    name = store.model_name(run.model_id)
    if name != model or run.evalset_name != evalset:
        raise InputError(f"run {run_id} is {name!r} on {run.evalset_name!r}, not {model!r} on {evalset!r}")
    if run.status != "succeeded":
        raise InputError(f"run {run_id} is {run.status}; only a succeeded run can be a baseline")
    return run


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            # mkstemp makes the file 0600; a baseline is reviewed in git and read by the service's user
            os.fchmod(fh.fileno(), 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_baseline(path: Path) -> Baseline:
    """Read one baseline file.

    Raises:
        BaselineError: missing, not JSON, another format version, or fields missing.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BaselineError([Problem(str(path), "baseline file not found")]) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        line = getattr(exc, "lineno", None)
        where = f"{path}:{line}" if line else str(path)
        raise BaselineError([Problem(where, f"corrupt baseline file: {exc}")]) from None
    if not isinstance(data, dict):
        raise BaselineError([Problem(str(path), "corrupt baseline file: not a JSON object")])
    version = data.get("format_version")
    if version != BASELINE_FORMAT_VERSION:
        raise BaselineError(
            [
                Problem(
                    str(path),
                    f"baseline format_version {version!r} is not supported (expected {BASELINE_FORMAT_VERSION})",
                )
            ]
        )
    try:
        items = tuple(BaselineItem(**item) for item in data.pop("items"))
        return Baseline(items=items, **data)
    except (TypeError, KeyError) as exc:
        raise BaselineError([Problem(str(path), f"corrupt baseline file: {exc}")]) from None


def iter_baselines(root: Path) -> Iterator[tuple[Path, Baseline | BaselineError]]:
    """Every baseline file under ``root``, loaded, or the error that loading it raised."""
    if not root.is_dir():
        return
    for path in sorted(root.glob("*/*.json")):
        try:
            yield path, load_baseline(path)
        except BaselineError as exc:
            yield path, exc


def unpin_baseline(root: Path, model: str, evalset: str) -> Path:
    """Remove the baseline file of ``model`` on ``evalset``."""
    path = baseline_path(root, model, evalset)
    if not path.exists():
        raise NotFoundError(f"no baseline pinned for model {model!r} on eval set {evalset!r} ({path})")
    path.unlink()
    if path.parent.exists() and not any(path.parent.iterdir()):
        path.parent.rmdir()
    return path


class BaselineFiles:
    """Baselines read from a folder, re-read only when a file changes (for the metrics collector)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[Path, tuple[int, Baseline | None]] = {}

    def current(self) -> list[Baseline]:
        found = []
        seen = set()
        for path in sorted(self.root.glob("*/*.json")) if self.root.is_dir() else []:
            seen.add(path)
            try:
                stamp = path.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            cached = self._cache.get(path)
            if cached is None or cached[0] != stamp:
                try:
                    baseline: Baseline | None = load_baseline(path)
                except BaselineError:
                    baseline = None  # reported by `monitor baseline list`; a scrape must not fail on it
                self._cache[path] = (stamp, baseline)
            entry = self._cache[path][1]
            if entry is not None:
                found.append(entry)
        for stale in set(self._cache) - seen:
            del self._cache[stale]
        return found
