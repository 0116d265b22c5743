"""Alert webhooks: Standard Webhooks signatures, the outbox, and delivery through a real HTTP receiver.

Everything runs on a real SQLite store and a real loopback receiver
(``tests/helpers/receiver.py``); time is a controlled clock passed as ``now``, so
backoffs and Retry-After are checked without sleeping.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlmodel import col

from monitor.config import WebhookEndpointConfig, WebhooksConfig
from monitor.errors import ConfigError
from monitor.events import (
    DRIFT_DETECTED,
    EVENT_TYPES,
    RECOMMENDATION_CHANGED,
    REGRESSION_CONFIRMED,
    RUN_FAILED_REPEATEDLY,
)
from monitor.exporters.webhooks import (
    WebhookCollector,
    WebhookSender,
    WebhookVerificationError,
    backoff_delay,
    decode_secret,
    enable_endpoint,
    enqueue_event,
    parse_retry_after,
    sign,
    summarize_event,
    verify,
)
from monitor.store import Store
from monitor.store.tables import WebhookDelivery, WebhookEndpointState, WebhookEvent
from tests.helpers import prom
from tests.helpers.receiver import Receiver, fail, gone, hang, ok, throttle

KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()
ENV = {"OPS_SECRET": SECRET, "RAW_SECRET": "a raw shared secret"}
T0 = datetime.now(timezone.utc).replace(microsecond=0)


# --- helpers ---------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(f"sqlite:///{tmp_path}/m.db")
    yield s
    s.close()


@pytest.fixture
def rx() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


def endpoint(url: str, **kw: Any) -> WebhookEndpointConfig:
    kw.setdefault("secret_env", "OPS_SECRET")
    kw.setdefault("timeout", "1s")
    return WebhookEndpointConfig(url=url, **kw)


def config(**endpoints: WebhookEndpointConfig | str) -> WebhooksConfig:
    settings = {k: v for k, v in endpoints.items() if isinstance(v, str)}
    hooks = {k: v for k, v in endpoints.items() if isinstance(v, WebhookEndpointConfig)}
    return WebhooksConfig(endpoints=hooks, **settings)  # type: ignore[arg-type]


def sender(store: Store, cfg: WebhooksConfig, **kw: Any) -> WebhookSender:
    return WebhookSender(store, cfg, rng=random.Random(7), env=ENV, **kw)


def enqueue(
    store: Store, n: int = 1, endpoints: tuple[str, ...] = ("ops",), now: datetime = T0, **data: Any
) -> list[str]:
    ids = []
    with store.session() as s:
        for i in range(n):
            payload = {
                "model": "router",
                "evalset": "routing",
                "metric": "acc",
                "delta": -0.1,
                "i": i,
                **data,
            }
            ids.append(enqueue_event(s, REGRESSION_CONFIRMED, payload, endpoints, now=now).event_id)
    return ids


def deliveries(store: Store) -> list[tuple[str, WebhookDelivery]]:
    with store.session() as s:
        rows = s.execute(
            select(col(WebhookEvent.event_id), WebhookDelivery)
            .join(WebhookEvent, col(WebhookDelivery.event_id) == col(WebhookEvent.id))
            .order_by(col(WebhookDelivery.id))
        ).all()
        return [(event_id, d) for event_id, d in rows]


def next_due(store: Store) -> datetime | None:
    with store.session() as s:
        value = s.execute(
            select(func.min(col(WebhookDelivery.next_attempt_at))).where(
                col(WebhookDelivery.status) == "pending"
            )
        ).scalar_one_or_none()
    return None if value is None else value.replace(tzinfo=timezone.utc)


def assert_signed(request: Any, secret: str | bytes = SECRET) -> None:
    sent_at = datetime.fromtimestamp(int(request.headers["webhook-timestamp"]), timezone.utc)
    verify(secret, request.headers, request.body, now=sent_at)


# --- signatures ------------------------------------------------------------------------------------


def test_signature_known_answer() -> None:
    # The Standard Webhooks specification's own example, computed here with hmac and base64.
    secret, msg_id, ts, body = (
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        '{"test": 2432232314}',
    )
    key = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    digest = hmac.new(key, f"{msg_id}.{ts}.{body}".encode(), hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(digest).decode()
    assert expected == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign(secret, msg_id, ts, body) == expected
    assert sign(secret, msg_id, datetime.fromtimestamp(ts, timezone.utc), body.encode()) == expected
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": expected}
    verify(secret, headers, body, now=datetime.fromtimestamp(ts + 10, timezone.utc))


def test_secret_forms() -> None:
    assert decode_secret(SECRET) == KEY
    assert decode_secret(SECRET.rstrip("=")) == KEY  # unpadded base64 is accepted
    assert decode_secret("plain secret") == b"plain secret"
    assert decode_secret(b"\x00\x01") == b"\x00\x01"
    for bad in ("", "whsec_", "whsec_not*base64!"):
        with pytest.raises(ValueError):
            decode_secret(bad)


def test_verify_rejects_tampering_and_stale_timestamps() -> None:
    body = b'{"type":"drift.detected","data":{}}'
    good = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(T0.timestamp())),
        "webhook-signature": sign(SECRET, "msg_1", T0, body),
    }
    verify(SECRET, good, body, now=T0)
    verify(SECRET, {k.upper(): v for k, v in good.items()}, body, now=T0)  # header names are case-insensitive
    rotated = {**good, "webhook-signature": f"v1a,xyz v1,{'A' * 44} {good['webhook-signature']}"}
    verify(SECRET, rotated, body, now=T0)  # any one of several signatures may match
    bad_cases: list[tuple[str, dict[str, str], bytes, datetime]] = [
        ("tampered body", good, body.replace(b"{}", b'{"x":1}'), T0),
        ("other id", {**good, "webhook-id": "msg_2"}, body, T0),
        ("other timestamp", {**good, "webhook-timestamp": str(int(T0.timestamp()) + 1)}, body, T0),
        ("too old", good, body, T0 + timedelta(minutes=5, seconds=1)),
        ("from the future", good, body, T0 - timedelta(minutes=5, seconds=1)),
        ("no signature", {k: v for k, v in good.items() if k != "webhook-signature"}, body, T0),
        ("garbled timestamp", {**good, "webhook-timestamp": "soon"}, body, T0),
        (
            "only other versions",
            {**good, "webhook-signature": "v2," + good["webhook-signature"][3:]},
            body,
            T0,
        ),
    ]
    for what, headers, payload, now in bad_cases:
        with pytest.raises(WebhookVerificationError):
            verify(SECRET, headers, payload, now=now)
            pytest.fail(f"accepted: {what}")
    with pytest.raises(WebhookVerificationError):
        verify("whsec_" + base64.b64encode(b"another key").decode(), good, body, now=T0)


def test_the_reference_library_verifies_our_requests(store: Store, rx: Receiver) -> None:
    standardwebhooks = pytest.importorskip("standardwebhooks")
    cfg = config(ops=endpoint(rx.url), raw=endpoint(rx.url, secret_env="RAW_SECRET"))
    ids = enqueue(store, 1, ("ops", "raw"), now=datetime.now(timezone.utc))
    with sender(store, cfg) as out:
        assert out.deliver_due(datetime.now(timezone.utc)).delivered == 2
    by_key = {
        "ops": standardwebhooks.Webhook(SECRET),
        "raw": standardwebhooks.Webhook(ENV["RAW_SECRET"].encode()),
    }
    requests = rx.requests
    assert len(requests) == 2
    for request, name in zip(requests, ("ops", "raw"), strict=True):
        parsed = by_key[name].verify(request.body, request.headers)
        assert parsed["type"] == REGRESSION_CONFIRMED and request.webhook_id == ids[0]


# --- the outbox ------------------------------------------------------------------------------------


def test_an_event_whose_transaction_rolls_back_is_never_sent(store: Store, rx: Receiver) -> None:
    with pytest.raises(RuntimeError), store.session() as s:
        enqueue_event(s, DRIFT_DETECTED, {"model": "router"}, ["ops"], now=T0)
        raise RuntimeError("the verdict could not be written")
    kept = enqueue(store, 1, now=T0, when=T0, nan=float("nan"))
    with sender(store, config(ops=endpoint(rx.url))) as out:
        counts = out.deliver_due(T0)
    assert (counts.due, counts.delivered) == (1, 1)
    [request] = rx.requests
    assert request.webhook_id == kept[0] and request.path == "/hook"
    assert request.headers["content-type"] == "application/json"
    assert_signed(request)
    body = request.json()
    assert set(body) == {"type", "timestamp", "data", "version"}
    assert body["type"] == REGRESSION_CONFIRMED and body["version"] == 1
    assert body["timestamp"] == T0.isoformat().replace("+00:00", "Z")
    assert body["data"]["model"] == "router" and body["data"]["nan"] is None
    assert body["data"]["when"] == body["timestamp"]
    with store.session() as s:
        assert s.execute(select(func.count()).select_from(WebhookEvent)).scalar_one() == 1


def test_every_event_arrives_through_failures_throttling_and_an_outage(store: Store, rx: Receiver) -> None:
    ids = enqueue(store, 3)
    rx.script(fail(500), throttle(120), hang(5))
    with sender(store, config(ops=endpoint(rx.url))) as out:
        first = out.deliver_due(T0)  # 500: one attempt, the others wait with it
        assert (first.retrying, first.deferred, len(rx.requests)) == (1, 2, 1)
        t1 = next_due(store)
        assert t1 is not None and T0 < t1 <= T0 + timedelta(seconds=2)

        assert out.deliver_due(t1).retrying == 1  # 429 with Retry-After: 120
        t2 = next_due(store)
        assert t2 is not None and t2 >= t1 + timedelta(seconds=120)
        late = enqueue(store, 1, now=t1 + timedelta(seconds=30))
        for now in (t1 + timedelta(seconds=30), t1 + timedelta(seconds=119)):
            assert out.deliver_due(now).attempted == 0  # nothing before Retry-After, new events neither
        assert len(rx.requests) == 2

        rx.down()
        assert out.deliver_due(t2).retrying == 1  # connection refused
        assert len(rx.requests) == 2
        rx.up()
        t3 = next_due(store)
        assert t3 is not None and t3 > t2
        started = time.monotonic()
        assert out.deliver_due(t3).retrying == 1  # the receiver got it, but answered too late
        assert time.monotonic() - started < 4  # the 1 s timeout, not the 5 s hang
        assert len(rx.requests) == 3

        t4 = next_due(store)
        assert t4 is not None
        done = out.deliver_due(t4)
        assert (done.delivered, done.retrying) == (4, 0)
        assert out.backlog() == {"pending": 0, "delivered": 4, "dead": 0, "disabled": 0}

    requests = rx.requests
    assert {r.webhook_id for r in requests} == {*ids, *late}  # none lost
    bodies: dict[str, bytes] = {}
    for request in requests:
        assert_signed(request)
        assert (
            bodies.setdefault(request.webhook_id, request.body) == request.body
        )  # a duplicate is the same event
    assert [r.webhook_id for r in requests].count(ids[0]) == 4
    [(_, d)] = [(e, d) for e, d in deliveries(store) if e == ids[0]]
    assert d.attempts == 4 and d.last_status_code == 200 and "timed out" in (d.last_error or "")


def test_backoff_doubles_up_to_its_ceiling_and_retry_after_wins_when_longer() -> None:
    no_jitter = random.Random(0)
    two, cap = timedelta(seconds=2), timedelta(minutes=10)
    assert [backoff_delay(a, two, cap, 0.0, no_jitter).total_seconds() for a in range(10)] == [
        2, 4, 8, 16, 32, 64, 128, 256, 512, 600,
    ]  # fmt: skip
    assert backoff_delay(10_000, two, cap, 0.0, no_jitter) == cap
    drawn = [backoff_delay(3, two, cap, 1.0, random.Random(i)).total_seconds() for i in range(50)]
    assert all(0 < d <= 16 for d in drawn) and len(set(drawn)) > 40
    assert parse_retry_after("120", T0) == timedelta(seconds=120)
    assert parse_retry_after(format_datetime(T0 + timedelta(seconds=90), usegmt=True), T0) == timedelta(
        seconds=90
    )
    assert parse_retry_after(format_datetime(T0 - timedelta(seconds=90), usegmt=True), T0) == timedelta(0)
    assert parse_retry_after("-3", T0) is None and parse_retry_after("whenever", T0) is None


def test_retry_after_as_an_http_date_is_honoured(store: Store, rx: Receiver) -> None:
    enqueue(store, 1)
    rx.script(throttle(format_datetime(T0 + timedelta(minutes=7), usegmt=True)))
    with sender(store, config(ops=endpoint(rx.url))) as out:
        out.deliver_due(T0)
    assert next_due(store) == T0 + timedelta(minutes=7)


def test_410_disables_the_endpoint_and_stops_sending_to_it(store: Store) -> None:
    with Receiver(default=gone()) as removed, Receiver() as chat:
        cfg = config(ops=endpoint(removed.url), chat=endpoint(chat.url))
        enqueue(store, 2, ("ops", "chat"))
        with sender(store, cfg) as out:
            counts = out.deliver_due(T0)
            assert (counts.delivered, counts.disabled) == (2, 1)
            assert len(removed.requests) == 1 and len(chat.requests) == 2
            with store.session() as s:
                state = s.get(WebhookEndpointState, "ops")
                assert state is not None and state.disabled_at is not None and "410" in (state.reason or "")
            statuses = [d.status for _, d in deliveries(store) if d.endpoint == "ops"]
            assert statuses == ["disabled", "disabled"]

            enqueue(store, 1, ("ops", "chat"), now=T0 + timedelta(minutes=1))
            assert out.deliver_due(T0 + timedelta(minutes=1)).delivered == 1
            assert len(removed.requests) == 1
            assert out.backlog() == {"pending": 0, "delivered": 3, "dead": 0, "disabled": 3}

            removed.default = ok()
            assert enable_endpoint(store, "ops") and not enable_endpoint(store, "ops")
            enqueue(store, 1, ("ops",), now=T0 + timedelta(minutes=2))
            assert out.deliver_due(T0 + timedelta(minutes=2)).delivered == 1
            assert len(removed.requests) == 2


def test_a_request_that_cannot_succeed_is_dead_at_once_but_408_is_retried(store: Store, rx: Receiver) -> None:
    enqueue(store, 2)
    rx.script(fail(400, b"unknown field 'data'"), fail(408, b""))
    with sender(store, config(ops=endpoint(rx.url))) as out:
        counts = out.deliver_due(T0)
    assert (counts.dead, counts.retrying) == (1, 1)  # a 400 does not hold the endpoint back
    (_, dead), (_, retried) = deliveries(store)
    assert dead.status == "dead" and dead.last_status_code == 400
    assert dead.last_error == "HTTP 400: unknown field 'data'"
    assert retried.status == "pending" and retried.attempts == 1


def test_a_delivery_past_max_age_becomes_a_dead_letter_with_its_last_error(store: Store) -> None:
    with Receiver(default=fail(503, b"maintenance")) as down:
        cfg = config(ops=endpoint(down.url), max_age="1h")
        [event_id] = enqueue(store, 1)
        with sender(store, cfg) as out:
            now: datetime | None = T0
            for _ in range(200):
                assert now is not None
                out.deliver_due(now)
                now = next_due(store)
                if now is None:
                    break
            assert now is None, "still pending after 200 passes"
        [(_, d)] = deliveries(store)
        assert d.status == "dead" and d.last_status_code == 503
        assert d.last_error is not None and d.last_error.startswith("gave up after")
        assert "HTTP 503: maintenance" in d.last_error
        assert d.attempts == len(down.requests) > 5
        sent = [int(r.headers["webhook-timestamp"]) for r in down.requests]
        assert max(sent) < T0.timestamp() + 3600 and all(r.webhook_id == event_id for r in down.requests)


def test_an_event_older_than_max_age_is_not_sent_at_all(store: Store, rx: Receiver) -> None:
    enqueue(store, 1)
    with sender(store, config(ops=endpoint(rx.url))) as out:
        counts = out.deliver_due(T0 + timedelta(hours=25))
    assert counts.dead == 1 and rx.requests == []
    [(_, d)] = deliveries(store)
    assert d.status == "dead" and d.last_error == "gave up after 0 attempt(s) in 24h: never attempted"


class Crash(BaseException):
    """Stands for the process dying (kill -9) between a POST and the record of its answer."""


class CrashAfterSending(httpx.BaseTransport):
    """A real transport that dies once the receiver has answered its first request."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        response.read()
        raise Crash

    def close(self) -> None:
        self._inner.close()


