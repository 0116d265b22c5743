"""The store on real databases: a temporary SQLite file and a real PostgreSQL server.

Every store test runs on both; ``tests/helpers/pg.py`` provides the server (a throwaway
cluster, or ``MONITOR_TEST_POSTGRES_URL``).  The end-to-end tests drive
``execute_run`` with a small deterministic backend injected through
``ModelPool(loader=...)``, the same door the real backends use.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlmodel import SQLModel

from monitor.backends import ModelSpec
from monitor.backends.base import (
    Backend,
    GenerationRequest,
    GenerationResult,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    ModelFingerprint,
    ProgressCallback,
)
from monitor.errors import BackendError, ModelLoadError, NotFoundError, StoreError
from monitor.evals.evalset import EvalSet, load_evalset
from monitor.service.plan import RunPlan
from monitor.service.runs import ModelPool, continue_run, execute_run
from monitor.store import (
    EvalSetVersionRecord,
    ItemResult,
    ModelRecord,
    RunRecord,
    Store,
    as_utc,
    make_engine,
    migrate,
    utcnow,
)
from monitor.store.db import MIGRATIONS, SQLITE_BUSY_TIMEOUT_MS, alembic_config
from tests.helpers.pg import free_port, postgres_server, postgres_url  # noqa: F401  (fixtures)

TABLES = {
    "models",
    "evalset_versions",
    "runs",
    "item_results",
    "daemon_lease",
    "run_requests",
    "verdicts",
    "drift_analyses",
    "recommendations",
    "webhook_events",
    "webhook_deliveries",
    "webhook_endpoints",
    "releases",
    "fires",
    "item_texts",
    "run_counters",
    "latest_verdicts",
    "latest_findings",
}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a new SQLite file, or a new schema on the PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'history' / 'monitor.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    opened = Store.open(db_url)
    yield opened
    opened.close()


# --- helpers -----------------------------------------------------------------------------------------


def head_revision() -> str:
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert head is not None
    return head


def count_rows(store: Store, table: str) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def current_revision(store: Store) -> str | None:
    with store.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def schema_differences(store: Store) -> list[Any]:
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, SQLModel.metadata))


def add_model(store: Store, name: str = "support-bot", **kwargs: Any) -> ModelRecord:
    return store.upsert_model(
        name,
        kind=kwargs.pop("kind", "hf"),
        base=kwargs.pop("base", f"/models/{name}"),
        adapter=None,
        **kwargs,
    )


def add_evalset(store: Store, name: str = "tickets", version: str = "v1") -> EvalSetVersionRecord:
    return store.ensure_evalset_version(
        name, version, task="multiple_choice", path=f"/evalsets/{name}", item_count=10
    )


def start(
    store: Store,
    model: str = "support-bot",
    evalset: str = "tickets",
    fewshot_k: int = 0,
    job: str | None = None,
) -> RunRecord:
    return store.start_run(
        model=add_model(store, model),
        evalset=add_evalset(store, evalset),
        strategy="zero-shot" if fewshot_k == 0 else f"{fewshot_k}-shot",
        fewshot_k=fewshot_k,
        settings_digest="0123456789abcdef",
        settings={"prompt": "Q: {input}\nA:", "fewshot_k": fewshot_k},
        trigger="test",
        job=job,
        items_total=10,
    )


def result(item_id: str, correct: bool = True, error: str | None = None, tokens: int = 7) -> ItemResult:
    if error is not None:
        return ItemResult(item_id=item_id, prediction=None, target="B", error=error)
    score = float(correct)
    return ItemResult(
        item_id=item_id,
        prediction="B" if correct else "C",
        target="B",
        correct=correct,
        score=score,
        scores={"acc": score},
        loglikelihoods=[-2.5, -0.25, -1.75],
        prompt_tokens=tokens,
        completion_tokens=1,
    )


# --- schema and migrations ---------------------------------------------------------------------------


def test_migrations_create_the_schema_from_empty(db_url: str) -> None:
    engine = make_engine(db_url)
    assert set(inspect(engine).get_table_names()) == set()
    engine.dispose()

    with Store.open(db_url) as store:
        assert store.schema_tables() == {*TABLES, "alembic_version"}
        assert current_revision(store) == head_revision() == "0012"
        columns = {c["name"] for c in inspect(store.engine).get_columns("item_results")}
        assert {"run_id", "item_id", "prediction", "target", "scores", "error"} <= columns


def test_models_and_migrations_describe_the_same_schema(store: Store) -> None:
    assert schema_differences(store) == []


def test_opening_twice_keeps_schema_and_data(db_url: str) -> None:
    first = Store.open(db_url)
    model = add_model(first, fingerprint="sha256:aaaa")
    first.close()

    second = Store.open(db_url)
    try:
        assert second.schema_tables() == {*TABLES, "alembic_version"}
        assert current_revision(second) == head_revision()
        again = second.get_model("support-bot")
        assert (again.id, again.fingerprint) == (model.id, "sha256:aaaa")
        assert count_rows(second, "alembic_version") == 1
    finally:
        second.close()


def test_downgrade_to_base_and_upgrade_again(store: Store) -> None:
    add_model(store)
    cfg = alembic_config(store.engine)
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert store.schema_tables() == {"alembic_version"}
    assert current_revision(store) is None

    migrate(store.engine)
    assert store.schema_tables() == {*TABLES, "alembic_version"}
    assert current_revision(store) == head_revision()
    assert schema_differences(store) == []
    with pytest.raises(NotFoundError):
        store.get_model("support-bot")


def test_a_database_from_a_newer_monitor_gives_store_error(store: Store) -> None:
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(StoreError, match="9999"):
        migrate(store.engine)


def test_sqlite_runs_in_wal_with_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    path = tmp_path / "monitor.db"
    Store.open(f"sqlite:///{path}").close()

    engine = make_engine(f"sqlite:///{path}")  # a brand-new connection, not one the store used
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == SQLITE_BUSY_TIMEOUT_MS
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
    finally:
        engine.dispose()
    # WAL is a property of the file: a plain sqlite3 connection sees it too.
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_foreign_keys_are_enforced(store: Store) -> None:
    ghost = ModelRecord(
        id=9999, name="ghost", kind="hf", base="/nowhere", created_at=utcnow(), updated_at=utcnow()
    )
    with pytest.raises(StoreError, match=r"(?i)foreign key"):
        store.start_run(
            model=ghost,
            evalset=add_evalset(store),
            strategy="zero-shot",
            fewshot_k=0,
            settings_digest="0" * 16,
            settings={},
            trigger="test",
        )
    assert store.runs() == []


# --- models and eval set versions --------------------------------------------------------------------


def test_upsert_model_updates_and_keeps_a_known_fingerprint(store: Store) -> None:
    created = add_model(store, base="/models/v1", fingerprint="sha256:1111")
    updated = store.upsert_model("support-bot", kind="hf", base="/models/v2", adapter="/adapters/a")
    assert updated.id == created.id
    assert (updated.base, updated.adapter, updated.fingerprint) == (
        "/models/v2",
        "/adapters/a",
        "sha256:1111",
    )
    assert as_utc(updated.updated_at) >= as_utc(created.created_at)  # type: ignore[operator]

    store.upsert_model("support-bot", kind="hf", base="/models/v2", adapter=None, fingerprint="sha256:2222")
    stored = store.get_model("support-bot")
    assert (stored.id, stored.adapter, stored.fingerprint) == (created.id, None, "sha256:2222")
    assert count_rows(store, "models") == 1
    with pytest.raises(NotFoundError, match="no-such-model"):
        store.get_model("no-such-model")


def test_evalset_versions_are_unique_per_name_and_version(store: Store) -> None:
    v1 = add_evalset(store, "tickets", "v1")
    assert add_evalset(store, "tickets", "v1").id == v1.id
    v2 = add_evalset(store, "tickets", "v2")
    other = add_evalset(store, "faq", "v1")
    assert len({v1.id, v2.id, other.id}) == 3

    with pytest.raises(StoreError, match=r"(?i)unique|duplicate"), store.session() as s:
        s.add(
            EvalSetVersionRecord(
                name="tickets",
                version="v1",
                task="multiple_choice",
                path="/x",
                item_count=1,
                created_at=utcnow(),
            )
        )
    assert count_rows(store, "evalset_versions") == 3


# --- runs ----------------------------------------------------------------------------------------------


def test_run_lifecycle_counts_batches_and_finishes(store: Store) -> None:
    before = utcnow()
    run = start(store, job="nightly")
    assert run.id is not None
    assert (run.status, run.items_done, run.finished_at, run.duration_s) == ("running", 0, None, None)

    store.add_item_results(run.id, [result("q1"), result("q2", correct=False), result("q3", error="boom")])
    after_first = store.get_run(run.id)
    assert (after_first.items_done, after_first.items_failed, after_first.prompt_tokens) == (3, 1, 14)
    store.add_item_results(run.id, [result("q4", tokens=5), result("q5", tokens=5)])
    store.add_item_results(run.id, [])
    counted = store.get_run(run.id)
    assert (counted.items_done, counted.items_failed) == (5, 1)
    assert (counted.prompt_tokens, counted.completion_tokens) == (24, 4)
    assert store.completed_item_ids(run.id) == {"q1", "q2", "q3", "q4", "q5"}

    stored = store.item_results(run.id)
    assert [r.item_id for r in stored] == ["q1", "q2", "q3", "q4", "q5"]
    q2, q3 = stored[1], stored[2]
    assert (q2.prediction, q2.target, q2.correct, q2.score, q2.scores) == ("C", "B", False, 0.0, {"acc": 0.0})
    assert q2.loglikelihoods == [-2.5, -0.25, -1.75]
    assert (q3.error, q3.correct, q3.score, q3.scores, q3.loglikelihoods) == ("boom", None, None, {}, None)

    finished = store.finish_run(
        run.id,
        status="succeeded",
        metrics={"acc": {"value": 0.75, "stderr": 0.25, "n": 4}},
        backend_info={"device": "cpu"},
    )
    after = utcnow()
    again = store.get_run(run.id)
    for record in (finished, again):
        started_at, finished_at = as_utc(record.started_at), as_utc(record.finished_at)
        assert started_at is not None and finished_at is not None
        assert before <= started_at <= finished_at <= after
        assert record.duration_s == pytest.approx((finished_at - started_at).total_seconds(), abs=1e-3)
    assert (again.status, again.error, again.job) == ("succeeded", None, "nightly")
    assert again.metrics == {"acc": {"value": 0.75, "stderr": 0.25, "n": 4}}
    assert again.backend_info == {"device": "cpu"}
    assert again.settings == {"prompt": "Q: {input}\nA:", "fewshot_k": 0}

    with pytest.raises(NotFoundError):
        store.get_run(run.id + 1000)
    with pytest.raises(NotFoundError):
        store.finish_run(run.id + 1000, status="failed")


def test_item_details_round_trip_and_prompts_are_kept_once(store: Store) -> None:
    """The exact prompt, the conversation sent, every sample and the filtered outputs come back per
    item; two runs scoring the same prompts store each text once (by its hash)."""
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q: 2+2"}]
    samples = [
        {"prediction": "4", "scores": {"exact_match": 1.0}},
        {"prediction": "5", "scores": {"exact_match": 0.0}},
    ]

    def detailed(item_id: str) -> ItemResult:
        return ItemResult(
            item_id=item_id,
            prediction="The answer is 4",
            target="4",
            scores={"exact_match": 1.0},
            prompt=f"<|system|>Be brief.<|user|>Q: {item_id}<|assistant|>",
            messages=messages,
            samples=samples,
            filtered={"exact_match": "4"},
            metric_errors={"json_schema": "$.answer: 'x' is not of type 'integer'"},
        )

    first, second = start(store), start(store)
    assert first.id is not None and second.id is not None
    store.add_item_results(first.id, [detailed("q1"), detailed("q2"), result("q3")])
    store.add_item_results(second.id, [detailed("q1"), detailed("q2")])

    details = store.item_details(first.id)
    assert set(details) == {"q1", "q2", "q3"}
    assert details["q3"] == {}
    assert details["q1"] == {
        "prompt": "<|system|>Be brief.<|user|>Q: q1<|assistant|>",
        "messages": messages,
        "samples": samples,
        "filtered": {"exact_match": "4"},
        "metric_errors": {"json_schema": "$.answer: 'x' is not of type 'integer'"},
    }
    assert store.item_details(second.id)["q2"] == details["q2"]
    with store.session() as s:
        texts = s.execute(text("SELECT count(*) FROM item_texts")).scalar_one()
    assert texts == 3  # two prompts and one conversation, shared by both runs

    # pruning the first run's items keeps every text the second run still refers to
    store.finish_run(first.id, status="succeeded")
    store.finish_run(second.id, status="succeeded")
    assert store.prune_item_results(utcnow(), keep_runs=[second.id]) == 3
    assert store.prune_item_texts() == 0
    assert store.item_details(second.id)["q1"] == details["q1"]
    # ... and once nothing refers to them, they go too
    assert store.prune_item_results(utcnow()) == 2
    assert store.prune_item_texts(batch_size=2) == 2 and store.prune_item_texts() == 1
    assert store.prune_item_texts() == 0


def test_a_duplicate_item_fails_its_whole_batch(store: Store) -> None:
    run = start(store)
    assert run.id is not None
    store.add_item_results(run.id, [result("q1"), result("q2")])

    with pytest.raises(StoreError, match=r"(?i)unique|duplicate"):
        store.add_item_results(run.id, [result("q3"), result("q1", correct=False)])
    with pytest.raises(StoreError, match=r"(?i)unique|duplicate"):
        store.add_item_results(run.id, [result("q4"), result("q4")])

    assert store.completed_item_ids(run.id) == {"q1", "q2"}
    assert [r.correct for r in store.item_results(run.id)] == [True, True]
    assert store.get_run(run.id).items_done == 2
    store.add_item_results(run.id, [result("q3"), result("q4")])  # the store is still usable
    assert store.get_run(run.id).items_done == 4

    other = start(store)  # the same item id in another run is fine
    assert other.id is not None
    store.add_item_results(other.id, [result("q1")])
    assert store.completed_item_ids(other.id) == {"q1"}


def test_a_failed_run_keeps_its_error_text(store: Store) -> None:
    run = start(store)
    assert run.id is not None
    reason = "run failed: BackendError: CUDA out of memory\n  at layer 3 — “tried 2.5 GiB”" + "x" * 5000
    store.finish_run(run.id, status="failed", error=reason)
    failed = store.get_run(run.id)
    assert (failed.status, failed.error) == ("failed", reason)
    assert [r.id for r, _ in store.runs(status="failed")] == [run.id]


def test_finishing_again_replaces_a_stale_error(store: Store) -> None:
    """A resumed run that succeeds must not keep the error of its interruption."""
    run = start(store)
    assert run.id is not None
    store.finish_run(run.id, status="interrupted", error="stopped after 3 of 10 items")
    store.finish_run(run.id, status="succeeded", metrics={})
    assert (store.get_run(run.id).status, store.get_run(run.id).error) == ("succeeded", None)


def test_runs_are_filtered_and_newest_first(store: Store) -> None:
    a = start(store, "alpha", "tickets")
    b = start(store, "beta", "tickets")
    c = start(store, "alpha", "faq")
    d = start(store, "alpha", "tickets", fewshot_k=3)
    for run, status in ((a, "succeeded"), (b, "failed"), (c, "succeeded")):
        assert run.id is not None
        store.finish_run(run.id, status=status)

    everything = store.runs()
    assert [(r.id, name) for r, name in everything] == [
        (d.id, "alpha"),
        (c.id, "alpha"),
        (b.id, "beta"),
        (a.id, "alpha"),
    ]
    started = [as_utc(r.started_at) for r, _ in everything]
    assert started == sorted(started, reverse=True)  # type: ignore[type-var]
    assert [r.id for r, _ in store.runs(model="alpha")] == [d.id, c.id, a.id]
    assert [r.id for r, _ in store.runs(evalset="tickets")] == [d.id, b.id, a.id]
    assert [r.id for r, _ in store.runs(model="alpha", evalset="tickets", status="succeeded")] == [a.id]
    assert [r.id for r, _ in store.runs(status="running")] == [d.id]
    assert [r.id for r, _ in store.runs(limit=2)] == [d.id, c.id]
    assert store.runs(model="gamma") == []


def test_latest_per_series_pairs_the_newest_run_with_the_previous_success(store: Store) -> None:
    first = start(store, "alpha", "tickets")
    second = start(store, "alpha", "tickets")
    third = start(store, "alpha", "tickets")
    lonely = start(store, "alpha", "tickets", fewshot_k=5)
    beta = start(store, "beta", "faq")
    for run, status in (
        (first, "succeeded"),
        (second, "succeeded"),
        (third, "failed"),
        (lonely, "succeeded"),
    ):
        assert run.id is not None
        store.finish_run(run.id, status=status)
    # A succeeded run that is newer than the series' latest does not count as "previous".
    assert beta.id is not None
    store.finish_run(beta.id, status="succeeded")

    series = store.latest_per_series()
    summary = [
        (
            s.model,
            s.latest.evalset_name,
            s.latest.strategy,
            s.latest.id,
            s.previous.id if s.previous else None,
        )
        for s in series
    ]
    assert summary == [
        ("alpha", "tickets", "5-shot", lonely.id, None),
        ("alpha", "tickets", "zero-shot", third.id, second.id),
        ("beta", "faq", "zero-shot", beta.id, None),
    ]
    assert series[1].latest.status == "failed"
    assert series[1].previous is not None and series[1].previous.status == "succeeded"


def test_timestamps_come_back_timezone_aware_utc(store: Store) -> None:
    run = start(store)
    assert run.id is not None
    store.finish_run(run.id, status="succeeded")
    stored = store.get_run(run.id)
    for value in (stored.started_at, stored.finished_at, store.get_model("support-bot").created_at):
        aware = as_utc(value)
        assert aware is not None
        assert aware.tzinfo is not None and aware.utcoffset() == timedelta(0)
        assert abs(aware - datetime.now(timezone.utc)) < timedelta(minutes=1)
    assert as_utc(None) is None
    assert as_utc(datetime(2026, 1, 1, 12, 0)) == datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    noon_berlin = datetime(2026, 1, 1, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    assert as_utc(noon_berlin) == datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    assert as_utc(noon_berlin).utcoffset() == timedelta(0)  # type: ignore[union-attr]


# --- connection errors ---------------------------------------------------------------------------------


def test_an_unreachable_database_gives_store_error_without_the_password() -> None:
    url = f"postgresql+psycopg2://monitor:hunter2-secret@127.0.0.1:{free_port()}/history"
    with pytest.raises(StoreError) as caught:
        Store.open(url)
    message = str(caught.value)
    assert "hunter2-secret" not in message
    assert "monitor:***@127.0.0.1" in message
    assert caught.value.exit_code == 4


def test_an_unopenable_sqlite_file_gives_store_error(tmp_path: Path) -> None:
    (tmp_path / "a-directory.db").mkdir()
    with pytest.raises(StoreError, match="cannot connect"):
        Store.open(f"sqlite:///{tmp_path / 'a-directory.db'}")


@pytest.mark.parametrize(
    "url",
    ["not a url", "", "nosuchdialect://host/db", "postgresql://monitor:hunter2-secret@host:port/db"],
)
def test_a_string_that_is_not_a_database_url_gives_store_error(url: str) -> None:
    with pytest.raises(StoreError) as caught:
        Store.open(url)
    assert "hunter2-secret" not in str(caught.value)


# --- concurrency ----------------------------------------------------------------------------------------


def test_a_reader_never_meets_a_locked_sqlite_database_while_a_writer_commits(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'monitor.db'}"
    writer, reader = Store.open(url), Store.open(url)
    batches, batch_size = 40, 25
    run = start(writer)
    assert run.id is not None
    run_id = run.id
    errors: list[BaseException] = []
    done = threading.Event()

    def write() -> None:
        try:
            for b in range(batches):
                writer.add_item_results(run_id, [result(f"b{b}-i{i}") for i in range(batch_size)])
                writer.update_run(run_id, load_s=float(b))
            writer.finish_run(run_id, status="succeeded")
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=write)
    seen: list[int] = []
    try:
        thread.start()
        while not done.is_set():
            seen.append(reader.get_run(run_id).items_done)
            ids = reader.completed_item_ids(run_id)
            assert len(ids) % batch_size == 0  # a batch is visible whole or not at all
            reader.runs(model="support-bot")
            reader.latest_per_series()
        thread.join()
    finally:
        writer.close()
        reader.close()
    assert errors == []
    assert seen == sorted(seen)
    assert any(0 < n < batches * batch_size for n in seen), "the reader never overlapped the writer"
    final = Store.open(url)
    try:
        assert final.get_run(run_id).items_done == batches * batch_size
        assert final.get_run(run_id).status == "succeeded"
    finally:
        final.close()


# --- recorded runs end to end ---------------------------------------------------------------------------


class TinyBackend:
    """A deterministic backend: it "believes" one choice per question and can be told to fail on some."""

    def __init__(self, beliefs: dict[str, str], fail_on: Sequence[str] = ()) -> None:
        self.beliefs = beliefs
        self.fail_on = set(fail_on)
        #: Contexts scored successfully, one entry per item: what a resumed run must not repeat.
        self.scored: list[str] = []
        self.closed = False

    def loglikelihood(
        self, requests: Sequence[LoglikelihoodRequest], *, progress: ProgressCallback | None = None
    ) -> list[LoglikelihoodResult]:
        questions = [request.context.removeprefix("Q: ").removesuffix("\nA:") for request in requests]
        broken = [q for q in questions if q in self.fail_on]
        if broken:
            raise BackendError(f"cannot score {broken[0]!r}")
        answers = []
        for request, question in zip(requests, questions, strict=True):
            believed = " " + self.beliefs[question]
            answers.append(
                LoglikelihoodResult(
                    loglikelihoods=tuple(-0.5 if c == believed else -3.0 for c in request.continuations),
                    is_greedy=tuple(c == believed for c in request.continuations),
                    context_tokens=self.count_tokens(request.context),
                    continuation_tokens=tuple(1 for _ in request.continuations),
                )
            )
            self.scored.append(request.context)
        if progress is not None:
            progress(len(requests))
        return answers

    def generate(
        self, requests: Sequence[GenerationRequest], *, progress: ProgressCallback | None = None
    ) -> list[GenerationResult]:
        return [
            GenerationResult(self.beliefs.get(r.prompt, ""), self.count_tokens(r.prompt), 1) for r in requests
        ]

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def fingerprint(self) -> ModelFingerprint:
        return ModelFingerprint(digest="sha256:tiny0001", base="tiny-base")

    def describe(self) -> dict[str, Any]:
        return {"backend": "tiny", "device": "cpu"}

    def close(self) -> None:
        self.closed = True


def write_evalset(root: Path, items: int = 10) -> EvalSet:
    """A multiple-choice eval set of ``items`` questions; question i's answer is "ABCD"[i % 4]."""
    directory = root / "arith"
    directory.mkdir()
    spec = {
        "name": "arith",
        "task": "multiple_choice",
        "prompt": "Q: {input}\nA:",
        "choices": ["A", "B", "C", "D"],
        "metrics": ["acc"],
    }
    (directory / "evalset.yaml").write_text(json.dumps(spec))  # JSON is YAML
    lines = [
        json.dumps({"id": f"q{i}", "input": f"question {i}", "target": "ABCD"[i % 4]}) for i in range(items)
    ]
    (directory / "data.jsonl").write_text("\n".join(lines) + "\n")
    return load_evalset(directory)


