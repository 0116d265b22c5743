"""Backends serve models to the runner; they are registered by name for the configuration.

Heavy libraries (torch, transformers, peft) are imported only when a backend
of that kind is first loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .base import (
    Backend,
    GenerationRequest,
    GenerationResult,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    ModelFingerprint,
    ProgressCallback,
)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to load one model: where its weights are and how to run it."""

    backend: str
    base: str
    adapter: str | None = None
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    batch_tokens: int | None = None


def _load_hf(spec: ModelSpec) -> Backend:
    from .hf import HFBackend

    return HFBackend.load(
        spec.base,
        spec.adapter,
        device=spec.device,
        dtype=spec.dtype,
        batch_tokens=spec.batch_tokens,
        revision=spec.revision,
    )


#: Backend name -> loader.  Later backends (``openai``) register here.
BACKENDS: dict[str, Callable[[ModelSpec], Backend]] = {"hf": _load_hf}


def load_backend(spec: ModelSpec) -> Backend:
    """Load the model described by ``spec`` with its backend."""
    try:
        loader = BACKENDS[spec.backend]
    except KeyError:
        raise ValueError(f"unknown backend {spec.backend!r}; known: {sorted(BACKENDS)}") from None
    return loader(spec)


__all__ = [
    "BACKENDS",
    "Backend",
    "GenerationRequest",
    "GenerationResult",
    "LoglikelihoodRequest",
    "LoglikelihoodResult",
    "ModelFingerprint",
    "ModelSpec",
    "ProgressCallback",
    "load_backend",
]