def test_a_new_sender_continues_where_a_crashed_one_stopped(store: Store, rx: Receiver) -> None:
    cfg = config(ops=endpoint(rx.url))
    ids = enqueue(store, 3)
    with sender(store, cfg, transport=CrashAfterSending()) as crashing, pytest.raises(Crash):
        crashing.deliver_due(T0)
    assert [r.webhook_id for r in rx.requests] == ids[:1]

    with sender(store, cfg) as restarted:
        # The crashed attempt's claim hides the first event for a while (3 x timeout + 30 s).
        assert restarted.deliver_due(T0 + timedelta(seconds=1)).delivered == 2
        assert restarted.deliver_due(T0 + timedelta(seconds=20)).attempted == 0
        assert restarted.deliver_due(T0 + timedelta(seconds=34)).delivered == 1
    with sender(store, cfg) as again:
        assert again.deliver_due(T0 + timedelta(hours=1)).due == 0
    received = [r.webhook_id for r in rx.requests]
    assert received == [ids[0], ids[1], ids[2], ids[0]]  # the one duplicate keeps its webhook-id


def test_batches_are_bounded(store: Store, rx: Receiver) -> None:
    enqueue(store, 5)
    with sender(store, config(ops=endpoint(rx.url), batch_size="2")) as out:
        assert [out.deliver_due(T0).delivered for _ in range(4)] == [2, 2, 1, 0]


