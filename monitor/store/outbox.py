"""The webhook outbox's rows: events, their deliveries, and the endpoints that answered 410 Gone.

Every read and write of ``webhook_events``, ``webhook_deliveries`` and
``webhook_endpoints`` is here; :mod:`monitor.exporters.webhooks` decides what to
write (the retry policy) and does the HTTP.  A delivery's status is one of
:data:`DELIVERY_STATUSES`: ``pending`` until it ends ``delivered``, ``dead`` (the
dead letter, kept with its last error) or ``disabled`` (its endpoint answered 410).

========================  ========================================================================
:func:`enqueue_event`     an event and its deliveries, in the *caller's* open transaction
:func:`due_deliveries`    pending deliveries whose next attempt is due, oldest first
:func:`close_deliveries`  end due deliveries without a request (expired, endpoint gone)
:func:`claim_delivery`    hide a delivery from other senders while its request is in flight
:func:`defer_delivery`    move a pending delivery's next attempt
:func:`record_attempt`    one attempt's outcome: delivered, dead, or pending again
:func:`record_gone`       an attempt answered 410: disable the endpoint and its pending deliveries
:func:`enable_endpoint`   send to a disabled endpoint again
:func:`list_endpoints`    every endpoint the store knows, with its state, counts and last error
:func:`count_by_status`   deliveries per status (the sender's backlog)
:func:`outbox_summary`    what the metrics export, read in one transaction
========================  ========================================================================

Each function taking a :class:`~monitor.store.db.Store` runs in a short
transaction of its own, so no transaction stays open while a request is in flight.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.orm import Session
from sqlmodel import col

from monitor.store.db import Store, as_utc
from monitor.store.tables import WebhookDelivery, WebhookEndpointState, WebhookEvent

DeliveryStatus = Literal["pending", "delivered", "dead", "disabled"]
#: Every status a delivery can have, the one it starts in first.
DELIVERY_STATUSES: tuple[DeliveryStatus, ...] = ("pending", "delivered", "dead", "disabled")


@dataclass(frozen=True)
class DueDelivery:
    """A pending delivery whose next attempt is due, with the event it carries."""

    delivery_id: int
    endpoint: str
    attempts: int
    last_error: str | None
    #: The event's ``event_id``: the ``webhook-id`` header, the same on every retry.
    msg_id: str
    event_type: str
    envelope: dict[str, Any]
    #: When the event was written (timezone-aware UTC).
    created_at: datetime
    #: The endpoint answered 410 Gone before; nothing more is sent to it.
    endpoint_disabled: bool


@dataclass(frozen=True)
class ClosedDelivery:
    """A due delivery to end without a request, and why."""

    delivery_id: int
    status: Literal["dead", "disabled"]
    reason: str


@dataclass(frozen=True)
class EndpointCounts:
    """One endpoint's deliveries in one status, and the HTTP attempts they took."""

    endpoint: str
    status: str
    deliveries: int
    attempts: int


@dataclass(frozen=True)
class OutboxSummary:
    """The outbox at one moment, read in one transaction (what the metrics export)."""

    by_status: list[EndpointCounts]
    #: Per endpoint with pending deliveries: when its oldest pending event was written (UTC).
    oldest_pending: dict[str, datetime]
    disabled: frozenset[str]


@dataclass(frozen=True)
class EndpointStatus:
    """An endpoint the store knows of: it has deliveries, or it answered 410 Gone once."""

    name: str
    #: When it answered 410 Gone; None while it is sent to.
    disabled_at: datetime | None
    #: The 410 answer that disabled it; None while it is sent to.
    reason: str | None
    #: Deliveries per status, every status present.
    deliveries: dict[str, int] = field(default_factory=dict)
    #: The last error of its newest delivery that has one (a delivery delivered after retries keeps
    #: the error of its last failed attempt); None when no delivery has failed.
    last_error: str | None = None


# --- writing events ----------------------------------------------------------------------------------


def enqueue_event(
    session: Session,
    *,
    event_id: str,
    type: str,
    envelope: Mapping[str, Any],
    endpoints: Sequence[str],
    now: datetime,
) -> WebhookEvent:
    """Write an event and one pending delivery per endpoint in the caller's open ``session``.

    Nothing is committed here: the event exists if and only if the caller's
    transaction commits.  Endpoints are taken once each, in order; a delivery to
    an endpoint that answered 410 before is written ``disabled``.  ``now`` stamps
    the event and makes its deliveries due at once.
    """
    event = WebhookEvent(event_id=event_id, type=type, payload=dict(envelope), created_at=now)
    session.add(event)
    session.flush()
    assert event.id is not None
    names = list(dict.fromkeys(endpoints))
    disabled = _disabled_endpoints(session, names) if names else set()
    for name in names:
        off = name in disabled
        session.add(
            WebhookDelivery(
                event_id=event.id,
                endpoint=name,
                status="disabled" if off else "pending",
                next_attempt_at=now,
                last_error="endpoint disabled: it answered 410 Gone" if off else None,
                created_at=now,
            )
        )
    session.flush()
    return event


