"""Backends serve models to the runner; they are registered by name for the configuration.

Heavy libraries (torch, transformers, peft) are imported only when a backend
of that kind is first loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from monitor.backends.base import Backend, GenerationRequest, GenerationResult, LoglikelihoodRequest, LoglikelihoodResult, ModelFingerprint, ProgressCallback


@dataclass(frozen=True)
class EndpointSpec:
    """How to reach a model behind an OpenAI-compatible server (the ``openai`` backend).

    Holds the *name* of the API key's environment variable, never the key.
    """

    base_url: str
    api_key_env: str | None = None
    api: str = "completions"
    headers: tuple[tuple[str, str], ...] = ()
    timeout_s: float = 60.0
    max_concurrency: int = 8
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_retries: int = 5
    mc_method: str = "auto"


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to load one model: where its weights are and how to run it.

    For the ``openai`` backend ``base`` is the served model name and ``endpoint`` says where.
    """

    backend: str
    base: str
    adapter: str | None = None
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    batch_tokens: int | None = None
    endpoint: EndpointSpec | None = None


def _load_hf(spec: ModelSpec) -> Backend:
    from monitor.backends.hf import HFBackend

    return HFBackend.load(
        spec.base,
        spec.adapter,
        device=spec.device,
        dtype=spec.dtype,
        batch_tokens=spec.batch_tokens,
        revision=spec.revision,
    )


def _load_openai(spec: ModelSpec) -> Backend:
    from monitor.backends.openai import OpenAIBackend

    if spec.endpoint is None:
        raise ValueError("the openai backend needs an endpoint")
    return OpenAIBackend.load(spec.base, spec.endpoint)


#: Backend name -> loader.
BACKENDS: dict[str, Callable[[ModelSpec], Backend]] = {"hf": _load_hf, "openai": _load_openai}


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
    "EndpointSpec",
    "GenerationRequest",
    "GenerationResult",
    "LoglikelihoodRequest",
    "LoglikelihoodResult",
    "ModelFingerprint",
    "ModelSpec",
    "ProgressCallback",
    "load_backend",
]
