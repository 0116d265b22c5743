"""A real webhook receiver on loopback, scripted per request, that records everything it gets.

``Receiver`` runs a ``ThreadingHTTPServer`` on 127.0.0.1 (port 0 the first
time) and answers each request with the next scripted :class:`Reply`, or with
``default`` once the script is used up::

    with Receiver() as rx:
        rx.script(fail(500), throttle(30), gone(), hang(5), ok())
        ...
        rx.down()   # connections are refused
        rx.up()     # the same port again
        rx.requests # every request received, with its headers and raw body

A hung request is recorded when it arrives, then left unanswered until the
hang ends or the receiver stops, so the sender times out after the receiver
saw it: the way a duplicate delivery happens.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    """How to answer one request: a status, headers and a body, after hanging ``hang_s`` seconds."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    hang_s: float = 0.0


def ok(status: int = 200) -> Reply:
    return Reply(status)


def fail(status: int = 500, body: bytes = b"internal error") -> Reply:
    return Reply(status, body=body)


def throttle(retry_after: str | int) -> Reply:
    """429 Too Many Requests with ``Retry-After`` (seconds or an HTTP date)."""
    return Reply(429, headers=(("Retry-After", str(retry_after)),), body=b"slow down")


def gone() -> Reply:
    return Reply(410, body=b"this hook was removed")


def hang(seconds: float) -> Reply:
    """Take ``seconds`` before answering 200 (past the sender's timeout)."""
    return Reply(200, hang_s=seconds)


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as it arrived: method, path, headers (lower-case names) and the raw body."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int
    received_at: float = field(default_factory=time.time)

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A scripted HTTP receiver on 127.0.0.1; see the module docstring."""

    def __init__(self, default: Reply | None = None) -> None:
        self.default = default or ok()
        self._script: deque[Reply] = deque()
        self._requests: list[ReceivedRequest] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self.port = 0
        self.up()

    # --- lifecycle ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def is_up(self) -> bool:
        return self._server is not None

    def up(self) -> None:
        """Start serving (again, on the same port after :meth:`down`)."""
        if self._server is not None:
            return
        self._release.clear()
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def down(self) -> None:
        """Stop serving and close the port: connections are refused until :meth:`up`."""
        server, self._server = self._server, None
        if server is None:
            return
        self._release.set()  # end hung requests
        server.shutdown()
        server.server_close()
        with self._lock:  # and kept-alive connections, or a pooled client would still get through
            connections, self._connections = self._connections, set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # --- scripting and records ---------------------------------------------------------------------

    def script(self, *replies: Reply | Iterable[Reply]) -> None:
        """Queue replies for the next requests, in order."""
        with self._lock:
            for reply in replies:
                self._script.extend([reply] if isinstance(reply, Reply) else reply)

    @property
    def pending_script(self) -> int:
        with self._lock:
            return len(self._script)

    @property
    def requests(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def _next_reply(self) -> Reply:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    def _record(self, request: ReceivedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with receiver._lock:
                    receiver._connections.add(self.connection)

            def finish(self) -> None:
                with receiver._lock:
                    receiver._connections.discard(self.connection)
                with contextlib.suppress(OSError):
                    super().finish()

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                reply = receiver._next_reply()
                receiver._record(
                    ReceivedRequest(
                        self.command,
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                        reply.status,
                    )
                )
                if reply.hang_s and receiver._release.wait(reply.hang_s):
                    self.close_connection = True
                    return
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers:
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except OSError:  # the client gave up (it timed out)
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