def _disabled_endpoints(session: Session, names: Iterable[str] | None = None) -> set[str]:
    query = select(col(WebhookEndpointState.name)).where(col(WebhookEndpointState.disabled_at).is_not(None))
    if names is not None:
        query = query.where(col(WebhookEndpointState.name).in_(list(names)))
    return set(session.execute(query).scalars())


# --- delivering ---------------------------------------------------------------------------------------


def due_deliveries(
    store: Store, now: datetime, *, limit: int, skip_endpoints: Collection[str] = ()
) -> list[DueDelivery]:
    """Pending deliveries due at ``now``, oldest next attempt first, at most ``limit``.

    Deliveries to ``skip_endpoints`` are left out (not counted in ``limit``).
    """
    with store.session() as s:
        disabled = _disabled_endpoints(s)
        query = (
            select(WebhookDelivery, WebhookEvent)
            .join(WebhookEvent, col(WebhookDelivery.event_id) == col(WebhookEvent.id))
            .where(col(WebhookDelivery.status) == "pending", col(WebhookDelivery.next_attempt_at) <= now)
            .order_by(col(WebhookDelivery.next_attempt_at), col(WebhookDelivery.id))
            .limit(limit)
        )
        if skip_endpoints:
            query = query.where(col(WebhookDelivery.endpoint).not_in(list(skip_endpoints)))
        due = []
        for delivery, event in s.execute(query).all():
            created = as_utc(event.created_at)
            assert created is not None and delivery.id is not None
            due.append(
                DueDelivery(
                    delivery_id=delivery.id,
                    endpoint=delivery.endpoint,
                    attempts=delivery.attempts,
                    last_error=delivery.last_error,
                    msg_id=event.event_id,
                    event_type=event.type,
                    envelope=dict(event.payload),
                    created_at=created,
                    endpoint_disabled=delivery.endpoint in disabled,
                )
            )
    return due


def close_deliveries(store: Store, closed: Iterable[ClosedDelivery]) -> None:
    """End deliveries without a request, each with its status and reason as its last error.

    A delivery that is no longer pending (another sender finished it) is left as it is.
    """
    closed = list(closed)
    if not closed:
        return
    with store.session() as s:
        for item in closed:
            s.execute(
                update(WebhookDelivery)
                .where(col(WebhookDelivery.id) == item.delivery_id, col(WebhookDelivery.status) == "pending")
                .values(status=item.status, last_error=item.reason)
            )


def claim_delivery(store: Store, delivery_id: int, now: datetime, until: datetime) -> bool:
    """Hide a due pending delivery from other senders until ``until``; false when it was not due.

    If the claimant dies before recording the outcome, the delivery is due again
    at ``until`` (delivery is at least once).
    """
    with store.session() as s:
        result = cast(
            CursorResult[Any],
            s.execute(
                update(WebhookDelivery)
                .where(
                    col(WebhookDelivery.id) == delivery_id,
                    col(WebhookDelivery.status) == "pending",
                    col(WebhookDelivery.next_attempt_at) <= now,
                )
                .values(next_attempt_at=until)
            ),
        )
        return bool(result.rowcount == 1)


def defer_delivery(store: Store, delivery_id: int, until: datetime) -> None:
    """Make a pending delivery due at ``until`` instead."""
    with store.session() as s:
        s.execute(
            update(WebhookDelivery)
            .where(col(WebhookDelivery.id) == delivery_id, col(WebhookDelivery.status) == "pending")
            .values(next_attempt_at=until)
        )


def record_attempt(
    store: Store,
    delivery_id: int,
    *,
    attempts: int,
    status: Literal["pending", "delivered", "dead"],
    status_code: int | None,
    error: str | None,
    now: datetime,
    next_attempt_at: datetime | None = None,
) -> None:
    """Store one attempt's outcome: ``attempts`` so far, the answer's code and error (kept when None).

    ``delivered`` stamps ``delivered_at`` with ``now``; ``pending`` (to be retried)
    needs ``next_attempt_at``.
    """
    if status == "pending" and next_attempt_at is None:
        raise ValueError("a delivery to retry needs its next_attempt_at")
    with store.session() as s:
        delivery = s.get(WebhookDelivery, delivery_id)
        assert delivery is not None
        delivery.attempts = attempts
        delivery.last_status_code = status_code
        if error is not None:
            delivery.last_error = error
        delivery.status = status
        if status == "delivered":
            delivery.delivered_at = now
        elif status == "pending":
            assert next_attempt_at is not None
            delivery.next_attempt_at = next_attempt_at
        s.add(delivery)


