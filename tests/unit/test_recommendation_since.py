"""How long a recommendation has stood: the time its action was first recommended, not the last assessment."""

from __future__ import annotations

import time
from datetime import timezone
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitor.exporters import StoreCollector
from monitor.store import Store
from tests.unit.test_store import add_model


def gauge(store: Store, name: str) -> float:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise KeyError(name)


def test_a_repeated_recommendation_keeps_the_time_it_began(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'r.db'}") as store:
        model_id = add_model(store, "router").id
        assert model_id is not None

        def recommend(action: str) -> float:
            record = store.add_recommendation(
                model_id, action=action, summary=action, reasons=[], evidence={}
            )
            time.sleep(0.02)
            return record.created_at.replace(tzinfo=timezone.utc).timestamp()

        first_keep = recommend("keep")
        recommend("keep")
        assert gauge(store, "monitor_recommendation_since_timestamp_seconds") == pytest.approx(
            first_keep, abs=1e-3
        )
        rebase = recommend("rebase")
        again = recommend("rebase")
        last = recommend("rebase")
        assert gauge(store, "monitor_recommendation_since_timestamp_seconds") == pytest.approx(
            rebase, abs=1e-3
        )
        assert gauge(store, "monitor_recommendation_timestamp_seconds") == pytest.approx(last, abs=1e-3)
        assert again < last