def beliefs(evalset: EvalSet, wrong: Sequence[str] = ()) -> dict[str, str]:
    """Question -> the choice the backend picks: the target, except for the ``wrong`` item ids."""
    picks = {}
    for item in evalset.items:
        right = str(item.target)
        picks[item.fields["input"]] = ("A" if right == "D" else "D") if item.id in wrong else right
    return picks


def plan_for(evalset: EvalSet) -> RunPlan:
    return RunPlan(
        model_name="tiny", spec=ModelSpec(backend="tiny", base="tiny-base"), evalset=evalset, fewshot_k=0
    )


def test_a_model_that_fails_to_load_is_stored_as_a_failed_run(store: Store, tmp_path: Path) -> None:
    evalset = write_evalset(tmp_path)

    def loader(spec: ModelSpec) -> Backend:
        raise ModelLoadError(f"model folder {spec.base} does not exist")

    run = execute_run(store, ModelPool(loader=loader), plan_for(evalset))
    assert run.id is not None
    stored = store.get_run(run.id)
    assert stored.status == "failed"
    assert stored.error == "model failed to load: model folder tiny-base does not exist"
    assert (stored.items_total, stored.items_done) == (10, 0)
    assert stored.finished_at is not None and stored.duration_s is not None
    assert store.item_results(run.id) == []


