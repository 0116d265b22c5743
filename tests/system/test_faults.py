"""The daemon under faults, as real processes on real tiny models: nothing lost, nothing twice.

Every test drives ``monitor daemon`` processes through one kind of fault and then
checks the store by SQL (:func:`check_invariants`): every fire complete exactly
once, every item of every run stored exactly once, no run left ``running`` after
a clean stop, no status written by a fenced holder, readiness false while writes
fail.  The faults: ``kill -9`` at seeded random points of a multi-run fire, a
holder paused (SIGSTOP) past its lease and woken, database files made unwritable
mid-run, a full filesystem (a small tmpfs: root only), and a second daemon on
the same configuration.  SIGTERM during a model load longer than the shutdown
timeout is in ``test_daemon_process.py``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import TinyModels
from tests.system.test_daemon_process import query

pytestmark = pytest.mark.faults

CHOICES = ["billing", "technical", "account", "shipping"]
WORDS = ["refund", "crash", "login", "parcel", "invoice", "password", "screen", "address"]
#: The seeded kill points of the kill -9 test (seconds after the daemon started working).
KILL_SEED = 20261202
KILLS = 11  # ten at seeded points, and one attempted in the after-job work (which may end first)
KILL_MC_ITEMS = 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_setup(
    root: Path, tiny: TinyModels, *, mc_items: int = 120, gen_items: int = 24, **daemon: str
) -> Path:
    """Two models x two eval sets (generation and multiple choice): a fire of four runs."""
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
        'max_new_tokens: 6\nstop: ["\\n"]\n'
    )
    (gen / "data.jsonl").write_text(
        "".join(
            json.dumps({"id": f"g{k}", "input": f"{WORDS[k % 8]} {k}", "target": WORDS[(k + 1) % 8]}) + "\n"
            for k in range(gen_items)
        )
    )
    settings = {"port": "0", "chunk_size": "4", "lease_ttl": "60s", **daemon}
    lines = "\n".join(f"  {key}: {value}" for key, value in settings.items())
    config = root / "monitor.yaml"
    config.write_text(
        f"""\
database: sqlite:///{root / "db" / "monitor.db"}
models:
  router: {{base: {tiny.gpt2}, adapter: {tiny.lora}}}
  base: {{base: {tiny.gpt2}}}
evalsets:
  mc: evals/mc
  gen: evals/gen
jobs:
  nightly:
    models: [router, base]
    evalsets: [gen, mc]
    schedule: {{every: 1h, run_at_start: true}}
daemon:
{lines}
"""
    )
    return config


def db_path(config: Path) -> Path:
    return config.parent / "db" / "monitor.db"


class Daemon:
    """One ``monitor daemon`` process and its log."""

    def __init__(self, config: Path, name: str, port: int | None = None) -> None:
        self.config, self.log = config, config.parent / f"{name}.log"
        self.port = port
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
        args = [sys.executable, "-m", "monitor", "daemon", "--config", str(config)]
        if port is not None:
            args += ["--port", str(port)]
        self.proc = subprocess.Popen(
            args, stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env=env, cwd=config.parent
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            if self.proc.poll() is not None:
                pytest.fail(
                    f"daemon exited ({self.proc.returncode}) while waiting for {what}:\n{self.text()[-3000:]}"
                )
            time.sleep(0.05)
        pytest.fail(f"timed out waiting for {what}:\n{self.text()[-3000:]}")

    def started(self) -> bool:
        return "monitor daemon: metrics at" in self.text()

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.wait_for(self.started, "the start")  # a signal before the handlers would kill it
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"daemon did not stop on SIGTERM:\n{self.text()[-3000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def ready(self) -> int | None:
        """The status code of /readyz (None: not answering)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return None

    def metric(self, name: str) -> float | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as response:
                body = response.read().decode()
        except OSError:
            return None
        for line in body.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None


@contextmanager
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    try:
        yield started
    finally:
        for d in started:
            if d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait(10)


def fire_done(db: Path) -> bool:
    return query(db, "select count(*) from fires where status = 'done'") == [(1,)]