def test_an_endpoint_removed_from_the_configuration_gets_its_deliveries_closed(
    store: Store, rx: Receiver
) -> None:
    enqueue(store, 1, ("ops", "retired"))
    with sender(store, config(ops=endpoint(rx.url))) as out:
        counts = out.deliver_due(T0)
    assert (counts.delivered, counts.dead) == (1, 1)
    dead = [d for _, d in deliveries(store) if d.endpoint == "retired"]
    assert dead[0].status == "dead" and "not configured" in (dead[0].last_error or "")


def test_a_broken_store_is_reported_not_raised(store: Store, rx: Receiver) -> None:
    enqueue(store, 1)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE webhook_deliveries")
    with sender(store, config(ops=endpoint(rx.url))) as out:
        counts = out.deliver_due(T0)
    assert counts.error is not None and "webhook_deliveries" in counts.error
    assert rx.requests == []
    registry = CollectorRegistry()
    registry.register(WebhookCollector(store, endpoints=["ops"]))
    assert registry.get_sample_value("monitor_webhook_backlog", {"endpoint": "ops"}) is None


# --- Slack ------------------------------------------------------------------------------------------


def test_slack_endpoints_get_one_readable_line_signed_all_the_same(store: Store, rx: Receiver) -> None:
    cfg = config(
        slack=endpoint(rx.url, format="slack"),
        unsigned=endpoint(rx.url, format="slack", secret_env=None),
    )
    data = {
        "model": "router",
        "previous_action": "keep",
        "action": "retrain",
        "summary": "accuracy fell 12 points",
    }
    with store.session() as s:
        event = enqueue_event(
            s, RECOMMENDATION_CHANGED, data, cfg.endpoints_for(RECOMMENDATION_CHANGED), now=T0
        )
    with sender(store, cfg) as out:
        assert out.deliver_due(T0).delivered == 2
    signed, unsigned = rx.requests
    expected = "[model-monitor] Recommendation for router: keep → retrain: accuracy fell 12 points"
    for request in (signed, unsigned):
        body = request.json()
        assert body["text"] == expected
        assert body["blocks"][0]["text"]["text"] == expected
        assert event.event_id in body["blocks"][1]["elements"][0]["text"]
        assert request.webhook_id == event.event_id and "webhook-timestamp" in request.headers
    assert_signed(signed)
    assert "webhook-signature" not in unsigned.headers


