"""Many served fine-tunes at once: the runs of several jobs behind one OpenAI-compatible server go out
together, within the endpoint's ``max_concurrency`` shared by every job, and the daemon's fires, resume
and fencing hold with several runs in flight.

The server is the project's (:class:`~monitor.testing.openai_server.OpenAIServer`) on loopback, with a
latency on every inference request, serving one tiny LoRA fine-tune under several adapter names; the
daemon runs in process (with its in-flight counters read back), then as a real process killed with
``kill -9`` mid-fire.  Every run is checked stored once, with the same items and predictions as the
serial worker's (``daemon.max_concurrent_runs: 1``), every fire closed once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monitor.backends import EndpointSpec
from monitor.backends.openai import endpoint_gate
from monitor.config import load_config
from monitor.service.daemon import Daemon
from monitor.store import Store
from monitor.testing.openai_server import FaultPlan, OpenAIServer, ServedModel, load_served_model
from tests.conftest import TinyModels
from tests.helpers.pg import postgres_server, postgres_url  # noqa: F401  (fixtures)
from tests.system.test_daemon_process import query
from tests.system.test_faults import Daemon as DaemonProcess
from tests.system.test_faults import check_invariants

CHOICES = ["billing", "technical", "account", "shipping"]
WORDS = ["refund", "crash", "login", "parcel", "invoice", "password", "screen", "address"]
ADAPTERS = ["adapter-1", "adapter-2", "adapter-3", "adapter-4"]
JOBS = {"left": ADAPTERS[:2], "right": ADAPTERS[2:]}
#: The endpoint's bound, larger than one run's chunks can fill (two chunks of CHUNK in flight).
CONCURRENCY = 8
CHUNK = 2
LATENCY_S = 0.03


@pytest.fixture(scope="module")
def served(tiny_models: TinyModels) -> list[ServedModel]:
    """One tiny LoRA fine-tune under four adapter names (one model lock: answers never race)."""
    model = load_served_model("adapter", tiny_models.gpt2, tiny_models.lora)
    return [dataclasses.replace(model, name=name) for name in ADAPTERS]


@pytest.fixture()
def server(served: list[ServedModel]) -> Iterator[OpenAIServer]:
    with OpenAIServer(served, faults=FaultPlan(latency_s=LATENCY_S)) as running:
        yield running


def write_setup(
    root: Path, url: str, db_url: str, *, mc_items: int = 24, gen_items: int = 8, **daemon: Any
) -> Path:
    """Two jobs of two served adapters each, on a multiple-choice and a generation set: 8 runs."""
    mc, gen = root / "evals" / "mc", root / "evals" / "gen"
    mc.mkdir(parents=True)
    gen.mkdir(parents=True)
    (mc / "evalset.yaml").write_text(
        f'name: mc\ntask: multiple_choice\nprompt: "Ticket: {{input}}\\nCategory:"\nchoices: {json.dumps(CHOICES)}\n'
    )
    (mc / "data.jsonl").write_text(
        "".join(
            json.dumps(
                {"id": f"m{k}", "input": f"{WORDS[k % 8]} {WORDS[(k * 5) % 8]} {k}", "target": CHOICES[k % 4]}
            )
            + "\n"
            for k in range(mc_items)
        )
    )
    (gen / "evalset.yaml").write_text(
        'name: gen\ntask: generate\nprompt: "Ticket: {input}\\nReply:"\nmetrics: [exact_match]\n'
        'max_new_tokens: 4\nstop: ["\\n"]\n'
    )
    (gen / "data.jsonl").write_text(
        "".join(
            json.dumps({"id": f"g{k}", "input": f"{WORDS[k % 8]} {k}", "target": WORDS[(k + 1) % 8]}) + "\n"
            for k in range(gen_items)
        )
    )
    endpoint = f"{{base_url: '{url}', max_concurrency: {CONCURRENCY}, mc_method: logprobs, timeout: 30s}}"
    models = "\n".join(
        f"  {name}: {{backend: openai, base: {name}, endpoint: {endpoint}}}" for name in ADAPTERS
    )
    jobs = "\n".join(
        f"  {job}:\n    models: [{', '.join(names)}]\n    evalsets: [mc, gen]\n"
        "    schedule: {every: 1h, run_at_start: true}"
        for job, names in JOBS.items()
    )
    settings = {
        "port": 0,
        "chunk_size": CHUNK,
        "max_loaded_models": 8,
        "max_concurrent_runs": 8,
        "lease_ttl": "60s",
        **daemon,
    }
    lines = "\n".join(f"  {key}: {value}" for key, value in settings.items())
    config = root / "monitor.yaml"
    config.write_text(
        f'database: "{db_url}"\nmodels:\n{models}\nevalsets:\n  mc: evals/mc\n  gen: evals/gen\n'
        f"jobs:\n{jobs}\ndaemon:\n{lines}\n"
    )
    return config


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'monitor.db'}"
    return str(request.getfixturevalue("postgres_url"))


def run_daemon(config: Path, url: str, timeout: float = 120) -> tuple[Daemon, Store, int]:
    """Start the daemon in process on ``config`` (its jobs fire at start), wait for its fires; stop it.
    Returns it, its store and the most requests its gate for ``url`` had in flight at once."""
    cfg = load_config(config)
    store = Store.open(cfg.database_url())
    daemon = Daemon(cfg, store, manual_timer=True)
    daemon.start()
    try:
        assert daemon.wait_idle(timeout), "the fires did not finish"
        gate = endpoint_gate(EndpointSpec(url))  # the one gate of the endpoint, alive while its models are
        assert gate is not None
        most = gate.max_in_flight
    finally:
        assert daemon.shutdown()
    assert endpoint_gate(EndpointSpec(url)) is None  # the pool closed every backend of it
    return daemon, store, most


def outcome(store: Store) -> dict[tuple[str, str], Any]:
    """Per (model, eval set): the run's status, items, metrics and every item's prediction."""
    out = {}
    for run, model in store.runs():
        assert run.id is not None
        items = {r.item_id: (r.prediction, r.error) for r in store.item_results(run.id)}
        metrics = {k: v["value"] for k, v in (run.metrics or {}).items()}
        out[(model, run.evalset_name)] = (run.status, run.items_done, metrics, items)
    return out


def check_fires(store: Store) -> None:
    """Both fires closed once, each with exactly one finished run per planned run."""
    fires = store.fires()
    assert sorted(f.job for f in fires) == sorted(JOBS)
    for fire in fires:
        assert fire.id is not None
        assert fire.status == "done" and fire.after_job_at is not None
        runs = store.fire_runs(fire.id)
        keys = sorted(f"{model}/{run.evalset_name}/{run.strategy}" for run, model in runs)
        assert keys == sorted(fire.planned or []), (keys, fire.planned)
        assert all(run.status == "succeeded" for run, _ in runs)
        for run, _ in runs:
            assert run.id is not None
            ids = [r.item_id for r in store.item_results(run.id)]
            assert len(ids) == len(set(ids)) == run.items_total == run.items_done


@pytest.fixture(scope="module")
def serial(served: list[ServedModel], tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Any]:
    """What the serial worker stores (one fire, one run at a time): the concurrent runs must store the same."""
    root = tmp_path_factory.mktemp("serial")
    with OpenAIServer(served, faults=FaultPlan(latency_s=LATENCY_S)) as server:
        config = write_setup(root, server.url, f"sqlite:///{root / 'monitor.db'}", max_concurrent_runs=1)
        daemon, store, most = run_daemon(config, server.url)
        with store:
            check_fires(store)
            assert daemon.slots.max_in_flight == 1
            # one run's two overlapped chunks at a time: the endpoint's slots are never all used
            assert most <= 2 * CHUNK < CONCURRENCY
            return outcome(store)


def test_served_runs_of_several_jobs_go_at_once_within_the_endpoint_bound(
    server: OpenAIServer, db_url: str, tmp_path: Path, serial: dict[tuple[str, str], Any]
) -> None:
    config = write_setup(tmp_path, server.url, db_url)
    daemon, store, most = run_daemon(config, server.url)
    with store:
        check_fires(store)
        # the runs of both fires were in flight together, and the endpoint's slots all busy, never more
        assert daemon.slots.max_in_flight > len(ADAPTERS[:2]) * 2
        assert most == CONCURRENCY
        # The server counts a request until its handler has written the answer, by when the client
        # may have sent the next one: it can see one more than the client has in flight, never two.
        assert CONCURRENCY <= server.max_in_flight <= CONCURRENCY + 1
        assert outcome(store) == serial
        assert len(serial) == len(ADAPTERS) * 2


def test_a_stop_leaves_every_run_in_flight_at_its_chunk_boundary_and_the_next_start_completes_them(
    server: OpenAIServer, tmp_path: Path, serial: dict[tuple[str, str], Any]
) -> None:
    config = write_setup(tmp_path, server.url, f"sqlite:///{tmp_path / 'monitor.db'}", mc_items=24)
    cfg = load_config(config)
    server.set_faults(FaultPlan(latency_s=0.15))  # slow enough to stop in the middle
    with Store.open(cfg.database_url()) as store:
        daemon = Daemon(cfg, store, manual_timer=True)
        daemon.start()
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                progressed = [r for r, _ in store.runs() if r.items_done >= CHUNK and r.status == "running"]
                if len(progressed) >= 4:
                    break
                time.sleep(0.02)
            assert len(progressed) >= 4, "several runs must be in flight at the stop"
        finally:
            assert daemon.shutdown()
        runs = [r for r, _ in store.runs()]
        stopped = [r for r in runs if r.status == "interrupted"]
        assert len(stopped) >= 4 and all(r.status in ("interrupted", "succeeded") for r in runs)
        for run in stopped:
            assert run.id is not None
            stored = store.item_results(run.id)
            # stopped after the chunk in hand: whole chunks stored, nothing half-written
            assert len(stored) == run.items_done and run.items_done % CHUNK == 0
            assert 0 < run.items_done < run.items_total
        assert {f.status for f in store.fires()} == {"open"}
        kept = {(r.id, i.item_id): i.id for r in stopped if r.id for i in store.item_results(r.id)}

        server.set_faults(FaultPlan(latency_s=LATENCY_S))
        again = Daemon(cfg, store, manual_timer=True)
        again.start()
        try:
            assert again.wait_idle(120)
        finally:
            assert again.shutdown()
        check_fires(store)
        assert len(store.runs()) == len(runs)  # resumed, none made twice
        # the items stored before the stop were kept, not evaluated again
        after = {(r.id, i.item_id): i.id for r, _ in store.runs() if r.id for i in store.item_results(r.id)}
        assert {key: after[key] for key in kept} == kept
        assert outcome(store) == serial


@pytest.mark.faults
def test_kill_9_with_several_runs_in_flight_resumes_and_repeats_nothing(
    server: OpenAIServer, tmp_path: Path, serial: dict[tuple[str, str], Any]
) -> None:
    db = tmp_path / "monitor.db"
    config = write_setup(tmp_path, server.url, f"sqlite:///{db}", mc_items=24)
    server.set_faults(FaultPlan(latency_s=0.15))
    in_flight = "select count(*) from runs where status = 'running' and items_done >= 2"
    first = DaemonProcess(config, "first")
    try:
        first.wait_for(
            lambda: (query(db, in_flight) or [(0,)])[0][0] >= 4, "several runs in flight", timeout=120
        )
        first.kill()
    finally:
        if first.proc.poll() is None:
            os.kill(first.proc.pid, signal.SIGKILL)
            first.proc.wait(10)
    before = dict(query(db, "select run_id || '/' || item_id, id from item_results"))
    assert query(db, "select count(*) from fires where status = 'open'") == [(2,)]
    assert len(before) > 0

    server.set_faults(FaultPlan(latency_s=LATENCY_S))
    second = DaemonProcess(config, "second")
    try:
        second.wait_for(
            lambda: query(db, "select count(*) from fires where status = 'done'") == [(2,)],
            "both fires completed",
            timeout=180,
        )
        assert second.stop() == 0
    finally:
        if second.proc.poll() is None:
            second.proc.kill()
    counts = check_invariants(db, fires=2)
    assert counts["runs"] == len(ADAPTERS) * 2
    after = dict(query(db, "select run_id || '/' || item_id, id from item_results"))
    assert {key: after[key] for key in before} == before  # kept as they were, not computed again
    with Store.open(f"sqlite:///{db}") as store:
        assert outcome(store) == serial
