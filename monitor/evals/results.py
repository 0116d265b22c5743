"""Per-item results as the runner hands them to the store (plain data: no SQLAlchemy here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ItemResult:
    """One item's outcome, as the runner hands it to the store."""

    item_id: str
    prediction: str | None
    target: Any
    correct: bool | None = None
    score: float | None = None
    scores: dict[str, float] | None = None
    loglikelihoods: list[float] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