def test_summaries_read_well_and_never_fail() -> None:
    line = summarize_event(
        REGRESSION_CONFIRMED,
        {
            "model": "m",
            "evalset": "golden",
            "metric": "acc",
            "delta": -0.081,
            "ci_low": -0.12,
            "ci_high": -0.04,
        },
    )
    assert line == "[model-monitor] Regression confirmed: m on golden, acc -0.081 (95% CI -0.120 to -0.040)"
    assert summarize_event(
        DRIFT_DETECTED, {"model": "m", "kind": "input", "source": "tickets", "score": 0.31}
    ) == ("[model-monitor] Drift detected: m, input drift on tickets (score 0.310)")
    assert summarize_event(
        RUN_FAILED_REPEATEDLY, {"model": "m", "job": "nightly", "failures": 3, "error": "CUDA OOM\ntrace"}
    ) == ("[model-monitor] Runs failing: job nightly, model m, 3 failures in a row: CUDA OOM")
    assert summarize_event(REGRESSION_CONFIRMED, {"metric": "acc", "delta": "n/a"}).startswith(
        "[model-monitor]"
    )
    assert summarize_event("something.else", {}) == "[model-monitor] something.else: ?"


# --- the thread -------------------------------------------------------------------------------------


def test_run_forever_delivers_when_woken_and_stops_promptly(store: Store, rx: Receiver) -> None:
    out = sender(store, config(ops=endpoint(rx.url), poll_interval="1m"))
    stop = threading.Event()
    thread = threading.Thread(target=out.run_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        [event_id] = enqueue(store, 1, now=datetime.now(timezone.utc))
        out.wake()
        deadline = time.monotonic() + 5
        while not rx.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [r.webhook_id for r in rx.requests] == [event_id]
    finally:
        stopped = time.monotonic()
        stop.set()
        thread.join(timeout=5)
        out.close()
    assert not thread.is_alive() and time.monotonic() - stopped < 2


# --- metrics ----------------------------------------------------------------------------------------


def test_collector_values_and_promtool(store: Store) -> None:
    with (
        Receiver() as good,
        Receiver(default=fail(422)) as rejecting,
        Receiver(default=gone()) as removed,
        Receiver(default=fail(502)) as flaky,
    ):
        cfg = config(
            ok=endpoint(good.url),
            bad=endpoint(rejecting.url),
            gone=endpoint(removed.url),
            slow=endpoint(flaky.url),
        )
        enqueue(store, 2, ("ok", "bad", "gone", "slow"))
        with sender(store, cfg) as out:
            out.deliver_due(T0)
    registry = CollectorRegistry()
    registry.register(
        WebhookCollector(store, endpoints=[*cfg.endpoints, "idle"], clock=lambda: T0.timestamp() + 90)
    )

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    finals = {
        (e, s): value("monitor_webhook_deliveries_total", endpoint=e, status=s)
        for e in ("ok", "bad", "gone", "slow", "idle")
        for s in ("delivered", "dead", "disabled")
    }
    assert {k: v for k, v in finals.items() if v} == {
        ("ok", "delivered"): 2.0,
        ("bad", "dead"): 2.0,
        ("gone", "disabled"): 2.0,
    }
    assert all(v == 0.0 for v in finals.values() if not v)  # every series exists, zero included
    assert value("monitor_webhook_backlog", endpoint="slow") == 2.0
    assert value("monitor_webhook_backlog", endpoint="ok") == 0.0
    assert value("monitor_webhook_oldest_pending_age_seconds", endpoint="slow") == 90.0
    assert value("monitor_webhook_oldest_pending_age_seconds", endpoint="ok") == 0.0
    # ok and bad: one attempt each; gone: one (the other closed by the 410); slow: one (the other deferred).
    assert [value("monitor_webhook_attempts_total", endpoint=e) for e in ("ok", "bad", "gone", "slow", "idle")] == [
        2.0, 2.0, 1.0, 1.0, 0.0,
    ]  # fmt: skip
    assert value("monitor_webhook_endpoint_disabled", endpoint="gone") == 1.0
    assert value("monitor_webhook_endpoint_disabled", endpoint="ok") == 0.0

    text = generate_latest(registry)
    promtool = prom.require_binary("promtool")
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


# --- configuration ----------------------------------------------------------------------------------


def test_configuration_schema() -> None:
    cfg = WebhooksConfig.model_validate(
        {
            "endpoints": {
                "ops": {"url": "https://hooks.example.com/monitor", "secret_env": "OPS_SECRET"},
                "chat": {
                    "url": "https://hooks.slack.com/services/T/B/X",
                    "format": "slack",
                    "events": [DRIFT_DETECTED],
                },
            }
        }
    )
    assert (cfg.max_age, cfg.initial_backoff, cfg.max_backoff, cfg.jitter) == (
        timedelta(hours=24),
        timedelta(seconds=2),
        timedelta(minutes=10),
        1.0,
    )
    assert (cfg.batch_size, cfg.poll_interval, cfg.endpoints["ops"].timeout) == (
        50,
        timedelta(seconds=5),
        timedelta(seconds=5),
    )
    assert cfg.endpoints["ops"].format == "standard" and cfg.endpoints["ops"].events is None
    assert cfg.endpoints_for(DRIFT_DETECTED) == ["ops", "chat"]
    assert cfg.endpoints_for(RECOMMENDATION_CHANGED) == ["ops"]
    assert set(EVENT_TYPES) == {
        RECOMMENDATION_CHANGED,
        REGRESSION_CONFIRMED,
        DRIFT_DETECTED,
        RUN_FAILED_REPEATEDLY,
        "run.recovered",
        "judge.drifted",
        "release.discovered",
    }
    with pytest.raises(ValidationError):
        cfg.batch_size = 3  # type: ignore[misc]

    wrong = [
        ({"endpoints": {"a": {"url": "https://x", "secret_env": "S", "colour": "red"}}}, "colour"),
        ({"endpoints": {"a": {"url": "ftp://x", "secret_env": "S"}}}, "http(s) URL"),
        ({"endpoints": {"a": {"url": "https://x"}}}, "needs 'secret_env'"),
        (
            {"endpoints": {"a": {"url": "https://x", "secret_env": "S", "events": ["run.started"]}}},
            "unknown event",
        ),
        ({"endpoints": {"a": {"url": "https://x", "secret_env": "S", "timeout": "soon"}}}, "not an interval"),
        ({"endpoints": {"a b": {"url": "https://x", "secret_env": "S"}}}, "pattern"),
        ({"initial_backoff": "1m", "max_backoff": "30s"}, "max_backoff"),
        ({"jitter": 1.5}, "jitter"),
    ]
    for data, message in wrong:
        with pytest.raises(ValidationError, match=re.escape(message)):
            WebhooksConfig.model_validate(data)


def test_missing_secrets_are_config_errors_with_their_location(store: Store) -> None:
    cfg = config(ops=endpoint("https://x/hook"), other=endpoint("https://y/hook", secret_env="OTHER"))
    with pytest.raises(ConfigError) as info:
        WebhookSender(store, cfg, env={"OPS_SECRET": "whsec_!!"})
    assert [str(p) for p in info.value.problems] == [
        "webhooks.endpoints.ops.secret_env: OPS_SECRET: the part after 'whsec_' is not base64",
        "webhooks.endpoints.other.secret_env: environment variable OTHER is not set",
    ]


def test_stored_events_carry_their_envelope_version(store: Store) -> None:
    enqueue(store, 1)
    with store.session() as s:
        event = s.execute(select(WebhookEvent)).scalar_one()
    assert event.payload["version"] == 1 and event.event_id.startswith("msg_") and len(event.event_id) == 36
    assert json.loads(json.dumps(event.payload)) == event.payload
