"""Alert webhooks: a transactional outbox, Standard Webhooks signing, and a retrying sender.

The flow::

    analysis ──enqueue_event(session, ...)──▶ webhook_events + webhook_deliveries   (the caller's transaction)
    WebhookSender.deliver_due(now) ──▶ claim one delivery   (short transaction)
                                   ──▶ HTTP POST            (no transaction open)
                                   ──▶ record the outcome   (short transaction)

An event is written in the same transaction as the verdict or recommendation
that caused it, so it exists if and only if its cause was committed.  Delivery is
*at least once*: a receiver may see an event twice (a timeout after it answered,
a crash between the POST and the record), always with the same ``webhook-id``,
which is the event's ``event_id`` and never changes across retries.

Every request is signed as `Standard Webhooks <https://www.standardwebhooks.com>`_
specifies: ``webhook-id``, ``webhook-timestamp`` (unix seconds) and
``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``.
Receivers check it with :func:`verify` (or any Standard Webhooks library).
The body of a ``standard`` endpoint is the versioned envelope
``{"type", "timestamp", "data", "version": 1}``; a ``slack`` endpoint gets
``{"text": <one line>, "blocks": [...]}`` instead, signed the same way.

A delivery is ``pending`` until it ends ``delivered``, ``dead`` or ``disabled``.
One attempt's outcome decides what happens next:

==============================================  ====================================================
2xx                                             delivered
410 Gone                                        the endpoint is disabled (``webhook_endpoints``);
                                                its pending deliveries become ``disabled``
408, 409, 425, 429, 5xx, connection errors,     retried: ``attempts + 1``, next attempt after
timeouts                                        ``min(max_backoff, initial_backoff * 2**attempts)``
                                                with jitter, or after ``Retry-After`` when longer
any other 3xx or 4xx                            dead at once: the request itself is wrong (bad URL,
                                                bad credentials, rejected payload), and the same
                                                bytes would fail again.  Redirects are not followed.
``max_age`` after the event (or a next attempt  dead: the dead letter, kept with its last error
that would fall after it)
==============================================  ====================================================

After a retryable failure the sender leaves that endpoint alone until the
failed delivery's next attempt (the endpoint is down or throttling us), so a
dead endpoint costs one timeout per backoff step, not one per pending event.
The pause itself is kept in memory, but the deliveries it held back are stored
with the same ``next_attempt_at``, so a restarted sender retries none of them
early (it may try a newer event to that endpoint once).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from monitor.store import Store, utcnow
from monitor.store.tables import WebhookDelivery, WebhookEndpointState, WebhookEvent

#: The version of the envelope every ``standard`` body carries.
PAYLOAD_VERSION = 1


# --- events: the outbox -----------------------------------------------------------------------------


def _utc(moment: datetime) -> datetime:
    # Stored timestamps are UTC (SQLite keeps no offset); a naive datetime is taken to be UTC already.
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _iso(moment: datetime) -> str:
    return _utc(moment).isoformat().replace("+00:00", "Z")


def _json_safe(value: Any) -> Any:
    # The payload must survive json.dumps forever after, so coerce now: NaN → null, datetimes → ISO.
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        return _iso(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _json_safe(value.item())
    return str(value)


def enqueue_event(
    session: Session,
    type: str,
    payload: Mapping[str, Any],
    endpoints: Sequence[str],
    now: datetime | None = None,
) -> WebhookEvent:
    """Write an event and one pending delivery per endpoint in the caller's session (the outbox).

    Nothing is sent here and nothing is committed: the event is sent only if the
    caller's transaction commits.  The payload is stored inside the versioned
    envelope ``{"type", "timestamp", "data", "version"}`` with JSON-unsafe values
    coerced (NaN and infinities become null, datetimes ISO strings).  A delivery to
    an endpoint that answered 410 before is written ``disabled``.  Pass
    ``config.webhooks.endpoints_for(type)`` as ``endpoints``.
    """
    now = _utc(now or utcnow())
    envelope = {"type": type, "timestamp": _iso(now), "data": _json_safe(payload), "version": PAYLOAD_VERSION}
    event = WebhookEvent(event_id=f"msg_{uuid.uuid4().hex}", type=type, payload=envelope, created_at=now)
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
