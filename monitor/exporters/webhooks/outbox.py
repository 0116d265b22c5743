"""Alert webhooks: a transactional outbox, Standard Webhooks signing, and a retrying sender.

The flow (every row is read and written by :mod:`monitor.store.outbox`; here are
the envelope, the HTTP and the retry policy)::

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

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from monitor.exporters.webhooks.render import _utc, build_envelope
from monitor.store import outbox as store_outbox
from monitor.store.tables import WebhookEvent, utcnow


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
    return store_outbox.enqueue_event(
        session,
        event_id=f"msg_{uuid.uuid4().hex}",
        type=type,
        envelope=build_envelope(type, payload, now),
        endpoints=endpoints,
        now=now,
    )
