"""Loaded models kept between runs, least recently used closed first."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from types import TracebackType

from monitor.backends import Backend, ModelSpec, load_backend


class ModelPool:
    """Loaded models kept between runs; past ``max_models`` the least recently used is closed.

    A context manager: ``with ModelPool() as pool:`` closes every loaded model on the way out.
    """

    def __init__(self, loader: Callable[[ModelSpec], Backend] = load_backend, max_models: int = 1) -> None:
        self._loader = loader
        self._max = max(1, max_models)
        self._loaded: OrderedDict[ModelSpec, Backend] = OrderedDict()

    def get(self, spec: ModelSpec) -> tuple[Backend, float]:
        """The backend for ``spec`` and how long loading it took (0.0 when it was already loaded)."""
        if spec in self._loaded:
            self._loaded.move_to_end(spec)
            return self._loaded[spec], 0.0
        while len(self._loaded) >= self._max:
            _, evicted = self._loaded.popitem(last=False)
            evicted.close()
        started = time.perf_counter()
        backend = self._loader(spec)
        self._loaded[spec] = backend
        return backend, time.perf_counter() - started

    def close(self) -> None:
        """Close every loaded model."""
        while self._loaded:
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
