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

import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Annotated, Any, Literal

import httpx
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.orm import Session
from sqlmodel import col

from monitor import __version__
from monitor.errors import ConfigError, MonitorError, Problem
from monitor.schedule import parse_interval
from monitor.store import Store, as_utc, utcnow
from monitor.store.tables import WebhookDelivery, WebhookEndpointState, WebhookEvent

log = logging.getLogger("monitor.webhooks")

#: The version of the envelope every ``standard`` body carries.
PAYLOAD_VERSION = 1
SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE = timedelta(minutes=5)

RECOMMENDATION_CHANGED = "recommendation.changed"
REGRESSION_CONFIRMED = "regression.confirmed"
DRIFT_DETECTED = "drift.detected"
RUN_FAILED_REPEATEDLY = "run.failed_repeatedly"
RELEASE_DISCOVERED = "release.discovered"
#: The event types the monitor sends; an endpoint subscribes to all of them unless it lists some.
EVENT_TYPES = (
    RECOMMENDATION_CHANGED,
    REGRESSION_CONFIRMED,
    DRIFT_DETECTED,
    RUN_FAILED_REPEATEDLY,
    RELEASE_DISCOVERED,
)

DELIVERY_STATUSES = ("pending", "delivered", "dead", "disabled")
#: Statuses a delivery ends in; ``monitor_webhook_deliveries_total`` counts these.
FINAL_STATUSES = ("delivered", "dead", "disabled")
#: 4xx answers that mean "try again later" rather than "this request is wrong".
RETRYABLE_4XX = frozenset({408, 409, 425, 429})
#: How long a claimed delivery stays invisible to other senders beyond its request's timeouts.
CLAIM_MARGIN = timedelta(seconds=30)
_ERROR_BODY_CHARS = 300


# --- configuration ---------------------------------------------------------------------------------


def _check_interval(value: str) -> str:
    parse_interval(value)
    return value


