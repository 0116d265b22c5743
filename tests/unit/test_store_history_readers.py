"""The store's readers of a model's whole history of findings (the HTML report reads them through the store)."""

from __future__ import annotations

from pathlib import Path

from monitor.store import Store
from monitor.store.tables import DriftRecord, utcnow
from tests.unit.test_store import add_model


def finding(model_id: int, kind: str, source: str, score: float) -> DriftRecord:
    return DriftRecord(
        model_id=model_id,
        kind=kind,
        source=source,
        score=score,
        drifted=False,
        state="ok",
        created_at=utcnow(),
    )


def test_findings_of_a_model_oldest_first_and_by_kind(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'h.db'}") as store:
        mine, other = add_model(store, "router").id, add_model(store, "other").id
        assert mine is not None and other is not None
        store.add_findings(
            [
                finding(mine, "input", "log", 0.1),
                finding(other, "input", "log", 0.9),
                finding(mine, "canary", "stack", 0.0),
                finding(mine, "input", "log", 0.3),
            ]
        )
        assert [f.score for f in store.findings(mine, "input")] == [0.1, 0.3]
        assert [f.kind for f in store.findings(mine)] == ["input", "canary", "input"]
        assert store.verdicts(mine) == []