def record_gone(
    store: Store, delivery_id: int, *, attempts: int, status_code: int | None, reason: str, now: datetime
) -> None:
    """Store an attempt answered 410 Gone: its endpoint is disabled at ``now`` for ``reason``.

    In the same transaction every pending delivery to that endpoint, this one
    included, becomes ``disabled`` with ``endpoint disabled: <reason>`` as its last error.
    """
    with store.session() as s:
        delivery = s.get(WebhookDelivery, delivery_id)
        assert delivery is not None
        delivery.attempts = attempts
        delivery.last_status_code = status_code
        delivery.last_error = reason
        _disable(s, delivery.endpoint, now, reason)
        delivery.status = "disabled"
        s.add(delivery)


def _disable(s: Session, endpoint: str, now: datetime, reason: str) -> None:
    state = s.get(WebhookEndpointState, endpoint) or WebhookEndpointState(name=endpoint)
    state.disabled_at = now
    state.reason = reason
    s.add(state)
    s.execute(
        update(WebhookDelivery)
        .where(col(WebhookDelivery.endpoint) == endpoint, col(WebhookDelivery.status) == "pending")
        .values(status="disabled", last_error=f"endpoint disabled: {reason}")
    )


# --- endpoints -----------------------------------------------------------------------------------------


def enable_endpoint(store: Store, name: str) -> bool:
    """Send to an endpoint again after it answered 410; false when it was not disabled.

    Deliveries already marked ``disabled`` stay so; new events are delivered.
    """
    with store.session() as s:
        state = s.get(WebhookEndpointState, name)
        if state is None or state.disabled_at is None:
            return False
        state.disabled_at = None
        state.reason = None
        s.add(state)
        return True


def list_endpoints(store: Store) -> list[EndpointStatus]:
    """Every endpoint with deliveries or a 410 on record, by name, with its state, delivery counts and
    last error, read in one transaction."""
    with store.session() as s:
        counts = s.execute(
            select(col(WebhookDelivery.endpoint), col(WebhookDelivery.status), func.count()).group_by(
                col(WebhookDelivery.endpoint), col(WebhookDelivery.status)
            )
        ).all()
        by_endpoint: dict[str, dict[str, int]] = {}
        for endpoint, status, n in counts:
            by_endpoint.setdefault(endpoint, dict.fromkeys(DELIVERY_STATUSES, 0))[status] = int(n)
        newest_failed = (
            select(func.max(col(WebhookDelivery.id)))
            .where(col(WebhookDelivery.last_error).is_not(None))
            .group_by(col(WebhookDelivery.endpoint))
        )
        errors: dict[str, str] = {
            endpoint: error
            for endpoint, error in s.execute(
                select(col(WebhookDelivery.endpoint), col(WebhookDelivery.last_error)).where(
                    col(WebhookDelivery.id).in_(newest_failed)
                )
            ).all()
        }
        states = {state.name: state for state in s.execute(select(WebhookEndpointState)).scalars()}
    return [
        EndpointStatus(
            name=name,
            disabled_at=as_utc(states[name].disabled_at) if name in states else None,
            reason=states[name].reason if name in states else None,
            deliveries=by_endpoint.get(name, dict.fromkeys(DELIVERY_STATUSES, 0)),
            last_error=errors.get(name),
        )
        for name in sorted({*by_endpoint, *states})
    ]


# --- reading -------------------------------------------------------------------------------------------


def count_by_status(store: Store) -> dict[str, int]:
    """Deliveries per status (every status present, zero when none)."""
    counts: dict[str, int] = dict.fromkeys(DELIVERY_STATUSES, 0)
    with store.session() as s:
        for status, n in s.execute(
            select(col(WebhookDelivery.status), func.count()).group_by(col(WebhookDelivery.status))
        ).all():
            counts[status] = int(n)
    return counts


def outbox_summary(store: Store) -> OutboxSummary:
    """Deliveries and attempts per endpoint and status, the oldest pending event per endpoint, and
    the disabled endpoints, read in one transaction."""
    with store.session() as s:
        by_status = [
            EndpointCounts(endpoint, status, int(n), int(total_attempts or 0))
            for endpoint, status, n, total_attempts in s.execute(
                select(
                    col(WebhookDelivery.endpoint),
                    col(WebhookDelivery.status),
                    func.count(),
                    func.sum(col(WebhookDelivery.attempts)),
                ).group_by(col(WebhookDelivery.endpoint), col(WebhookDelivery.status))
            ).all()
        ]
        oldest = s.execute(
            select(col(WebhookDelivery.endpoint), func.min(col(WebhookEvent.created_at)))
            .join(WebhookEvent, col(WebhookDelivery.event_id) == col(WebhookEvent.id))
            .where(col(WebhookDelivery.status) == "pending")
            .group_by(col(WebhookDelivery.endpoint))
        ).all()
        oldest_pending = {
            endpoint: created for endpoint, first in oldest if (created := as_utc(first)) is not None
        }
        disabled = frozenset(_disabled_endpoints(s))
    return OutboxSummary(by_status=by_status, oldest_pending=oldest_pending, disabled=disabled)
