"""Webhook bodies: the versioned ``standard`` envelope, Slack's text and blocks, one-line summaries."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from monitor.events import (
    DRIFT_DETECTED,
    RECOMMENDATION_CHANGED,
    REGRESSION_CONFIRMED,
    RELEASE_DISCOVERED,
    RUN_FAILED_REPEATEDLY,
    RUN_RECOVERED,
)

#: The version of the envelope every ``standard`` body carries.
PAYLOAD_VERSION = 1


# --- the envelope -----------------------------------------------------------------------------------


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


def build_envelope(event_type: str, payload: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The stored and sent form of an event: ``{"type", "timestamp", "data", "version"}``.

    JSON-unsafe values in ``payload`` are coerced (NaN and infinities become null,
    datetimes ISO strings, numpy scalars their Python values, anything else its ``str``).
    """
    return {
        "type": event_type,
        "timestamp": _iso(now),
        "data": _json_safe(payload),
        "version": PAYLOAD_VERSION,
    }


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
            if d.get("slice"):
                head += f" (slice {d['slice']})"
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
        elif event_type == RUN_RECOVERED:
            head = f"Runs recovered: job {d.get('job', '?')}, model {model} on {d.get('evalset', '?')}"
            if d.get("failures") is not None:
                head += f" succeeded after {d['failures']} failures in a row"
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
