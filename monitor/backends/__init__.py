"""Backends serve models to the evaluation loop; they are registered by name for the configuration.

============  =====================================================================
base          the :class:`Backend` protocol, requests and results, :class:`ModelSpec`
registry      backend name -> loader (:func:`load_backend`)
hf/           in-process transformers + peft (the only door to those libraries)
openai        OpenAI-compatible servers over httpx (vLLM, TGI, hosted APIs)
fingerprint   what the weights, tokenizer and adapter are (sha256 of their files)
============  =====================================================================

Heavy libraries (torch, transformers, peft) are imported only when a backend
of that kind is first loaded.
"""

from __future__ import annotations

from monitor.backends.base import (
    Backend,
    EndpointSpec,
    GenerationRequest,
    GenerationResult,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    ModelFingerprint,
    ModelSpec,
    ProgressCallback,
)
from monitor.backends.registry import BACKENDS, load_backend

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