Interval = Annotated[str, AfterValidator(_check_interval)]
EndpointName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=200)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WebhookEndpointConfig(_Strict):
    """One receiver: where to POST, how to sign, what to send it."""

    url: str
    #: Name of the environment variable holding the signing secret (``whsec_<base64>`` or a raw string).
    secret_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    #: ``standard``: the signed JSON envelope; ``slack``: ``{"text": ...}`` for a Slack incoming webhook.
    format: Literal["standard", "slack"] = "standard"
    #: Event types to send (unset: all of them).
    events: Annotated[tuple[str, ...], Field(min_length=1)] | None = None
    #: Per request (connect, send and read each).
    timeout: Interval = "5s"

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            url = httpx.URL(value)
        except (httpx.InvalidURL, TypeError) as exc:
            raise ValueError(f"{value!r} is not a URL: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value

    @field_validator("events")
    @classmethod
    def _known_events(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        unknown = [e for e in value or () if e not in EVENT_TYPES]
        if unknown:
            raise ValueError(f"unknown event type(s) {', '.join(unknown)}; known: {', '.join(EVENT_TYPES)}")
        return value

    @model_validator(mode="after")
    def _signed(self) -> WebhookEndpointConfig:
        if self.format == "standard" and self.secret_env is None:
            raise ValueError("a 'standard' endpoint needs 'secret_env' (Standard Webhooks are signed)")
        return self

    def wants(self, event_type: str) -> bool:
        """Whether this endpoint subscribes to ``event_type``."""
        return self.events is None or event_type in self.events

    def timeout_s(self) -> float:
        return parse_interval(self.timeout).total_seconds()


class WebhooksConfig(_Strict):
    """``webhooks:``: the receivers, and how hard the sender tries."""

    endpoints: dict[EndpointName, WebhookEndpointConfig] = Field(default_factory=dict)
    #: Give up on a delivery this long after its event (it becomes a dead letter).
    max_age: Interval = "24h"
    #: The first retry waits this long; each further one twice as long, up to ``max_backoff``.
    initial_backoff: Interval = "2s"
    max_backoff: Interval = "10m"
    #: Share of each backoff drawn at random: 1 is "full jitter" (uniform in (0, backoff]), 0 is none.
    jitter: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    #: Deliveries looked at per pass.
    batch_size: Annotated[int, Field(ge=1, le=1000)] = 50
    #: How often the sender looks for due deliveries (an enqueued event can also wake it).
    poll_interval: Interval = "5s"

    @model_validator(mode="after")
    def _backoff_order(self) -> WebhooksConfig:
        if parse_interval(self.max_backoff) < parse_interval(self.initial_backoff):
            raise ValueError("max_backoff must not be shorter than initial_backoff")
        return self

    def endpoints_for(self, event_type: str) -> list[str]:
        """Names of the endpoints subscribed to ``event_type``: what to pass to :func:`enqueue_event`."""
        return [name for name, endpoint in self.endpoints.items() if endpoint.wants(event_type)]


# --- secrets and signatures -------------------------------------------------------------------------


class WebhookVerificationError(MonitorError):
    """A webhook's headers or signature do not check out (raised by :func:`verify`)."""


def decode_secret(secret: str | bytes) -> bytes:
    """The HMAC key of a secret.

    ``whsec_<base64>`` (the Standard Webhooks form) is base64-decoded; any other
    string is used as its UTF-8 bytes, and bytes as they are.  Receivers using a
    Standard Webhooks library with a raw secret must hand it the *bytes*
    (``Webhook(secret.encode())``): those libraries base64-decode every string.

    Raises:
        ValueError: the secret is empty, or its ``whsec_`` part is not base64.
    """
    if isinstance(secret, bytes):
        key = secret
    elif secret.startswith(SECRET_PREFIX):
        encoded = secret[len(SECRET_PREFIX) :].strip()
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"the part after {SECRET_PREFIX!r} is not base64") from None
    else:
        key = secret.encode("utf-8")
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def _as_bytes(body: bytes | str) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else body


def _unix(timestamp: int | datetime) -> int:
    return math.floor(timestamp.timestamp()) if isinstance(timestamp, datetime) else int(timestamp)


def sign(secret: str | bytes, msg_id: str, timestamp: int | datetime, body: bytes | str) -> str:
    """The ``webhook-signature`` value: ``v1,`` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))."""
    content = f"{msg_id}.{_unix(timestamp)}.".encode() + _as_bytes(body)
    digest = hmac.new(decode_secret(secret), content, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def webhook_headers(
    secret: str | bytes | None, msg_id: str, timestamp: int | datetime, body: bytes | str
) -> dict[str, str]:
    """The three Standard Webhooks headers (without a signature when there is no secret)."""
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(_unix(timestamp))}
    if secret is not None:
        headers["webhook-signature"] = sign(secret, msg_id, timestamp, body)
    return headers


def verify(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    tolerance: timedelta = DEFAULT_TOLERANCE,
    now: datetime | None = None,
) -> None:
    """Check a received webhook, as a receiver should before trusting it.

    ``body`` must be the raw bytes received, not re-serialized JSON.  The
    timestamp must lie within ``tolerance`` of ``now`` (replay protection), and
    one of the space-separated ``v1,`` signatures must match (compared in
    constant time); signatures of other versions are ignored.  Receivers should
    also drop a ``webhook-id`` they have already processed: delivery is at least once.

    Raises:
        WebhookVerificationError: a header is missing or malformed, the timestamp is
            too old or too new, or no signature matches.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not (msg_id and stamp and signatures):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        sent = int(stamp.strip())
    except ValueError:
        raise WebhookVerificationError(f"webhook-timestamp {stamp!r} is not unix seconds") from None
    current = (now or utcnow()).timestamp()
    if sent < current - tolerance.total_seconds():
        raise WebhookVerificationError("webhook-timestamp is too old")
    if sent > current + tolerance.total_seconds():
        raise WebhookVerificationError("webhook-timestamp is in the future")
    expected = base64.b64decode(sign(secret, msg_id, sent, body).split(",", 1)[1])
    for candidate in signatures.split():
        version, _, encoded = candidate.partition(",")
        if version != SIGNATURE_VERSION:
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(expected, given):
            return
    raise WebhookVerificationError("no matching signature")


def resolve_secrets(config: WebhooksConfig, env: Mapping[str, str] | None = None) -> dict[str, bytes | None]:
    """Each endpoint's HMAC key, read from its ``secret_env``.

    Raises:
        ConfigError: one problem per endpoint whose variable is unset, empty or malformed.
    """
    env = os.environ if env is None else env
    keys: dict[str, bytes | None] = {}
    problems = []
    for name, endpoint in config.endpoints.items():
        if endpoint.secret_env is None:
            keys[name] = None
            continue
        location = f"webhooks.endpoints.{name}.secret_env"
        value = env.get(endpoint.secret_env)
        if not value:
            problems.append(Problem(location, f"environment variable {endpoint.secret_env} is not set"))
            continue
        try:
            keys[name] = decode_secret(value)
        except ValueError as exc:
            problems.append(Problem(location, f"{endpoint.secret_env}: {exc}"))
    if problems:
        raise ConfigError(problems)
    return keys


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


# --- bodies -----------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str = "") -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and spec:
        return format(value, spec)
    return str(value)


def summarize_event(event_type: str, data: Mapping[str, Any]) -> str:
    """One readable line for chat: the event type's phrasing, filled from the fields the payload has.

    Fields used when present: ``model``, ``evalset``, ``metric``, ``delta``, ``ci_low``,
    ``ci_high``, ``action``, ``previous_action``, ``kind``, ``source``, ``score``,
    ``job``, ``failures``, ``error``, ``release``, ``family``, ``location``, ``finetunes`` and
    ``summary``.  Never raises.
    """
    d = data
    model = d.get("model", "?")
    try:
        if event_type == RECOMMENDATION_CHANGED:
            previous = d.get("previous_action")
            head = f"Recommendation for {model}: " + (
                f"{previous} → {d.get('action', '?')}" if previous else f"{d.get('action', '?')} (first)"
            )
        elif event_type == REGRESSION_CONFIRMED:
            head = f"Regression confirmed: {model} on {d.get('evalset', '?')}"
            if "metric" in d:
                head += f", {d['metric']}"
                if d.get("delta") is not None:
                    head += f" {_fmt(d['delta'], '+.3f')}"
                if d.get("ci_low") is not None and d.get("ci_high") is not None:
                    head += f" (95% CI {_fmt(d['ci_low'], '+.3f')} to {_fmt(d['ci_high'], '+.3f')})"
        elif event_type == DRIFT_DETECTED:
            head = f"Drift detected: {model}, {d.get('kind', 'behaviour')} drift on {d.get('source', '?')}"
            if d.get("score") is not None:
                head += f" (score {_fmt(d['score'], '.3f')})"
        elif event_type == RUN_FAILED_REPEATEDLY:
            head = f"Runs failing: job {d.get('job', '?')}, model {model}"
            if d.get("failures") is not None:
                head += f", {d['failures']} failures in a row"
            if d.get("error"):
                head += f": {str(d['error']).splitlines()[0][:200]}"
        elif event_type == RELEASE_DISCOVERED:
            head = f"New base-model release: {d.get('release', '?')} of {d.get('family', '?')}"
            head += f" ({d.get('source', '?')} {d.get('location', '')})".rstrip()
            if d.get("finetunes"):
                head += f"; challenger evaluation queued for {', '.join(map(str, d['finetunes']))}"
        else:
            head = f"{event_type}: {model}"
    except Exception:  # a chat line must never stop a delivery
        head = f"{event_type}: {model}"
    summary = d.get("summary")
    line = f"{head}: {summary}" if summary else head
    return " ".join(f"[model-monitor] {line}".split())


def render_body(event_type: str, envelope: Mapping[str, Any], fmt: str, msg_id: str) -> bytes:
    """The bytes POSTed for one event: the envelope itself, or Slack's ``{"text", "blocks"}``."""
    if fmt == "slack":
        data = envelope.get("data") or {}
        text = summarize_event(event_type, data if isinstance(data, Mapping) else {})
        document: Mapping[str, Any] = {
            "text": text,
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": text}},
                {
                    "type": "context",
                    "elements": [
                        {
                            "type": "mrkdwn",
                            "text": f"{event_type} · {envelope.get('timestamp', '')} · {msg_id}",
                        }
                    ],
                },
            ],
        }
    else:
        document = envelope
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