def check_invariants(db: Path, *, fires: int = 1) -> dict[str, int]:
    """The guarantees, checked by SQL on the store; returns the counts checked."""
    assert query(db, "select count(*) from runs where status in ('running', 'interrupted')") == [(0,)]
    assert query(db, "select count(*), sum(status = 'done') from fires") == [(fires, fires)]
    for fire_id, planned, after_job_at in query(db, "select id, planned, after_job_at from fires"):
        keys = json.loads(planned)
        runs = query(
            db,
            "select m.name || '/' || r.evalset_name || '/' || r.strategy, r.status from runs r "
            f"join models m on m.id = r.model_id where r.fire_id = {fire_id}",
        )
        # exactly one finished run per planned run: none missing, none made twice
        assert sorted(key for key, _ in runs) == sorted(keys), (runs, keys)
        assert all(status == "succeeded" for _, status in runs), runs
        assert after_job_at is not None  # the after-job work ran for the fire
    for run_id, total, done in query(db, "select id, items_total, items_done from runs"):
        stored, distinct = query(
            db, f"select count(*), count(distinct item_id) from item_results where run_id = {run_id}"
        )[0]
        assert stored == distinct == total == done, (run_id, stored, distinct, total, done)
    # one recommendation-and-drift pass per fire: the after-job work is not redone for a finished fire
    return {
        "runs": query(db, "select count(*) from runs")[0][0],
        "items": query(db, "select count(*) from item_results")[0][0],
    }


def predictions(db: Path) -> dict[tuple[str, str, str], str | None]:
    rows = query(
        db,
        "select m.name, r.evalset_name, i.item_id, i.prediction from item_results i "
        "join runs r on r.id = i.run_id join models m on m.id = r.model_id",
    )
    return {(model, evalset, item): prediction for model, evalset, item, prediction in rows}


@pytest.fixture(scope="module")
def reference(
    tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, str, str], str | None]:
    """What an uninterrupted daemon stores for the fire: the faulted runs must store the same."""
    root = tmp_path_factory.mktemp("reference")
    config = write_setup(root, tiny_models, mc_items=KILL_MC_ITEMS)
    with daemons() as started:
        d = Daemon(config, "reference")
        started.append(d)
        d.wait_for(lambda: fire_done(db_path(config)), "the fire")
        assert d.stop() == 0
    check_invariants(db_path(config))
    return predictions(db_path(config))


def stored_items(db: Path) -> int:
    return int(query(db, "select count(*) from item_results")[0][0]) if db.exists() else 0