def test_an_item_that_raises_is_stored_with_its_error_and_not_scored(store: Store, tmp_path: Path) -> None:
    evalset = write_evalset(tmp_path)
    backend = TinyBackend(beliefs(evalset, wrong=["q1", "q2"]), fail_on=["question 7"])
    pool = ModelPool(loader=lambda spec: backend)

    run = execute_run(store, pool, plan_for(evalset), chunk_size=4)
    assert run.id is not None
    stored = store.get_run(run.id)
    assert (stored.status, stored.error) == ("succeeded", None)  # 1 of 10 failed: not over 10 %
    assert (stored.items_done, stored.items_failed) == (10, 1)
    assert stored.metrics["acc"]["n"] == 9
    assert stored.metrics["acc"]["value"] == pytest.approx(7 / 9)
    assert (stored.model_fingerprint, stored.backend_info) == (
        "sha256:tiny0001",
        {"backend": "tiny", "device": "cpu"},
    )
    assert store.get_model("tiny").fingerprint == "sha256:tiny0001"

    by_id = {r.item_id: r for r in store.item_results(run.id)}
    failed = by_id["q7"]
    assert failed.error == "cannot score 'question 7'"
    assert (failed.correct, failed.score, failed.scores, failed.prediction) == (None, None, {}, None)
    assert (by_id["q1"].correct, by_id["q1"].prediction) == (False, "D")
    assert (by_id["q3"].correct, by_id["q3"].prediction, by_id["q3"].target) == (True, "D", "D")


