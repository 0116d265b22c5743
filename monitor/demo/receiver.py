"""The demo's webhook receiver: a real HTTP endpoint on loopback that checks every signature.

It does what a receiver in production should: verify the Standard Webhooks
signature over the raw body (and the timestamp), drop a ``webhook-id`` it has
already processed (delivery is at least once), and answer 2xx quickly.  Each
delivery becomes one line of ``webhooks.log``::

    2026-11-25T16:40:02Z  regression.confirmed  msg_3f..  signature ok  [model-monitor] Regression ...
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from monitor.exporters.webhooks import WebhookVerificationError, summarize_event, verify


class DemoReceiver:
    """Receives the monitor's webhooks on ``http://127.0.0.1:<port>/hooks`` and logs them."""

    def __init__(self, secret: str, log_path: Path, port: int = 0) -> None:
        self.secret = secret
        self.log_path = log_path
        self.seen: set[str] = set()
        self.lines: list[str] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = receiver.receive({k.lower(): v for k, v in self.headers.items()}, body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-receiver", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks"

    def start(self) -> DemoReceiver:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def receive(self, headers: dict[str, str], body: bytes) -> int:
        """Verify, de-duplicate and log one delivery; the HTTP status to answer."""
        msg_id = headers.get("webhook-id", "?")
        try:
            verify(self.secret, headers, body)
            verdict = "signature ok"
        except WebhookVerificationError as exc:
            verdict = f"REJECTED ({exc})"
        try:
            envelope = json.loads(body)
            event_type = str(envelope.get("type", "?"))
            text = summarize_event(event_type, envelope.get("data") or {})
        except (ValueError, AttributeError):
            event_type, text = "?", "(not JSON)"
        with self._lock:
            duplicate = msg_id in self.seen
            self.seen.add(msg_id)
            when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            note = "  (duplicate, ignored)" if duplicate else ""
            line = f"{when}  {event_type:<24} {msg_id[:14]:<14}  {verdict}{note}  {text}"
            self.lines.append(line)
            with self.log_path.open("a", encoding="utf-8") as log:
                log.write(line + "\n")
        return 401 if verdict.startswith("REJECTED") else 204