def test_kill_9_at_seeded_points_of_a_multi_run_fire_loses_and_repeats_nothing(
    tiny_models: TinyModels, tmp_path: Path, reference: dict[tuple[str, str, str], str | None]
) -> None:
    config = write_setup(tmp_path, tiny_models, mc_items=KILL_MC_ITEMS)
    db = db_path(config)
    total = 2 * (KILL_MC_ITEMS + 24)
    rng = random.Random(KILL_SEED)
    # Seeded kill points: three during start-up or a model load (a time after the start), the rest
    # when the fire has stored a seeded number of items (in every run of the fire, between chunks
    # or inside one), and a last one once every run is finished, in the after-job work.
    at_start = set(rng.sample(range(KILLS - 1), 3))
    bins = KILLS - 1 - len(at_start)  # one seeded point in each slice of the fire's items
    span = int(total * 0.85)  # short of the end: a kill needs a moment to land after its point is seen
    thresholds = iter(rng.randrange(span * b // bins + 1, span * (b + 1) // bins) for b in range(bins))
    killed_at: list[str] = []
    with daemons() as started:
        for k in range(KILLS):
            d = Daemon(config, f"daemon-{k}")
            started.append(d)
            d.wait_for(d.started, "the start")
            if k == KILLS - 1:
                point = "after-job"
                d.wait_for(
                    lambda: (
                        query(db, "select count(*) from runs where status = 'succeeded'") == [(4,)]
                        or fire_done(db)
                    ),
                    "the last run",
                )
            elif k in at_start:
                point = "start-up"
                time.sleep(rng.uniform(0.0, 1.0))
            else:
                target = next(thresholds)
                point = f"{target} items"
                d.wait_for(lambda target=target: stored_items(db) >= target or fire_done(db), point)
                time.sleep(rng.uniform(0.0, 0.05))
            if fire_done(db):
                assert d.stop() == 0
                break
            d.kill()
            runs = "; ".join(
                f"{s}:{n}" for s, n in query(db, "select status, items_done from runs order by id")
            )
            killed_at.append(f"{point}: {stored_items(db)} stored [{runs}]")
        last = Daemon(config, "daemon-last")
        started.append(last)
        last.wait_for(lambda: fire_done(db), "the fire to complete")
        assert last.stop() == 0
    assert len(killed_at) >= KILLS - 1, f"the fire finished before the kills: {killed_at}"
    counts = check_invariants(db)
    print(f"\nkill -9 x{len(killed_at)} (seed {KILL_SEED}), at:\n  " + "\n  ".join(killed_at))
    assert counts["runs"] == 4 and counts["items"] == total
    assert predictions(db) == reference  # resumed runs store what an uninterrupted one does
    text = "".join(d.text() for d in started)
    assert "resuming run" in text and "Traceback" not in text
    (worked,) = query(db, "select sum(duration_s) from runs")[0]
    assert worked is not None and worked > 0


def pause_between_writes(daemon: Daemon, db: Path) -> None:
    """SIGSTOP the daemon outside a write transaction (a SQLite writer frozen inside one blocks every
    other writer until it wakes or dies: see docs/reliability.md); retried until it lands between."""
    for _ in range(50):
        os.kill(daemon.proc.pid, signal.SIGSTOP)
        time.sleep(0.05)
        probe = sqlite3.connect(db, timeout=0)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.rollback()
            return
        except sqlite3.OperationalError:  # paused inside a write: let it finish, try again
            os.kill(daemon.proc.pid, signal.SIGCONT)
            time.sleep(0.02)
        finally:
            probe.close()
    pytest.fail("could not pause the daemon between two writes")


def test_a_holder_paused_past_its_lease_is_fenced_when_it_wakes(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    config = write_setup(tmp_path, tiny_models, mc_items=400, lease_ttl="2s")
    db = db_path(config)
    with daemons() as started:
        first = Daemon(config, "first")
        started.append(first)
        # the 400-item run, not the 24-item generation run before it (done by the time of the pause
        # on a quiet machine, which left the second daemon nothing to resume)
        running = "select id from runs where status = 'running' and evalset_name = 'mc' and items_done >= 8"
        first.wait_for(lambda: bool(query(db, running)), "a run")
        pause_between_writes(first, db)
        try:
            assert query(db, running), "paused after the run: nothing left to take over"
            time.sleep(3.0)  # past the 2 s lease
            second = Daemon(config, "second")
            started.append(second)
            second.wait_for(second.started, "the take-over")
            second.wait_for(lambda: "resuming run" in second.text(), "the resumption")
        finally:
            os.kill(first.proc.pid, signal.SIGCONT)
        # the woken holder finds the new epoch at its next write: it stops, writing nothing
        code = first.proc.wait(60)
        assert code == 5, first.text()[-3000:]
        assert "lost its lease" in first.text() or "took this daemon's lease over" in first.text()
        assert query(db, "select count(*) from runs where status = 'failed'") == [(0,)]
        second.wait_for(lambda: fire_done(db), "the fire to complete", timeout=300)
        assert second.stop() == 0
    check_invariants(db)
    assert query(db, "select epoch from daemon_lease") == [(2,)]
    assert "Traceback" not in first.text() + second.text()


def fill(filler: Path) -> None:
    """Fill the filesystem that holds ``filler`` to the last byte."""
    try:
        with filler.open("wb") as f:
            for size in (1 << 16, 1 << 12, 1 << 9, 1):
                try:
                    while True:
                        f.write(b"\0" * size)
                        f.flush()
                except OSError:
                    continue
    except OSError:
        pass


def _set_writable(db: Path, writable: bool) -> None:
    files = [db, db.with_name(db.name + "-wal")]
    if os.geteuid() == 0:
        # root ignores file modes; the immutable flag refuses writes to root too (not on -shm: it is mapped)
        for f in files:
            subprocess.run(["chattr", "-i" if writable else "+i", str(f)], check=True)
    else:
        for f in files:
            f.chmod(0o644 if writable else 0o444)


def test_unwritable_database_files_mid_run_make_readiness_false_and_the_run_resumes(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    if os.geteuid() == 0 and shutil.which("chattr") is None:
        pytest.skip("as root, making files unwritable needs chattr (e2fsprogs)")
    config = write_setup(tmp_path, tiny_models, mc_items=400)
    db = db_path(config)
    port = free_port()
    with daemons() as started:
        d = Daemon(config, "daemon", port=port)
        started.append(d)
        d.wait_for(lambda: bool(query(db, "select 1 from runs where items_done >= 8")), "a run")
        assert d.ready() == 200
        _set_writable(db, False)
        try:
            d.wait_for(lambda: d.ready() == 503, "readiness to turn false", timeout=60)
            assert d.metric("monitor_store_up") == 0
            held = query(db, "select count(*) from item_results")
            time.sleep(1.0)
            assert query(db, "select count(*) from item_results") == held  # nothing is written meanwhile
        finally:
            _set_writable(db, True)
        d.wait_for(lambda: d.ready() == 200, "readiness after the fault", timeout=60)
        d.wait_for(lambda: fire_done(db), "the fire to complete", timeout=300)
        assert d.metric("monitor_store_up") == 1
        assert d.stop() == 0
    check_invariants(db)
    text = d.text()
    assert "the database refused a write" in text and "Traceback" not in text
    errors = query(db, "select count(*) from runs where status = 'failed'")
    assert errors == [(0,)]


def test_a_full_filesystem_leaves_the_run_resumable_and_it_resumes_when_space_returns(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    if os.geteuid() != 0 or sys.platform != "linux":
        pytest.skip("a full filesystem is simulated with a small tmpfs, which needs root (CI runs as root)")
    config = write_setup(tmp_path, tiny_models, mc_items=400)
    mount = db_path(config).parent
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    db, filler = db_path(config), mount / "filler"
    port = free_port()
    try:
        with daemons() as started:
            d = Daemon(config, "daemon", port=port)
            started.append(d)
            d.wait_for(lambda: bool(query(db, "select 1 from runs where items_done >= 8")), "a run")
            fill(filler)
            d.wait_for(lambda: d.ready() == 503, "readiness to turn false", timeout=60)
            time.sleep(1.0)
            filler.unlink()
            d.wait_for(lambda: fire_done(db), "the fire to complete", timeout=300)
            assert d.ready() == 200
            assert d.stop() == 0
        check_invariants(db)
        text = d.text()
        assert "the database refused a write" in text and "Traceback" not in text
        assert query(db, "select count(*) from runs where error like '%storage fault%'") == [(0,)]
        assert query(db, "select count(*) from runs where status = 'failed'") == [(0,)]
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_second_daemon_on_the_same_config_is_refused_naming_the_holder(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    # A fixed port: the second daemon must be refused on the lease (exit 5), before it tries the port.
    port = free_port()
    config = write_setup(tmp_path, tiny_models, mc_items=3000, port=str(port))
    db = db_path(config)
    with daemons() as started:
        first = Daemon(config, "first")
        started.append(first)
        first.wait_for(lambda: bool(query(db, "select 1 from runs where items_done >= 4")), "a run")
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        second = subprocess.run(
            [sys.executable, "-m", "monitor", "daemon", "--config", str(config)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )
        assert second.returncode == 5, second.stderr
        (line,) = [x for x in second.stderr.splitlines() if x.startswith("error:")]
        assert "another monitor daemon is running against this database" in line
        assert f":{first.proc.pid}:" in line  # names the holder
        assert "Address already in use" not in second.stderr and "Traceback" not in second.stderr
        assert first.proc.poll() is None and not fire_done(db)
        assert first.stop() == 0
    # a clean stop leaves no run running, and the fire open for the next start (the kill -9 test completes one)
    assert query(db, "select count(*) from runs where status = 'running'") == [(0,)]
    assert query(db, "select status from fires") == [("open",)]
    assert query(db, "select count(*) from daemon_lease where holder != ''") == [(0,)]


@pytest.mark.parametrize("fault", ["read-only", "full"])
def test_start_up_on_a_database_that_cannot_be_written_is_one_line_and_exit_4(
    tiny_models: TinyModels, tmp_path: Path, fault: str
) -> None:
    config = write_setup(tmp_path, tiny_models)
    db = db_path(config)
    db.parent.mkdir()
    from monitor.store import Store

    Store.open(f"sqlite:///{db}").close()  # a migrated database, then the fault
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cleanup: Callable[[], None] = lambda: None  # noqa: E731
    if fault == "read-only":
        if os.geteuid() == 0 and shutil.which("chattr") is None:
            pytest.skip("as root, making files unwritable needs chattr")
        for f in [db, db.with_name(db.name + "-wal")]:
            f.touch()
        _set_writable(db, False)
        cleanup = lambda: _set_writable(db, True)  # noqa: E731
    else:
        if os.geteuid() != 0:
            pytest.skip("a full filesystem is simulated with a small tmpfs, which needs root")
        moved = tmp_path / "mnt"
        moved.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(moved)]).returncode != 0:
            pytest.skip("cannot mount a tmpfs here")
        cleanup = lambda: subprocess.run(["umount", "-l", str(moved)], check=False)  # noqa: E731
        shutil.copy(db, moved / "monitor.db")
        config.write_text(config.read_text().replace(str(db), str(moved / "monitor.db")))
        fill(moved / "filler")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "monitor", "daemon", "--config", str(config)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )
    finally:
        cleanup()
    assert result.returncode == 4, result.stderr
    errors = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "database" in errors[0]