def test_a_run_over_the_error_rate_threshold_fails_with_the_reason(store: Store, tmp_path: Path) -> None:
    evalset = write_evalset(tmp_path)
    backend = TinyBackend(beliefs(evalset), fail_on=["question 2", "question 5", "question 6"])

    run = execute_run(store, ModelPool(loader=lambda spec: backend), plan_for(evalset), max_error_rate=0.2)
    assert run.id is not None
    stored = store.get_run(run.id)
    assert stored.status == "failed"
    assert stored.error == ("3 of 10 items failed (30.0% > 20%); first error: cannot score 'question 2'")
    assert (stored.items_done, stored.items_failed) == (10, 3)
    assert stored.metrics["acc"] == {"value": 1.0, "stderr": 0.0, "n": 7}


def test_an_interrupted_run_resumes_without_recomputing_or_duplicating(store: Store, tmp_path: Path) -> None:
    evalset = write_evalset(tmp_path)
    answers = beliefs(evalset, wrong=["q0", "q9"])
    loaded: list[TinyBackend] = []

    def loader(spec: ModelSpec) -> Backend:
        loaded.append(TinyBackend(answers))
        return loaded[-1]

    checks = 0

    def stop_after_two_chunks() -> bool:
        nonlocal checks
        checks += 1
        return checks > 2

    pool = ModelPool(loader=loader)
    run = execute_run(store, pool, plan_for(evalset), chunk_size=3, should_stop=stop_after_two_chunks)
    assert run.id is not None
    interrupted = store.get_run(run.id)
    assert (interrupted.status, interrupted.error) == ("interrupted", "stopped after 6 of 10 items")
    assert interrupted.items_done == 6
    assert store.completed_item_ids(run.id) == {f"q{i}" for i in range(6)}
    assert len(loaded[0].scored) == 6
    pool.close()
    assert loaded[0].closed

    resumed = continue_run(store, ModelPool(loader=loader), plan_for(evalset), run.id, chunk_size=3)
    assert resumed.id == run.id
    assert len(loaded) == 2
    assert loaded[1].scored == [f"Q: question {i}\nA:" for i in range(6, 10)]  # only what was missing

    final = store.get_run(run.id)
    assert (final.status, final.error) == ("succeeded", None)
    assert (final.items_done, final.items_failed, final.items_total) == (10, 0, 10)
    ids = [r.item_id for r in store.item_results(run.id)]
    assert sorted(ids) == sorted(f"q{i}" for i in range(10)) and len(ids) == len(set(ids))
    assert final.metrics["acc"]["n"] == 10
    assert final.metrics["acc"]["value"] == pytest.approx(0.8)
    assert [r.id for r, _ in store.runs()] == [run.id]
