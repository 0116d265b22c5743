"""Alert webhooks: the transactional outbox, Standard Webhooks signing and the retrying sender.

============  ===================================================================================
signing       secrets, signatures and :func:`verify` for receivers
render        the bodies: the versioned envelope, Slack's format, one-line summaries
outbox        :func:`enqueue_event` in the caller's transaction (rows: :mod:`monitor.store.outbox`)
sender        :class:`WebhookSender` (claim, POST, record) and its collector
============  ===================================================================================
"""

from monitor.exporters.webhooks.outbox import enqueue_event
from monitor.exporters.webhooks.render import render_body, summarize_event
from monitor.exporters.webhooks.sender import (
    WebhookCollector,
    WebhookSender,
    backoff_delay,
    parse_retry_after,
)
from monitor.exporters.webhooks.signing import (
    WebhookVerificationError,
    decode_secret,
    resolve_secrets,
    sign,
    verify,
    webhook_headers,
)
from monitor.store.outbox import enable_endpoint

__all__ = [
    "WebhookCollector",
    "WebhookSender",
    "WebhookVerificationError",
    "backoff_delay",
    "decode_secret",
    "enable_endpoint",
    "enqueue_event",
    "parse_retry_after",
    "render_body",
    "resolve_secrets",
    "sign",
    "summarize_event",
    "verify",
    "webhook_headers",
]
