"""Loaded models kept between runs, least recently used closed first; safe to share between threads.

Several runs may be in flight at once (:mod:`monitor.service.fires`).  The pool
loads a spec once however many runs ask for it at the same moment (the others
wait for that load), and never closes a model a run is using: a run pins its
spec (:meth:`ModelPool.pinned`) for as long as it evaluates, and eviction skips
pinned models (past ``max_models`` while all are pinned, the pool holds more
until they are unpinned).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from types import TracebackType

from monitor.backends import Backend, ModelSpec, load_backend


class ModelPool:
    """Loaded models kept between runs; past ``max_models`` the least recently used unpinned one is closed.

    A context manager: ``with ModelPool() as pool:`` closes every loaded model on the way out.
    """

    def __init__(self, loader: Callable[[ModelSpec], Backend] = load_backend, max_models: int = 1) -> None:
        self._loader = loader
        self._max = max(1, max_models)
        self._loaded: OrderedDict[ModelSpec, Backend] = OrderedDict()
        self._lock = threading.Lock()
        #: One lock per spec being loaded, so a spec is loaded once while other specs load alongside.
        self._loading: dict[ModelSpec, threading.Lock] = {}
        self._pins: Counter[ModelSpec] = Counter()

    def get(self, spec: ModelSpec) -> tuple[Backend, float]:
        """The backend for ``spec`` and how long loading it took (0.0 when it was already loaded)."""
        with self._lock:
            if spec in self._loaded:
                self._loaded.move_to_end(spec)
                return self._loaded[spec], 0.0
            loading = self._loading.setdefault(spec, threading.Lock())
        with loading:
            with self._lock:
                if spec in self._loaded:  # another thread loaded it while this one waited
                    self._loaded.move_to_end(spec)
                    return self._loaded[spec], 0.0
                # Make room first, so that a large model is not loaded beside the one it replaces.
                evicted = self._evictable(room=1)
            for other in evicted:
                other.close()
            started = time.perf_counter()
            try:
                backend = self._loader(spec)
            finally:
                with self._lock:
                    self._loading.pop(spec, None)
            elapsed = time.perf_counter() - started
            with self._lock:
                self._loaded[spec] = backend
                evicted = self._evictable(keep=spec)  # never the model handed out now
            for other in evicted:
                other.close()
            return backend, elapsed

    @contextlib.contextmanager
    def pinned(self, spec: ModelSpec) -> Iterator[None]:
        """Keep ``spec``'s model (once loaded) from being closed until the block ends."""
        with self._lock:
            self._pins[spec] += 1
        try:
            yield
        finally:
            with self._lock:
                self._pins[spec] -= 1
                if self._pins[spec] <= 0:
                    del self._pins[spec]
                evicted = self._evictable()
            for other in evicted:
                other.close()

    def _evictable(self, room: int = 0, keep: ModelSpec | None = None) -> list[Backend]:
        """Take the least recently used unpinned models (but ``keep``) out past ``max_models - room``
        (under the lock)."""
        out = []
        for spec in list(self._loaded):
            if len(self._loaded) <= self._max - room:
                break
            if spec != keep and self._pins.get(spec, 0) == 0:
                out.append(self._loaded.pop(spec))
        return out

    def close(self) -> None:
        """Close every loaded model."""
        while True:
            with self._lock:
                if not self._loaded:
                    return
                _, backend = self._loaded.popitem()
            backend.close()

    def __enter__(self) -> ModelPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._loaded)