# --- the sender -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryCounts:
    """What one :meth:`WebhookSender.deliver_due` pass did."""

    #: Due deliveries taken up (the batch, closed ones included); ``batch_size`` when more may be waiting.
    due: int = 0
    delivered: int = 0
    #: Attempted, failed, and scheduled again.
    retrying: int = 0
    dead: int = 0
    disabled: int = 0
    #: Not attempted: their endpoint failed earlier in this pass, or the sender was stopping.
    deferred: int = 0
    #: The store could not be read or written (the pass stopped there); None when all went well.
    error: str | None = None

    @property
    def attempted(self) -> int:
        return self.delivered + self.retrying + self.dead + self.disabled


@dataclass(frozen=True)
class _Due:
    delivery_id: int
    endpoint: str
    attempts: int
    last_error: str | None
    msg_id: str
    event_type: str
    envelope: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class _Outcome:
    kind: Literal["delivered", "retry", "dead", "gone"]
    status_code: int | None
    error: str | None
    retry_after: timedelta | None = None


def parse_retry_after(value: str | None, now: datetime) -> timedelta | None:
    """``Retry-After`` as a delay: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return max(timedelta(0), when - now)
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return timedelta(seconds=seconds)


def backoff_delay(
    attempts: int, initial: timedelta, maximum: timedelta, jitter: float, rng: random.Random
) -> timedelta:
    """``min(maximum, initial * 2**attempts)``, of which the ``jitter`` share is drawn at random."""
    ceiling = min(maximum.total_seconds(), initial.total_seconds() * 2 ** min(attempts, 60))
    return timedelta(seconds=ceiling * (1.0 - jitter * rng.random()))


def classify(response: httpx.Response, now: datetime) -> _Outcome:
    """What an HTTP answer means for the delivery (see the table in the module docstring)."""
    code = response.status_code
    if 200 <= code < 300:
        return _Outcome("delivered", code, None)
    detail = f"HTTP {code}"
    snippet = " ".join(response.text[:_ERROR_BODY_CHARS].split()) if response.content else ""
    if 300 <= code < 400:
        location = response.headers.get("location")
        detail += f" redirect to {location} (redirects are not followed)" if location else " redirect"
    if snippet:
        detail += f": {snippet}"
    if code == 410:
        return _Outcome("gone", code, detail)
    if code in RETRYABLE_4XX or code >= 500:
        return _Outcome("retry", code, detail, parse_retry_after(response.headers.get("retry-after"), now))
    return _Outcome("dead", code, detail)


class WebhookSender:
    """Delivers the outbox: due pending deliveries, signed, retried with backoff until a final status.

    Never raises from :meth:`deliver_due` or :meth:`run_forever`: failures are
    stored with the delivery and counted.  No database transaction is open while
    a request is in flight.  ``clock`` gives timezone-aware UTC now; ``rng`` draws
    the jitter; ``env`` holds the endpoints' secrets (default: ``os.environ``).

    Raises:
        ConfigError: (on construction) an endpoint's secret variable is unset or malformed.
    """

    def __init__(
        self,
        store: Store,
        config: WebhooksConfig,
        transport: httpx.BaseTransport | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._store = store
        self._config = config
        self._clock = clock
        self._rng = rng or random.Random()
        self._keys = resolve_secrets(config, env)
        self._max_age = parse_interval(config.max_age)
        self._initial = parse_interval(config.initial_backoff)
        self._max_backoff = parse_interval(config.max_backoff)
        self._poll_s = parse_interval(config.poll_interval).total_seconds()
        self._client = httpx.Client(
            transport=transport,
            follow_redirects=False,
            headers={"user-agent": f"model-monitor/{__version__}", "content-type": "application/json"},
        )
        #: An endpoint that failed is left alone until then (it is down, or throttling us).
        self._waits: dict[str, datetime] = {}
        self._lock = threading.Lock()
        self._wakeup = threading.Event()

    # --- lifecycle -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def __enter__(self) -> WebhookSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wake(self) -> None:
        """Make :meth:`run_forever` look for due deliveries now (call after committing an event)."""
        self._wakeup.set()

    def run_forever(self, stop_event: threading.Event) -> None:
        """Deliver until ``stop_event`` is set: a pass every ``poll_interval``, at once when woken.

        Meant for a thread of its own; a full batch is followed by the next pass
        at once.  Stops between deliveries, so a stop waits for at most one request.
        """
        log.info("webhook sender started (%d endpoint(s))", len(self._config.endpoints))
        while not stop_event.is_set():
            self._wakeup.clear()
            try:
                counts = self.deliver_due(should_stop=stop_event.is_set)
            except Exception:  # deliver_due does not raise; this guards the thread against bugs
                log.exception("webhook delivery pass failed")
                counts = DeliveryCounts(error="unexpected error")
            if counts.due >= self._config.batch_size and counts.error is None:
                continue
            deadline = time.monotonic() + self._poll_s
            while not stop_event.is_set() and not self._wakeup.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                stop_event.wait(min(remaining, 0.1))
        log.info("webhook sender stopped")

    # --- a pass --------------------------------------------------------------------------------------

    def deliver_due(
        self, now: datetime | None = None, *, should_stop: Callable[[], bool] | None = None
    ) -> DeliveryCounts:
        """Attempt every due pending delivery (up to ``batch_size``) once; never raises.

        Expired deliveries become dead and deliveries to disabled or unconfigured
        endpoints are closed without a request.  ``now`` (default: the clock) decides
        what is due, stamps ``webhook-timestamp`` and schedules retries.
        """
        with self._lock:
            now = _utc(now or self._clock())
            tally: Counter[str] = Counter()
            try:
                due = self._select_due(now, tally)
            except Exception as exc:
                log.warning("webhook outbox unreadable: %s", exc)
                return DeliveryCounts(error=f"{exc.__class__.__name__}: {exc}")
            examined = len(due) + sum(tally.values())  # closed without a request are counted already
            error = None
            for index, item in enumerate(due):
                try:
                    if should_stop is not None and should_stop():
                        tally["deferred"] += len(due) - index
                        break
                    wait = self._waits.get(item.endpoint)
                    if wait is not None and wait > now:
                        self._defer(item, wait)
                        tally["deferred"] += 1
                        continue
                    if not self._claim(item, now):
                        continue
                    outcome = self._attempt(item, now)
                    tally[self._record(item, outcome, now)] += 1
                except Exception as exc:
                    log.warning("webhook outbox write failed: %s", exc)
                    error = f"{exc.__class__.__name__}: {exc}"
                    break
            return DeliveryCounts(
                due=examined,
                delivered=tally["delivered"],
                retrying=tally["retrying"],
                dead=tally["dead"],
                disabled=tally["disabled"],
                deferred=tally["deferred"],
                error=error,
            )

    def _select_due(self, now: datetime, tally: Counter[str]) -> list[_Due]:
        """Due deliveries to attempt; closes expired ones and those to disabled or unknown endpoints."""
        waiting = [name for name, until in self._waits.items() if until > now]
        with self._store.session() as s:
            disabled = _disabled_endpoints(s)
            query = (
                select(WebhookDelivery, WebhookEvent)
                .join(WebhookEvent, col(WebhookDelivery.event_id) == col(WebhookEvent.id))
                .where(col(WebhookDelivery.status) == "pending", col(WebhookDelivery.next_attempt_at) <= now)
                .order_by(col(WebhookDelivery.next_attempt_at), col(WebhookDelivery.id))
                .limit(self._config.batch_size)
            )
            if waiting:
                query = query.where(col(WebhookDelivery.endpoint).not_in(waiting))
            due = []
            for delivery, event in s.execute(query).all():
                created = as_utc(event.created_at)
                assert created is not None and delivery.id is not None
                if delivery.endpoint in disabled:
                    delivery.status = "disabled"
                    delivery.last_error = "endpoint disabled: it answered 410 Gone"
                elif delivery.endpoint not in self._config.endpoints:
                    delivery.status = "dead"
                    delivery.last_error = f"endpoint {delivery.endpoint!r} is not configured any more"
                elif created + self._max_age <= now:
                    delivery.status = "dead"
                    delivery.last_error = self._gave_up(delivery.attempts, delivery.last_error)
                else:
                    due.append(
                        _Due(
                            delivery.id,
                            delivery.endpoint,
                            delivery.attempts,
                            delivery.last_error,
                            event.event_id,
                            event.type,
                            dict(event.payload),
                            created,
                        )
                    )
                    continue
                s.add(delivery)
                tally[delivery.status] += 1
        return due

    def _gave_up(self, attempts: int, last_error: str | None) -> str:
        return (
            f"gave up after {attempts} attempt(s) in {self._config.max_age}: "
            f"{last_error or 'never attempted'}"
        )

    def _claim(self, item: _Due, now: datetime) -> bool:
        # Hide the delivery from any other sender while its request is in flight; if this process
        # dies before recording the outcome, the delivery is due again when the claim runs out.
        timeout = self._config.endpoints[item.endpoint].timeout_s()
        until = now + timedelta(seconds=3 * timeout) + CLAIM_MARGIN
        with self._store.session() as s:
            result: CursorResult[Any] = s.execute(  # type: ignore[assignment]
                update(WebhookDelivery)
                .where(
                    col(WebhookDelivery.id) == item.delivery_id,
                    col(WebhookDelivery.status) == "pending",
                    col(WebhookDelivery.next_attempt_at) <= now,
                )
                .values(next_attempt_at=until)
            )
            return bool(result.rowcount == 1)

    def _defer(self, item: _Due, until: datetime) -> None:
        with self._store.session() as s:
            s.execute(
                update(WebhookDelivery)
                .where(col(WebhookDelivery.id) == item.delivery_id, col(WebhookDelivery.status) == "pending")
                .values(next_attempt_at=until)
            )

    def _attempt(self, item: _Due, now: datetime) -> _Outcome:
        endpoint = self._config.endpoints[item.endpoint]
        try:
            body = render_body(item.event_type, item.envelope, endpoint.format, item.msg_id)
            headers = webhook_headers(self._keys.get(item.endpoint), item.msg_id, now, body)
            response = self._client.post(
                endpoint.url, content=body, headers=headers, timeout=endpoint.timeout_s()
            )
        except httpx.TimeoutException as exc:
            return _Outcome("retry", None, f"timed out after {endpoint.timeout}: {exc.__class__.__name__}")
        except httpx.TransportError as exc:
            return _Outcome("retry", None, f"{exc.__class__.__name__}: {exc}")
        except Exception as exc:  # never lose the event to a bug or an odd URL: retry until max_age
            log.warning("webhook %s to %s failed unexpectedly: %r", item.msg_id, item.endpoint, exc)
            return _Outcome("retry", None, f"{exc.__class__.__name__}: {exc}")
        return classify(response, now)

    def _record(self, item: _Due, outcome: _Outcome, now: datetime) -> str:
        """Store the outcome of one attempt; returns the tally key."""
        with self._store.session() as s:
            delivery = s.get(WebhookDelivery, item.delivery_id)
            assert delivery is not None
            delivery.attempts = item.attempts + 1
            delivery.last_status_code = outcome.status_code
            if outcome.error is not None:
                delivery.last_error = outcome.error
            key: str = outcome.kind
            if outcome.kind == "delivered":
                delivery.status = "delivered"
                delivery.delivered_at = now
                self._waits.pop(item.endpoint, None)
            elif outcome.kind == "dead":
                delivery.status = "dead"
            elif outcome.kind == "gone":
                key = "disabled"
                self._disable(s, item.endpoint, now, outcome.error or "HTTP 410")
                delivery.status = "disabled"
            else:
                delay = backoff_delay(
                    item.attempts, self._initial, self._max_backoff, self._config.jitter, self._rng
                )
                if outcome.retry_after is not None:
                    delay = max(delay, outcome.retry_after)
                next_at = now + delay
                if next_at >= item.created_at + self._max_age:
                    delivery.status = "dead"
                    delivery.last_error = self._gave_up(delivery.attempts, outcome.error)
                    key = "dead"
                else:
                    delivery.next_attempt_at = next_at
                    self._waits[item.endpoint] = next_at
                    key = "retrying"
            s.add(delivery)
        if key != "retrying":
            log.log(
                logging.INFO if key == "delivered" else logging.WARNING,
                "webhook %s (%s) to %s: %s%s",
                item.msg_id,
                item.event_type,
                item.endpoint,
                key,
                f" ({outcome.error})" if outcome.error else "",
            )
        return key

    @staticmethod
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

    # --- reading ---------------------------------------------------------------------------------------

    def backlog(self) -> dict[str, int]:
        """Deliveries per status (every status present, zero when none)."""
        counts = dict.fromkeys(DELIVERY_STATUSES, 0)
        with self._store.session() as s:
            for status, n in s.execute(
                select(col(WebhookDelivery.status), func.count()).group_by(col(WebhookDelivery.status))
            ).all():
                counts[status] = int(n)
        return counts


# --- metrics ----------------------------------------------------------------------------------------


class WebhookCollector(Collector):
    """Exports the outbox from the store on every scrape (fresh families each time).

    Every endpoint that is configured (``endpoints``) or appears in the store gets
    every series, zero when nothing happened yet.  A store that cannot be read
    yields no webhook series (``monitor_store_up`` says so).
    """

    def __init__(
        self, store: Store, *, endpoints: Iterable[str] = (), clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._endpoints = tuple(endpoints)
        self._clock = clock

    def describe(self) -> list[Metric]:
        # Returning nothing keeps registration from running a scrape (and a query) at import time.
        return []

    def collect(self) -> Iterator[Metric]:
        try:
            with self._store.session() as s:
                by_status = s.execute(
                    select(
                        col(WebhookDelivery.endpoint),
                        col(WebhookDelivery.status),
                        func.count(),
                        func.sum(col(WebhookDelivery.attempts)),
                    ).group_by(col(WebhookDelivery.endpoint), col(WebhookDelivery.status))
                ).all()
                oldest = s.execute(
                    select(col(WebhookDelivery.endpoint), func.min(col(WebhookEvent.created_at)))
                    .join(WebhookEvent, col(WebhookDelivery.event_id) == col(WebhookEvent.id))
                    .where(col(WebhookDelivery.status) == "pending")
                    .group_by(col(WebhookDelivery.endpoint))
                ).all()
                disabled = _disabled_endpoints(s)
        except Exception as exc:
            log.warning("webhook metrics: store unreadable: %s", exc)
            return
        now = self._clock()
        names = sorted({*self._endpoints, *(row[0] for row in by_status), *disabled})
        finals = CounterMetricFamily(
            "monitor_webhook_deliveries",
            "Webhook deliveries that reached a final status (delivered, dead, disabled).",
            labels=["endpoint", "status"],
        )
        backlog = GaugeMetricFamily(
            "monitor_webhook_backlog", "Webhook deliveries pending (not yet delivered).", labels=["endpoint"]
        )
        age = GaugeMetricFamily(
            "monitor_webhook_oldest_pending_age_seconds",
            "Age of the oldest event with a pending delivery to the endpoint (0 when none).",
            labels=["endpoint"],
        )
        attempts = CounterMetricFamily(
            "monitor_webhook_attempts", "HTTP attempts made to deliver webhooks.", labels=["endpoint"]
        )
        off = GaugeMetricFamily(
            "monitor_webhook_endpoint_disabled",
            "1 when the endpoint answered 410 Gone and is no longer sent to.",
            labels=["endpoint"],
        )
        counts: Counter[tuple[str, str]] = Counter()
        tries: Counter[str] = Counter()
        for endpoint, status, n, total_attempts in by_status:
            counts[(endpoint, status)] += int(n)
            tries[endpoint] += int(total_attempts or 0)
        oldest_at = {endpoint: as_utc(created) for endpoint, created in oldest}
        for name in names:
            for status in FINAL_STATUSES:
                finals.add_metric([name, status], float(counts[(name, status)]))
            backlog.add_metric([name], float(counts[(name, "pending")]))
            created = oldest_at.get(name)
            age.add_metric([name], max(0.0, now - created.timestamp()) if created is not None else 0.0)
            attempts.add_metric([name], float(tries[name]))
            off.add_metric([name], 1.0 if name in disabled else 0.0)
        yield from (finals, backlog, age, attempts, off)
