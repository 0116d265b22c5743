"""The retrying sender of the outbox, and its Prometheus collector (see :mod:`.outbox` for the flow)."""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Literal

import httpx
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from monitor._version import __version__
from monitor.config import WebhooksConfig
from monitor.exporters.webhooks.render import _utc, render_body
from monitor.exporters.webhooks.signing import resolve_secrets, webhook_headers
from monitor.store.db import Store
from monitor.store.outbox import (
    ClosedDelivery,
    DueDelivery,
    claim_delivery,
    close_deliveries,
    count_by_status,
    defer_delivery,
    due_deliveries,
    outbox_summary,
    record_attempt,
    record_gone,
)
from monitor.store.tables import utcnow

log = logging.getLogger("monitor.webhooks")


#: Statuses a delivery ends in; ``monitor_webhook_deliveries_total`` counts these.
FINAL_STATUSES = ("delivered", "dead", "disabled")
#: 4xx answers that mean "try again later" rather than "this request is wrong".
RETRYABLE_4XX = frozenset({408, 409, 425, 429})
#: How long a claimed delivery stays invisible to other senders beyond its request's timeouts.
CLAIM_MARGIN = timedelta(seconds=30)
_ERROR_BODY_CHARS = 300


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
        self._max_age = config.max_age
        self._initial = config.initial_backoff
        self._max_backoff = config.max_backoff
        self._poll_s = config.poll_interval.total_seconds()
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

    def _select_due(self, now: datetime, tally: Counter[str]) -> list[DueDelivery]:
        """Due deliveries to attempt; closes expired ones and those to disabled or unknown endpoints."""
        waiting = [name for name, until in self._waits.items() if until > now]
        due, closed = [], []
        for item in due_deliveries(self._store, now, limit=self._config.batch_size, skip_endpoints=waiting):
            if item.endpoint_disabled:
                closed.append(
                    ClosedDelivery(item.delivery_id, "disabled", "endpoint disabled: it answered 410 Gone")
                )
            elif item.endpoint not in self._config.endpoints:
                closed.append(
                    ClosedDelivery(
                        item.delivery_id, "dead", f"endpoint {item.endpoint!r} is not configured any more"
                    )
                )
            elif item.created_at + self._max_age <= now:
                closed.append(
                    ClosedDelivery(item.delivery_id, "dead", self._gave_up(item.attempts, item.last_error))
                )
            else:
                due.append(item)
        close_deliveries(self._store, closed)
        tally.update(item.status for item in closed)
        return due

    def _gave_up(self, attempts: int, last_error: str | None) -> str:
        return (
            f"gave up after {attempts} attempt(s) in {self._config.max_age}: "
            f"{last_error or 'never attempted'}"
        )

    def _claim(self, item: DueDelivery, now: datetime) -> bool:
        # Hide the delivery from any other sender while its request is in flight; if this process
        # dies before recording the outcome, the delivery is due again when the claim runs out.
        timeout = self._config.endpoints[item.endpoint].timeout_s()
        until = now + timedelta(seconds=3 * timeout) + CLAIM_MARGIN
        return claim_delivery(self._store, item.delivery_id, now, until)

    def _defer(self, item: DueDelivery, until: datetime) -> None:
        defer_delivery(self._store, item.delivery_id, until)

    def _attempt(self, item: DueDelivery, now: datetime) -> _Outcome:
        endpoint = self._config.endpoints[item.endpoint]
        try:
            body = render_body(item.event_type, item.envelope, endpoint.format, item.msg_id)
            headers = webhook_headers(self._keys.get(item.endpoint), item.msg_id, now, body)
            response = self._client.post(
                endpoint.url, content=body, headers=headers, timeout=endpoint.timeout_s()
            )
        except httpx.TimeoutException as exc:
            return _Outcome(
                "retry",
                None,
                f"timed out after {endpoint.timeout}: {exc.__class__.__name__}",
            )
        except httpx.TransportError as exc:
            return _Outcome("retry", None, f"{exc.__class__.__name__}: {exc}")
        except Exception as exc:  # never lose the event to a bug or an odd URL: retry until max_age
            log.warning("webhook %s to %s failed unexpectedly: %r", item.msg_id, item.endpoint, exc)
            return _Outcome("retry", None, f"{exc.__class__.__name__}: {exc}")
        return classify(response, now)

    def _record(self, item: DueDelivery, outcome: _Outcome, now: datetime) -> str:
        """Store the outcome of one attempt; returns the tally key."""
        attempts = item.attempts + 1
        key: str = outcome.kind
        if outcome.kind == "gone":
            key = "disabled"
            reason = outcome.error or "HTTP 410"
            record_gone(
                self._store,
                item.delivery_id,
                attempts=attempts,
                status_code=outcome.status_code,
                reason=reason,
                now=now,
            )
        else:
            status: Literal["pending", "delivered", "dead"] = "dead"
            error, next_at = outcome.error, None
            if outcome.kind == "delivered":
                status = "delivered"
                self._waits.pop(item.endpoint, None)
            elif outcome.kind == "retry":
                delay = backoff_delay(
                    item.attempts, self._initial, self._max_backoff, self._config.jitter, self._rng
                )
                if outcome.retry_after is not None:
                    delay = max(delay, outcome.retry_after)
                next_at = now + delay
                if next_at >= item.created_at + self._max_age:
                    error = self._gave_up(attempts, outcome.error)
                    key = "dead"
                else:
                    status = "pending"
                    self._waits[item.endpoint] = next_at
                    key = "retrying"
            record_attempt(
                self._store,
                item.delivery_id,
                attempts=attempts,
                status=status,
                status_code=outcome.status_code,
                error=error,
                now=now,
                next_attempt_at=next_at if status == "pending" else None,
            )
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

    # --- reading ---------------------------------------------------------------------------------------

    def backlog(self) -> dict[str, int]:
        """Deliveries per status (every status present, zero when none)."""
        return count_by_status(self._store)


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
            summary = outbox_summary(self._store)
        except Exception as exc:
            log.warning("webhook metrics: store unreadable: %s", exc)
            return
        now = self._clock()
        disabled = summary.disabled
        names = sorted({*self._endpoints, *(row.endpoint for row in summary.by_status), *disabled})
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
        for row in summary.by_status:
            counts[(row.endpoint, row.status)] += row.deliveries
            tries[row.endpoint] += row.attempts
        oldest_at = summary.oldest_pending
        for name in names:
            for status in FINAL_STATUSES:
                finals.add_metric([name, status], float(counts[(name, status)]))
            backlog.add_metric([name], float(counts[(name, "pending")]))
            created = oldest_at.get(name)
            age.add_metric([name], max(0.0, now - created.timestamp()) if created is not None else 0.0)
            attempts.add_metric([name], float(tries[name]))
            off.add_metric([name], 1.0 if name in disabled else 0.0)
        yield from (finals, backlog, age, attempts, off)
