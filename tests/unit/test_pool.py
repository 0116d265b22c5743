"""The model pool shared by runs in flight (one load per spec however many ask, pinned models never
closed) and the run slots (at most ``max_concurrent_runs`` runs, in-process runs one per device)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from monitor.backends import EndpointSpec, ModelSpec
from monitor.service.fires import RunSlots, run_lanes
from monitor.service.pool import ModelPool

LOAD_S = 0.2


class Loaded:
    """What the loader hands out: a backend that knows whether it was closed."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.closed = False

    def close(self) -> None:
        self.closed = True


class SlowLoader:
    """Loads take ``LOAD_S``; counts loads per spec and the most loads at once."""

    def __init__(self) -> None:
        self.loads: Counter[ModelSpec] = Counter()
        self.at_once = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def __call__(self, spec: ModelSpec) -> Any:
        with self._lock:
            self.loads[spec] += 1
            self.at_once += 1
            self.most_at_once = max(self.most_at_once, self.at_once)
        time.sleep(LOAD_S)
        with self._lock:
            self.at_once -= 1
        return Loaded(spec)


def served(name: str) -> ModelSpec:
    return ModelSpec("openai", name, endpoint=EndpointSpec("http://127.0.0.1:9/v1"))


def in_process(name: str, device: str = "cpu") -> ModelSpec:
    return ModelSpec("hf", name, device=device)


def together(n: int, work: Callable[[int], Any]) -> list[Any]:
    out: list[Any] = [None] * n

    def one(i: int) -> None:
        out[i] = work(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return out


def test_a_spec_is_loaded_once_however_many_runs_ask_at_once() -> None:
    loader = SlowLoader()
    pool = ModelPool(loader=loader, max_models=4)  # type: ignore[arg-type]
    spec = served("adapter-1")
    got = together(8, lambda _: pool.get(spec))
    assert loader.loads[spec] == 1
    assert len({id(backend) for backend, _ in got}) == 1
    assert sorted(load_s > 0 for _, load_s in got) == [False] * 7 + [True]  # one load timed, seven reuses


def test_different_specs_load_side_by_side() -> None:
    loader = SlowLoader()
    pool = ModelPool(loader=loader, max_models=4)  # type: ignore[arg-type]
    started = time.perf_counter()
    together(4, lambda i: pool.get(served(f"adapter-{i}")))
    assert loader.most_at_once == 4
    assert time.perf_counter() - started < 3 * LOAD_S


def test_pinned_models_are_never_closed_and_the_pool_shrinks_back_once_unpinned() -> None:
    pool = ModelPool(loader=Loaded, max_models=1)  # type: ignore[arg-type]
    a, b, c = served("a"), served("b"), served("c")
    with pool.pinned(a):
        first, _ = pool.get(a)
        with pool.pinned(b):
            second, _ = pool.get(b)  # past max_models: a is pinned, so the pool holds both
            assert not first.closed and not second.closed  # type: ignore[attr-defined]
        # b unpinned: the least recently used unpinned model goes; a stays while pinned
        assert not first.closed  # type: ignore[attr-defined]
        assert second.closed  # type: ignore[attr-defined]
        third, _ = pool.get(c)  # unpinned: room is made by closing what is not pinned, never a
        assert not first.closed  # type: ignore[attr-defined]
    assert first.closed  # type: ignore[attr-defined]  # a unpinned, past max_models: closed
    assert not third.closed  # type: ignore[attr-defined]
    pool.close()
    assert third.closed  # type: ignore[attr-defined]


def test_many_runs_pinning_and_getting_at_once_never_use_a_closed_model() -> None:
    pool = ModelPool(loader=Loaded, max_models=2)  # type: ignore[arg-type]
    used_closed: list[str] = []

    def run(i: int) -> None:
        spec = served(f"adapter-{i % 6}")
        for _ in range(20):
            with pool.pinned(spec):
                backend, _ = pool.get(spec)
                time.sleep(0.001)
                if backend.closed:  # type: ignore[attr-defined]
                    used_closed.append(spec.base)

    together(12, run)
    assert used_closed == []
    pool.close()


def test_run_slots_hold_at_most_max_runs_in_flight() -> None:
    slots = RunSlots(3)
    together(10, lambda i: slots.run(served(f"adapter-{i}"), lambda: time.sleep(0.05)))
    assert slots.max_in_flight == 3
    assert slots.in_flight == 0


def test_in_process_runs_are_serialised_per_device_and_devices_go_side_by_side() -> None:
    slots = RunSlots(8)
    busy: Counter[str] = Counter()
    most: Counter[str] = Counter()
    lock = threading.Lock()

    def work(device: str) -> None:
        with lock:
            busy[device] += 1
            most[device] = max(most[device], busy[device])
        time.sleep(0.05)
        with lock:
            busy[device] -= 1

    devices = ["cpu", "cuda:0", "cpu", "cuda:0", "cpu", "cuda:0"]
    together(6, lambda i: slots.run(in_process(f"m{i}", devices[i]), lambda: work(devices[i])))
    assert most == Counter({"cpu": 1, "cuda:0": 1})
    assert slots.max_in_flight == 2  # one a device
    # served runs never wait on a device
    assert slots.device_lock(served("x")) is None


def test_a_waiting_in_process_run_takes_no_slot_from_a_served_one() -> None:
    slots = RunSlots(2)
    order: list[str] = []
    gate = threading.Event()

    def first_hf() -> None:
        order.append("hf-1")
        gate.wait(5)

    hf_runner = threading.Thread(target=slots.run, args=(in_process("a"), first_hf))
    hf_runner.start()
    time.sleep(0.05)
    waiting = threading.Thread(target=slots.run, args=(in_process("b"), lambda: order.append("hf-2")))
    waiting.start()
    time.sleep(0.05)
    slots.run(served("s"), lambda: order.append("served"))  # the second slot is free
    gate.set()
    hf_runner.join(5)
    waiting.join(5)
    assert order == ["hf-1", "served", "hf-2"]


def test_a_fires_runs_go_in_lanes_served_alone_in_process_one_per_device() -> None:
    from monitor.service.plan import RunPlan

    def plan(spec: ModelSpec, name: str) -> RunPlan:
        return RunPlan(model_name=name, spec=spec, evalset=None, fewshot_k=0)  # type: ignore[arg-type]

    plans = [
        plan(in_process("m1"), "h1"),
        plan(served("s1"), "s1"),
        plan(in_process("m2"), "h2"),
        plan(served("s2"), "s2"),
        plan(in_process("m3", "cuda:0"), "h3"),
    ]
    lanes = run_lanes([(p, None) for p in plans])
    # in-process runs of one device in the plan's order, one after the other; each served run alone
    assert [[p.model_name for p, _ in lane] for lane in lanes] == [["h1", "h2"], ["s1"], ["s2"], ["h3"]]
