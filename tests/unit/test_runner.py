"""The runner's chunking: a backend that allows overlapping calls gets the next chunk early."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from monitor.backends.base import LoglikelihoodResult
from monitor.evals.evalset import load_evalset
from monitor.evals.loop import evaluate


class Remote:
    """Holds the first call until the second has started: only overlapping chunks finish."""

    overlapping_calls = 2

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()
        self.second_started = threading.Event()

    def loglikelihood(self, requests: Any, *, progress: Any = None) -> list[LoglikelihoodResult]:
        with self.lock:
            self.calls += 1
            first = self.calls == 1
        if first:
            assert self.second_started.wait(10), "the next chunk was not handed over"
        else:
            self.second_started.set()
        return [LoglikelihoodResult((0.0, -1.0), (True, False), 3, (1, 1)) for _ in requests]


def test_chunks_overlap_for_a_remote_backend_and_are_committed_in_order(tmp_path: Path) -> None:
    (tmp_path / "evalset.yaml").write_text(
        'name: t\ntask: multiple_choice\nprompt: "{input}"\nchoices: [a, b]\n'
    )
    (tmp_path / "data.jsonl").write_text(
        "".join(json.dumps({"id": f"i{k}", "input": "x", "target": "a"}) + "\n" for k in range(5))
    )
    es = load_evalset(tmp_path)
    seen: list[list[str]] = []
    backend = Remote()
    outcome = evaluate(backend, es, chunk_size=2, sink=lambda rs: seen.append([r.item_id for r in rs]))  # type: ignore[arg-type]
    assert seen == [["i0", "i1"], ["i2", "i3"], ["i4"]]
    assert [r.correct for r in outcome.results] == [True] * 5 and backend.calls == 3

    # A stop between chunks: the chunks already handed over are committed, no new one starts.
    stops = iter([False, False, True])
    seen.clear()
    evaluate(
        Remote(),
        es,
        chunk_size=2,
        sink=lambda rs: seen.append([r.item_id for r in rs]),
        should_stop=lambda: next(stops, True),
    )  # type: ignore[arg-type]
    assert seen == [["i0", "i1"], ["i2", "i3"]]
