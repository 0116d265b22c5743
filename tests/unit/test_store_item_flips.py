"""``Store.item_flips`` (the flaky items behind ``monitor status``, counted in the database) agrees
with :func:`monitor.analysis.behaviour.flaky_items` on the same runs, on SQLite and PostgreSQL."""

from __future__ import annotations

import random

from monitor.analysis.behaviour import flaky_items
from monitor.store import Store
from tests.helpers.pg import (  # noqa: F401  (fixtures)
    postgres_server,
    postgres_url,
    sqlite_or_postgres_store,
)
from tests.unit.test_store import result, start


def test_item_flips_counts_what_flaky_items_counts(store: Store) -> None:
    rng = random.Random(7)
    runs: list[tuple[int, int]] = []
    history: list[dict[str, bool | None]] = []
    for k in range(10):
        run = start(store, job="nightly")
        assert run.id is not None
        outcomes: dict[str, bool | None] = {}
        batch = []
        for i in range(40):
            if rng.random() < 0.1:
                continue  # not answered in this run
            if rng.random() < 0.1:
                batch.append(result(f"q{i:02d}", error="timeout"))  # unscored: skipped, not a flip
                outcomes[f"q{i:02d}"] = None
                continue
            correct = rng.random() < (0.9 if i < 20 else 0.5)
            batch.append(result(f"q{i:02d}", correct=correct))
            outcomes[f"q{i:02d}"] = correct
        store.add_item_results(run.id, batch)
        store.finish_run(run.id, status="succeeded")
        identity = 0 if k < 4 or k >= 7 else 1  # another deploy in the middle, then back
        runs.append((run.id, identity))
        history.append(outcomes)
    keys = [identity for _, identity in runs]
    for min_flips in (1, 2, 3):
        expected = flaky_items(history, min_flips, keys=keys)
        assert expected  # the case is not empty
        assert store.item_flips(runs, min_flips) == expected
    # the order given is the order counted, whatever the ids; one identity for all
    assert store.item_flips([(run_id, 0) for run_id, _ in runs[::-1]]) == flaky_items(history[::-1])
    assert store.item_flips(runs[:1]) == {}
    assert store.item_flips([]) == {}
