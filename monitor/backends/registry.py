"""The backend registry: a backend name in the configuration -> the loader of that backend.

Heavy libraries (torch, transformers, peft) are imported only when a backend
of that kind is first loaded.
"""

from __future__ import annotations

from collections.abc import Callable

from monitor.backends.base import Backend, ModelSpec


def _load_hf(spec: ModelSpec) -> Backend:
    from monitor.backends.hf.backend import HFBackend

    return HFBackend.load(
        spec.base,
        spec.adapter,
        device=spec.device,
        dtype=spec.dtype,
        batch_tokens=spec.batch_tokens,
        revision=spec.revision,
        chat_template=spec.chat_template,
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
