"""Two writers creating the same model or eval set version at once: the loser of the insert reads the winner's row."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event
from sqlmodel import Session

from monitor.store import Store
from monitor.store.tables import EvalSetVersionRecord, ModelRecord
from tests.unit.test_store import db_url, postgres_server, postgres_url, store  # noqa: F401  (fixtures)


@pytest.fixture
def other(db_url: str, store: Store) -> Iterator[Store]:  # noqa: F811
    opened = Store.open(db_url)
    yield opened
    opened.close()


@contextmanager
def another_writer_first(kind: type, make: Callable[[], Any]) -> Iterator[list[int]]:
    """Before the first flush that inserts a ``kind`` row, another writer inserts (and commits) it."""
    fired: list[int] = []

    def before_flush(session: Session, _ctx: Any, _instances: Any) -> None:
        if not fired and any(isinstance(o, kind) for o in session.new):
            fired.append(1)
            make()

    event.listen(Session, "before_flush", before_flush)
    try:
        yield fired
    finally:
        event.remove(Session, "before_flush", before_flush)


def test_a_model_made_meanwhile_by_another_writer_is_updated_not_refused(store: Store, other: Store) -> None:  # noqa: F811
    with another_writer_first(
        ModelRecord, lambda: other.upsert_model("router", kind="hf", base="/a", adapter=None)
    ) as fired:
        mine = store.upsert_model("router", kind="hf", base="/b", adapter=None, fingerprint="sha256:1")
    assert fired == [1]
    assert (mine.base, mine.fingerprint) == ("/b", "sha256:1")
    assert other.get_model("router").id == mine.id


def test_an_evalset_version_made_meanwhile_is_the_same_row(store: Store, other: Store) -> None:  # noqa: F811
    def make() -> Any:
        return other.ensure_evalset_version("routing", "v1", task="multiple_choice", path="/e", item_count=3)

    with another_writer_first(EvalSetVersionRecord, make) as fired:
        mine = store.ensure_evalset_version("routing", "v1", task="multiple_choice", path="/e", item_count=3)
    assert fired == [1]
    assert mine.id == make().id
