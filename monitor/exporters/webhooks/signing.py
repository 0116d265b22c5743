"""Standard Webhooks signing: secrets, signatures, verification (receivers use :func:`verify`)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import os
from collections.abc import Mapping
from datetime import datetime, timedelta

from monitor.config import WebhooksConfig
from monitor.errors import ConfigError, MonitorError, Problem
from monitor.store.tables import utcnow

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE = timedelta(minutes=5)


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
