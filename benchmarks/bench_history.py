"""A year of nightly history: how `/metrics`, `monitor status`, the API and a verdict's analysis scale.

Fills a store as a year of nightly runs would (by default 50 fine-tunes x 3 eval sets x 400 items
x 365 days: 54,750 runs, 21.9 million item results, a verdict per run and metric, behaviour,
canary and input-drift findings, a recommendation per fine-tune and night, a fire per job and
night), on SQLite and, when a server can be had, PostgreSQL; then measures, at 1, 3, 6 and 12
months of history:

* a ``/metrics`` scrape through the real collectors (``StoreCollector`` in a fresh
  ``CollectorRegistry``, ``generate_latest``): p50 and p99 of ``--scrapes`` scrapes, series count;
* ``monitor status`` (``monitor.api.views.status_entries``, the function behind the command);
* the API's ``/api/v1/status``, ``/api/v1/runs`` and ``/api/v1/fires`` pages, over HTTP on
  loopback (``MonitorApp`` in the real ``HttpServer``);
* a verdict's analysis (``monitor.service.after_job.analyze_run`` on the newest run of one
  series: items, baseline-era runs, previous verdicts, Holm's family, drift, then the write);
* the database size.

How it fills.  The first night goes through the store's public methods (``upsert_model``,
``ensure_evalset_version``, ``open_fire``, ``start_run``, ``add_item_results``, ``finish_run``,
``add_verdicts``, ``add_findings``, ``add_recommendation``), and every series' first run is pinned
as its baseline with ``pin_baseline``.  The other nights are bulk inserts with SQLAlchemy core
into the same tables (``monitor.store.tables``): rows built in Python for runs, fires, verdicts,
findings and recommendations, and one ``INSERT ... SELECT`` per night that copies the first
night's 60,000 item results onto that night's runs with a varying ``correct``.  The product never
does this (the store is the only door to its tables); a filler may, to write a year in minutes.
On PostgreSQL the id sequences are moved past the explicit ids after each fill.

Usage::

    .venv/bin/python benchmarks/bench_history.py                     # full size, SQLite and PostgreSQL
    .venv/bin/python benchmarks/bench_history.py --scale 10x30       # 10 fine-tunes, 30 days: a quick check
    .venv/bin/python benchmarks/bench_history.py --backends sqlite --report /tmp/h.json

Figures go to stdout, one line per checkpoint, and, with every raw timing, to ``--report``
(default ``benchmarks/history.json``).  The full run (both backends) took 22 minutes on a 2-vCPU
machine shared with other work: 4.3 min of filling for SQLite, 5.7 for PostgreSQL, the rest
measuring (``monitor status`` and ``/api/v1/status`` take 15-25 s each at this size); the SQLite
file reaches 4.6 GiB, the PostgreSQL database 6.0 GiB, so give ``--workdir`` and the server room.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.helpers.pg starts the throwaway PostgreSQL

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from sqlalchemy import Integer, case, func, insert, literal, select, text  # noqa: E402

from monitor.analysis.baselines import BaselineFiles, pin_baseline  # noqa: E402
from monitor.api.server import HttpServer, MonitorApp  # noqa: E402
from monitor.api.views import status_entries  # noqa: E402
from monitor.evals.results import ItemResult  # noqa: E402
from monitor.exporters.metrics import StoreCollector, baseline_values  # noqa: E402
from monitor.service.after_job import analyze_run  # noqa: E402
from monitor.store import Store  # noqa: E402
from monitor.store.tables import (  # noqa: E402
    DriftRecord,
    FireRecord,
    ItemResultRecord,
    RecommendationRecord,
    RunRecord,
    VerdictRecord,
)

#: eval set -> (task, metrics): 11 metrics a fine-tune, so 50 fine-tunes export over 10,000 series.
EVALSETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "golden-qa": ("generate", ("exact_match", "contains", "token_f1", "regex")),
    "golden-json": ("generate", ("json_valid", "json_fields", "exact_match", "contains", "token_f1")),
    "golden-mc": ("multiple_choice", ("acc", "acc_norm")),
}
OPTIONS = ("keep", "rollback", "retrain", "rebase", "prompt_newer_base")
ACTIONS = ("keep", "keep", "keep", "retrain", "rollback")
STRATEGY = "fewshot-5"
CHECKPOINTS = (30, 91, 182, 365)

IR = ItemResultRecord.__table__  # type: ignore[attr-defined]
RUNS = RunRecord.__table__  # type: ignore[attr-defined]
FIRES = FireRecord.__table__  # type: ignore[attr-defined]
VERDICTS = VerdictRecord.__table__  # type: ignore[attr-defined]
DRIFT = DriftRecord.__table__  # type: ignore[attr-defined]
RECS = RecommendationRecord.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Scale:
    models: int
    days: int
    items: int

    @property
    def checkpoints(self) -> list[int]:
        if self.days >= 365:
            return [c for c in CHECKPOINTS if c <= self.days]
        return sorted({max(1, round(self.days * c / 365)) for c in CHECKPOINTS})


def parse_scale(text_: str, items: int) -> Scale:
    """``MODELSxDAYS`` (``50x365``), or ``full``."""
    if text_ == "full":
        return Scale(50, 365, items)
    models, _, days = text_.partition("x")
    return Scale(int(models), int(days), items)


# --- filling ------------------------------------------------------------------------------------------


def _rng(*parts: int) -> float:
    """A deterministic number in [0, 1) from integers (no global random state)."""
    h = 2166136261
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFF)) * 16777619) & 0xFFFFFFFF
    return h / 2**32


def _metrics(evalset: str, day: int, model: int, n: int) -> dict[str, Any]:
    out = {}
    for k, metric in enumerate(EVALSETS[evalset][1]):
        value = 0.55 + 0.3 * _rng(model, k) - 0.00005 * day + 0.02 * (_rng(model, k, day) - 0.5)
        out[metric] = {"value": value, "stderr": (value * (1 - value) / n) ** 0.5, "n": n}
    return out


def _item_results(evalset: str, model: int, n: int) -> list[ItemResult]:
    metrics = EVALSETS[evalset][1]
    out = []
    for i in range(n):
        ok = _rng(model, i) < 0.7
        scores = {
            m: (1.0 if ok else 0.0) if m != "token_f1" else round(_rng(model, i, 7), 3) for m in metrics
        }
        out.append(
            ItemResult(
                item_id=f"{evalset}-{i:04d}",
                prediction=f"answer {i} from model {model}: " + "lorem ipsum " * (i % 4),
                target=f"answer {i}",
                correct=ok,
                score=scores[metrics[0]],
                scores=scores,
                prompt_tokens=280 + i % 60,
                completion_tokens=8 + i % 24,
            )
        )
    return out


def _verdict_row(
    run: dict[str, Any], metric: str, day: int, baseline_run: int, when: datetime
) -> dict[str, Any]:
    r = _rng(run["model_id"], day, len(metric))
    state = "regressed" if r < 0.02 else "suspect" if r < 0.08 else "ok"
    delta = -0.03 * r
    return {
        "run_id": run["id"], "model_id": run["model_id"], "evalset_name": run["evalset_name"],
        "strategy": STRATEGY, "metric": metric, "baseline_run_id": baseline_run, "mode": "paired",
        "method": "mcnemar_exact", "delta": delta, "ci_low": delta - 0.04, "ci_high": delta + 0.04,
        "p_value": r, "adjusted_p": min(1.0, r * 11), "min_detectable": 0.06, "tolerance": 0.02,
        "alpha": 0.05, "significant_drop": state != "ok", "consecutive": int(state != "ok"),
        "state": state, "reason": None,
        "details": {"look": day, "newly_broken": int(40 * r), "design": "repeats", "binary": True},
        "created_at": when,
    }  # fmt: skip


def _finding_rows(
    model_id: int, runs: list[dict[str, Any]], day: int, when: datetime
) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        for kind in ("behaviour", "canary"):
            drifted = _rng(model_id, day, len(kind)) < 0.03
            rows.append(
                {
                    "model_id": model_id,
                    "kind": kind,
                    "source": run["evalset_name"],
                    "run_id": run["id"],
                    "score": 0.93 if kind == "behaviour" else 0.0,
                    "p_value": 0.4,
                    "threshold": 0.9,
                    "drifted": drifted,
                    "state": "drifted" if drifted else "ok",
                    "reason": None,
                    "details": {"agreement": 0.93, "items": 400},
                    "created_at": when,
                }
            )
    rows.append(
        {
            "model_id": model_id,
            "kind": "input",
            "source": f"prod-{model_id}",
            "run_id": None,
            "score": 0.52,
            "p_value": 0.3,
            "threshold": 0.01,
            "drifted": False,
            "state": "ok",
            "reason": None,
            "details": {"auc": 0.52, "rows": [2000, 2000]},
            "created_at": when,
        }
    )
    return rows


def _costs(model: int) -> dict[str, Any]:
    options = {
        o: {
            "total_per_month": 100.0 + 37 * k + model,
            "cost_per_request": 0.001 * (k + 1),
            "qualifies": k != 1,
        }
        for k, o in enumerate(OPTIONS)
    }
    return {
        "currency": "USD",
        "options": options,
        "retrain_break_even_days": 40.0,
        "rebase_break_even_days": 75.0,
    }


def _recommendation_row(model_id: int, model: int, day: int, when: datetime) -> dict[str, Any]:
    action = ACTIONS[int(_rng(model, day // 30) * len(ACTIONS))]
    return {
        "model_id": model_id, "action": action, "previous_action": action, "changed": False,
        "summary": f"{action}: golden sets within tolerance of the baseline; costs as configured.",
        "reasons": ["no confirmed regression", "no behaviour drift"], "evidence": {"verdicts": 11},
        "costs": _costs(model), "created_at": when,
    }  # fmt: skip


class Filler:
    """Writes the history night by night; the first night through the store, the rest in bulk."""

    def __init__(self, store: Store, scale: Scale, baselines: Path, start: datetime) -> None:
        self.store = store
        self.scale = scale
        self.baselines = baselines
        self.start = start
        self.days_filled = 0
        self.model_ids: list[int] = []
        self.versions: dict[str, Any] = {}
        self.template_runs: list[dict[str, Any]] = []  # night 0's runs, in fill order
        self.first_item_id = 0
        self.baseline_runs: dict[tuple[int, str], int] = {}
        self.postgres = store.engine.dialect.name == "postgresql"

    def night(self, day: int) -> datetime:
        return self.start + timedelta(days=day, hours=2)

    def first_night(self) -> None:
        s = self.store
        when = self.night(0)
        for name, (task, _) in EVALSETS.items():
            self.versions[name] = s.ensure_evalset_version(
                name, "v1", task=task, path=f"/nonexistent/{name}", item_count=self.scale.items
            )
        for m in range(self.scale.models):
            name = f"ft-{m:03d}"
            record = s.upsert_model(
                name, kind="hf", base="org/base-7b", adapter=f"/adapters/{name}", fingerprint=f"fp-{m}"
            )
            assert record.id is not None
            self.model_ids.append(record.id)
            fire = s.open_fire(
                f"nightly-{name}", trigger="schedule", scheduled_for=when, key=f"nightly-{name}@0"
            )
            assert fire is not None and fire.id is not None
            s.start_fire(fire.id, [f"{name}/{e}/{STRATEGY}" for e in EVALSETS])
            runs = []
            for evalset in EVALSETS:
                run = s.start_run(
                    model=record, evalset=self.versions[evalset], strategy=STRATEGY, fewshot_k=5,
                    settings_digest="d" * 16, settings={"fewshot": 5, "max_new_tokens": 64},
                    trigger="schedule", job=f"nightly-{name}", items_total=self.scale.items,
                    model_fingerprint=f"fp-{m}", scheduled_for=when, fire_id=fire.id,
                )  # fmt: skip
                assert run.id is not None
                results = _item_results(evalset, m, self.scale.items)
                for i in range(0, len(results), 100):
                    s.add_item_results(run.id, results[i : i + 100])
                s.finish_run(run.id, status="succeeded", metrics=_metrics(evalset, 0, m, self.scale.items))
                s.update_run(
                    run.id,
                    started_at=when,
                    finished_at=when + timedelta(minutes=6),
                    duration_s=360.0,
                    load_s=12.0,
                )
                pin_baseline(s, self.baselines, name, evalset, run.id)
                self.baseline_runs[(record.id, evalset)] = run.id
                row = {"id": run.id, "model_id": record.id, "evalset_name": evalset, "m": m}
                self.template_runs.append(row)
                runs.append(row)
            verdicts = [
                VerdictRecord(**_verdict_row(r, metric, 0, r["id"], when))
                for r in runs
                for metric in EVALSETS[r["evalset_name"]][1]
            ]
            s.add_verdicts(verdicts)
            s.add_findings([DriftRecord(**row) for row in _finding_rows(record.id, runs, 0, when)])
            rec = _recommendation_row(record.id, m, 0, when)
            s.add_recommendation(
                record.id, action=rec["action"], summary=rec["summary"], reasons=rec["reasons"],
                evidence=rec["evidence"], costs=rec["costs"],
            )  # fmt: skip
            s.finish_fire(fire.id)
        with s.engine.connect() as conn:
            self.first_item_id = int(conn.execute(select(func.min(IR.c.id))).scalar_one())
        self.days_filled = 1

    def fill_to(self, days: int) -> float:
        """Bulk-insert nights up to ``days`` (exclusive of those filled); returns the seconds taken."""
        t0 = time.perf_counter()
        with self.store.engine.begin() as conn:
            next_ids = {
                t.name: int(conn.execute(select(func.coalesce(func.max(t.c.id), 0))).scalar_one()) + 1
                for t in (RUNS, FIRES, VERDICTS, DRIFT, RECS)
            }
        first_template = self.template_runs[0]["id"]
        last_template = self.template_runs[-1]["id"]
        for day in range(self.days_filled, days):
            when = self.night(day)
            run_rows, fire_rows, verdict_rows, finding_rows, rec_rows = [], [], [], [], []
            run_offset = next_ids["runs"] - first_template
            per_model: dict[int, list[dict[str, Any]]] = {}
            for m in range(len(self.model_ids)):
                fire_id = next_ids["fires"] + m
                job = f"nightly-ft-{m:03d}"
                fire_rows.append(
                    {
                        "id": fire_id,
                        "key": f"{job}@{day}",
                        "job": job,
                        "trigger": "schedule",
                        "scheduled_for": when,
                        "status": "done",
                        "planned": [f"ft-{m:03d}/{e}/{STRATEGY}" for e in EVALSETS],
                        "created_at": when,
                        "started_at": when,
                        "after_job_at": when + timedelta(minutes=20),
                        "finished_at": when + timedelta(minutes=20),
                        "error": None,
                    }
                )
            for t in self.template_runs:
                m, evalset = t["m"], t["evalset_name"]
                failed = _rng(m, day, 99) < 0.01
                started = when + timedelta(minutes=6 * list(EVALSETS).index(evalset))
                row = {
                    "id": t["id"] + run_offset, "model_id": t["model_id"],
                    "evalset_version_id": self.versions[evalset].id, "evalset_name": evalset,
                    "job": f"nightly-ft-{m:03d}", "status": "failed" if failed else "succeeded",
                    "trigger": "schedule", "strategy": STRATEGY, "fewshot_k": 5, "settings_digest": "d" * 16,
                    "settings": {"fewshot": 5, "max_new_tokens": 64}, "model_fingerprint": f"fp-{m}",
                    "model_version": None, "evalset_version": "v1", "started_at": started,
                    "scheduled_for": when, "finished_at": started + timedelta(minutes=6),
                    "duration_s": 330.0 + 60 * _rng(m, day), "load_s": 12.0,
                    "metrics": {} if failed else _metrics(evalset, day, m, self.scale.items),
                    "items_total": self.scale.items, "items_done": self.scale.items, "items_failed": 0,
                    "prompt_tokens": 300 * self.scale.items, "completion_tokens": 20 * self.scale.items,
                    "backend_info": {"backend": "hf", "device": "cuda:0"},
                    "error": "CUDA out of memory" if failed else None, "fire_id": next_ids["fires"] + m,
                    "segment_started_at": started, "progress_at": started + timedelta(minutes=6),
                }  # fmt: skip
                run_rows.append(row)
                per_model.setdefault(t["model_id"], []).append(row)
                if not failed:
                    base = self.baseline_runs[(t["model_id"], evalset)]
                    verdict_rows.extend(
                        _verdict_row(row, metric, day, base, when) for metric in EVALSETS[evalset][1]
                    )
            for m, model_id in enumerate(self.model_ids):
                finding_rows.extend(_finding_rows(model_id, per_model[model_id], day, when))
                rec_rows.append(_recommendation_row(model_id, m, day, when))
            for name, rows in (
                ("verdicts", verdict_rows),
                ("drift_analyses", finding_rows),
                ("recommendations", rec_rows),
            ):
                for k, row in enumerate(rows):
                    row["id"] = next_ids[name] + k
            # every item of night 0's runs, copied onto tonight's runs; about 30% wrong, varying by night
            wrong = (IR.c.id * 7919 + day * 104729) % 100 < 30
            items = select(
                IR.c.run_id + literal(run_offset, Integer),
                IR.c.item_id, IR.c.prediction, IR.c.target,
                case((wrong, False), else_=True), IR.c.score, IR.c.scores, IR.c.loglikelihoods,
                IR.c.prompt_tokens, IR.c.completion_tokens, IR.c.error,
            ).where(IR.c.run_id >= first_template, IR.c.run_id <= last_template)  # fmt: skip
            with self.store.engine.begin() as conn:
                conn.execute(insert(FIRES), fire_rows)
                conn.execute(insert(RUNS), run_rows)
                conn.execute(
                    insert(IR).from_select(
                        ["run_id", "item_id", "prediction", "target", "correct", "score", "scores",
                         "loglikelihoods", "prompt_tokens", "completion_tokens", "error"],
                        items,
                    )
                )  # fmt: skip
                conn.execute(insert(VERDICTS), verdict_rows)
                conn.execute(insert(DRIFT), finding_rows)
                conn.execute(insert(RECS), rec_rows)
            next_ids["runs"] += len(run_rows)
            next_ids["fires"] += len(fire_rows)
            next_ids["verdicts"] += len(verdict_rows)
            next_ids["drift_analyses"] += len(finding_rows)
            next_ids["recommendations"] += len(rec_rows)
        self.days_filled = max(self.days_filled, days)
        if self.postgres:
            with self.store.engine.begin() as conn:
                for table in (
                    "runs",
                    "fires",
                    "verdicts",
                    "drift_analyses",
                    "recommendations",
                    "item_results",
                ):
                    conn.execute(
                        text(
                            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
                        )
                    )
                conn.execute(text("ANALYZE"))
        else:
            with self.store.engine.begin() as conn:
                conn.execute(text("ANALYZE"))
        return time.perf_counter() - t0


# --- measuring ----------------------------------------------------------------------------------------


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    times, value = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return times, value


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _series_count(exposition: bytes) -> int:
    return sum(1 for line in exposition.decode().splitlines() if line and not line.startswith("#"))


def _db_size(store: Store, sqlite_file: Path | None) -> int:
    if sqlite_file is not None:
        return sum(p.stat().st_size for p in sqlite_file.parent.glob(sqlite_file.name + "*"))
    with store.engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())


def _row_counts(store: Store) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {
            t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
            for t in (RUNS, IR, VERDICTS, DRIFT, RECS, FIRES)
        }


def measure(
    store: Store, filler: Filler, args: argparse.Namespace, sqlite_file: Path | None
) -> dict[str, Any]:
    files = BaselineFiles(filler.baselines)
    registry = CollectorRegistry()
    registry.register(StoreCollector(store, baselines=lambda: baseline_values(files.current())))
    generate_latest(registry)  # warm: baselines read once, as a running daemon has them
    scrape_times, exposition = _timed(lambda: generate_latest(registry), args.scrapes)
    status_times, entries = _timed(lambda: status_entries(store), args.slow_repeats)
    # the store's reads behind the scrape and the pages, one by one: which of them grows with history
    queries = {
        name: _timed(fn, args.repeats)[0]
        for name, fn in (
            ("run_summary", store.run_summary),
            # the counters' roll-up replaced this GROUP BY over every run (kept to show what it saved)
            ("run_counts_scan", store.scanned_run_counts),
            ("latest_verdicts", store.latest_verdicts),
            ("latest_findings", store.latest_findings),
            ("latest_recommendations", store.latest_recommendations),
            ("latest_per_series", store.latest_per_series),
            ("runs_limit_100", lambda: store.runs(limit=100)),
            (
                "runs_one_series_10",
                lambda: store.runs(model="ft-000", evalset="golden-qa", status="succeeded", limit=10),
            ),
            ("item_results_one_run", lambda: store.item_results(filler.template_runs[0]["id"])),
        )
    }
    server = HttpServer(MonitorApp(registry, store), "127.0.0.1", 0, timeout_s=120)
    server.start()
    try:

        def get(path: str) -> bytes:
            with urllib.request.urlopen(server.url + path, timeout=300) as response:
                return bytes(response.read())

        api: dict[str, list[float]] = {}
        for name, path in (
            ("metrics_http", "/metrics"),
            ("api_status", "/api/v1/status"),
            ("api_runs", "/api/v1/runs?limit=100"),
            ("api_runs_model", "/api/v1/runs?model=ft-000&evalset=golden-qa&limit=100"),
            ("api_fires", "/api/v1/fires?limit=100"),
        ):
            repeats = args.slow_repeats if name == "api_status" else args.repeats
            api[name], _ = _timed(lambda path=path: get(path), repeats)
    finally:
        server.stop()
    # a verdict's analysis: the newest run of one series, against its pinned baseline
    with store.engine.connect() as conn:
        newest = int(
            conn.execute(
                select(func.max(RUNS.c.id)).where(
                    RUNS.c.model_id == filler.model_ids[0], RUNS.c.evalset_name == "golden-qa",
                    RUNS.c.status == "succeeded",
                )
            ).scalar_one()
        )  # fmt: skip
    analysis_times, analysis = _timed(lambda: analyze_run(store, newest, filler.baselines), args.repeats)
    return {
        "days": filler.days_filled,
        "rows": _row_counts(store),
        "db_bytes": _db_size(store, sqlite_file),
        "series": _series_count(exposition),
        "scrape_s": scrape_times,
        "scrape_p50_s": _quantile(scrape_times, 0.5),
        "scrape_p99_s": _quantile(scrape_times, 0.99),
        "status_s": status_times,
        "status_entries": len(entries),
        "queries_s": queries,
        **{f"{k}_s": v for k, v in api.items()},
        "analysis_s": analysis_times,
        "analysis_verdicts": len(analysis.verdicts),
    }


# --- backends -----------------------------------------------------------------------------------------


@contextmanager
def sqlite_store(workdir: Path) -> Iterator[tuple[Store, Path]]:
    path = workdir / "history.db"
    with Store.open(f"sqlite:///{path}") as store:
        yield store, path


@contextmanager
def postgres_store(workdir: Path) -> Iterator[tuple[Store, None]]:
    from tests.helpers.pg import start_server, stop_server

    url = os.environ.get("MONITOR_TEST_POSTGRES_URL")
    server = None
    root = None
    if url is None:
        root = Path(tempfile.mkdtemp(prefix="monitor-pg-bench-"))
        server = start_server(root)
        url = server.url.render_as_string(hide_password=False)
    try:
        with Store.open(url) as store:
            yield store, None
    finally:
        if server is not None:
            stop_server(server)
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)


def run_backend(name: str, args: argparse.Namespace, scale: Scale, workdir: Path) -> dict[str, Any]:
    opener = sqlite_store if name == "sqlite" else postgres_store
    out: dict[str, Any] = {"backend": name, "checkpoints": []}
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with opener(workdir) as (store, sqlite_file):
        filler = Filler(store, scale, workdir / f"baselines-{name}", start)
        t0 = time.perf_counter()
        filler.first_night()
        out["first_night_s"] = time.perf_counter() - t0
        fill_total = out["first_night_s"]
        for days in scale.checkpoints:
            fill_total += filler.fill_to(days)
            point = measure(store, filler, args, sqlite_file)
            point["fill_s_cumulative"] = fill_total
            out["checkpoints"].append(point)
            print_point(name, point, flush=True)
    return out


def print_point(backend: str, p: dict[str, Any], flush: bool = False) -> None:
    def med(key: str) -> str:
        return f"{statistics.median(p[key]):.3f}"

    print(
        f"{backend:8} {p['days']:4d}d runs={p['rows']['runs']:6d} items={p['rows']['item_results']:9d} "
        f"db={p['db_bytes'] / 2**20:8.0f}MiB series={p['series']:6d} scrape p50={p['scrape_p50_s']:.3f} "
        f"p99={p['scrape_p99_s']:.3f} status={med('status_s')} api_status={med('api_status_s')} "
        f"api_runs={med('api_runs_s')} api_runs_model={med('api_runs_model_s')} api_fires={med('api_fires_s')} "
        f"analysis={med('analysis_s')} fill={p['fill_s_cumulative']:.0f}s\n    queries: "
        + " ".join(f"{k}={statistics.median(v):.3f}" for k, v in p["queries_s"].items()),
        flush=flush,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", default="full", help="MODELSxDAYS, e.g. 10x30 (default: full = 50x365)")
    parser.add_argument("--items", type=int, default=400, help="items per eval set")
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--scrapes", type=int, default=30, help="scrapes per checkpoint (p50/p99)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of every other measurement")
    parser.add_argument(
        "--slow-repeats", type=int, default=1, help="repeats of monitor status and /api/v1/status"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the SQLite file goes (default: a temp dir)"
    )
    parser.add_argument("--report", type=Path, default=ROOT / "benchmarks" / "history.json")
    args = parser.parse_args(argv)
    scale = parse_scale(args.scale, args.items)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="monitor-history-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "scale": {"models": scale.models, "days": scale.days, "items": scale.items, "evalsets": len(EVALSETS)},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_1m_at_start": os.getloadavg()[0]},
        "backends": [],
    }  # fmt: skip
    status = 0
    t0 = time.perf_counter()
    try:
        for backend in args.backends.split(","):
            try:
                report["backends"].append(run_backend(backend.strip(), args, scale, workdir))
            except Exception as exc:  # a missing PostgreSQL skips that backend, with the reason
                print(f"{backend}: not measured: {type(exc).__name__}: {exc}", file=sys.stderr)
                report["backends"].append({"backend": backend, "error": f"{type(exc).__name__}: {exc}"})
                status = 2
    finally:
        report["total_s"] = time.perf_counter() - t0
        args.report.write_text(json.dumps(report, indent=2) + "\n")
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"total {report['total_s']:.0f} s; report: {args.report}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
