"""The daemon's HTTP endpoints: ``/metrics``, ``/healthz``, ``/readyz`` and a small JSON API.

``GET /api/v1/status``, ``/api/v1/runs``, ``/api/v1/runs/<id>/items`` (each item with the
prompt it was scored on), ``/api/v1/fires`` (each job fire: its planned runs and whether its
after-job work ran), ``/api/v1/recommendations``; ``POST /api/v1/jobs/<job>/run``.

``/api/v1/*`` requires ``Authorization: Bearer <token>`` when the token's
environment variable is set; ``/metrics`` and the health checks stay open, as
Prometheus scrapers and orchestrators expect.  The server binds 127.0.0.1
unless configured otherwise.

The surface is hardened for a port that anything on the network may reach:

- every socket read has a timeout (``timeout_s``), so a client that sends half a
  request, or nothing, holds its connection for that long at most;
- at most ``max_connections`` requests are served at once; one more is answered
  ``503`` at once and closed, without a thread;
- a request body over ``max_body_bytes`` is refused with ``413`` unread;
- the access log never shows a query string's values (tokens passed in the URL);
- names echoed back in errors are cut to :data:`ECHO_CHARS` characters.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import re
import sys
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from monitor.api.views import json_default, recommendation_to_dict, run_to_dict, status_entries
from monitor.errors import NotFoundError

log = logging.getLogger("monitor.api.server")
StartResponse = Callable[..., Any]
_RUN_JOB = re.compile(r"^/api/v1/jobs/([A-Za-z0-9][A-Za-z0-9_.-]*)/run$")
_RUN_ITEMS = re.compile(r"^/api/v1/runs/([0-9]{1,18})/items$")
_QUERY_VALUE = re.compile(r"=[^&\s]*")
#: Characters of a client-supplied name or path echoed back in an error.
ECHO_CHARS = 80
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_MAX_BODY_BYTES = 64 * 1024
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\nRetry-After: 1\r\n\r\n"
)


def _echo(text: str) -> str:
    """A client-supplied string, cut for an error message."""
    return text if len(text) <= ECHO_CHARS else f"{text[:ECHO_CHARS]}... ({len(text)} characters)"


def redact_query(text: str) -> str:
    """``GET /x?token=abc&limit=5 HTTP/1.1`` -> ``GET /x?token=...&limit=... HTTP/1.1``: keys stay, values go."""
    head, sep, rest = text.partition("?")
    if not sep:
        return text
    query, space, tail = rest.partition(" ")
    return f"{head}?{_QUERY_VALUE.sub('=...', query)}{space}{tail}"


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    max_connections = DEFAULT_MAX_CONNECTIONS

    def server_activate(self) -> None:
        super().server_activate()
        self._slots = threading.BoundedSemaphore(self.max_connections)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Refuse before a thread is started: a flood of idle connections costs a send and a close each.
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.sendall(_BUSY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out or went away is routine; anything else is worth a line, not a traceback.
        exc = sys.exc_info()[1]
        if isinstance(exc, TimeoutError | ConnectionError):
            log.debug("connection from %s closed: %s", client_address, type(exc).__name__)
        else:
            log.warning("error handling a request from %s: %r", client_address, exc)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _QuietHandler(WSGIRequestHandler):
    #: Seconds any one read of the request may wait (``StreamRequestHandler`` sets it on the socket).
    timeout = DEFAULT_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), redact_query(format % args))


class MonitorApp:
    """The WSGI application; ``daemon`` may be None (metrics-only, for tests and ``monitor serve``)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        store: Any,
        daemon: Any = None,
        token: str | None = None,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self.registry = registry
        self.store = store
        self.daemon = daemon
        self.token = token or None
        self.max_body_bytes = max_body_bytes

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return _json(start_response, "400 Bad Request", {"error": "Content-Length is not a number"})
        if length > self.max_body_bytes:
            return _json(
                start_response,
                "413 Content Too Large",
                {"error": f"request body of {length} bytes; at most {self.max_body_bytes}"},
            )
        try:
            if path == "/metrics" and method in ("GET", "HEAD"):
                return _respond(start_response, "200 OK", generate_latest(self.registry), CONTENT_TYPE_LATEST)
            if path == "/healthz":
                return _json(start_response, "200 OK", {"status": "ok"})
            if path == "/readyz":
                return self._ready(start_response)
            if path.startswith("/api/"):
                if not self._authorized(environ):
                    return _json(
                        start_response, "401 Unauthorized", {"error": "missing or wrong bearer token"},
                        [("WWW-Authenticate", 'Bearer realm="model-monitor"')],
                    )  # fmt: skip
                return self._api(path, method, environ, start_response)
            return _json(start_response, "404 Not Found", {"error": f"no such endpoint: {_echo(path)}"})
        except Exception as exc:  # an endpoint must answer, never take the daemon down
            log.exception("error serving %s", path)
            return _json(start_response, "500 Internal Server Error", {"error": type(exc).__name__})

    def _authorized(self, environ: dict[str, Any]) -> bool:
        if self.token is None:
            return True
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode())

    def _ready(self, start_response: StartResponse) -> Iterable[bytes]:
        if self.daemon is not None:
            ok, checks = self.daemon.ready()
        else:
            checks = {"store": self.store.ping()}
            ok = all(checks.values())
        status = "200 OK" if ok else "503 Service Unavailable"
        return _json(start_response, status, {"ready": ok, "checks": checks})

    def _api(
        self, path: str, method: str, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        if path == "/api/v1/status" and method == "GET":
            body: dict[str, Any] = {"series": status_entries(self.store)}
            if self.daemon is not None:
                body["jobs"] = {
                    name: {"next_fire": when, "interval_s": self.daemon.job_intervals.get(name)}
                    for name, when in self.daemon.timer.jobs().items()
                }
                body["queued"] = self.daemon.queued_jobs()
                body["running_job"] = self.daemon.current_job
            return _json(start_response, "200 OK", body)
        if path == "/api/v1/runs" and method == "GET":
            try:
                limit = min(1000, max(1, int(query.get("limit", "100"))))
            except ValueError:
                return _json(start_response, "400 Bad Request", {"error": "limit must be an integer"})
            runs = self.store.runs(
                model=query.get("model"),
                evalset=query.get("evalset"),
                status=query.get("status"),
                limit=limit,
            )
            return _json(start_response, "200 OK", {"runs": [run_to_dict(r, name) for r, name in runs]})
        if path == "/api/v1/recommendations" and method == "GET":
            latest = self.store.latest_recommendations()
            return _json(
                start_response,
                "200 OK",
                {"recommendations": [recommendation_to_dict(r, name) for r, name in latest]},
            )
        if path == "/api/v1/fires" and method == "GET":
            try:
                limit = min(1000, max(1, int(query.get("limit", "100"))))
            except ValueError:
                return _json(start_response, "400 Bad Request", {"error": "limit must be an integer"})
            fires = self.store.fires(job=query.get("job"), limit=limit)
            return _json(start_response, "200 OK", {"fires": [_fire_to_dict(f) for f in fires]})
        items = _RUN_ITEMS.match(path)
        if items and method == "GET":
            return self._run_items(int(items.group(1)), start_response)
        match = _RUN_JOB.match(path)
        if match and method == "POST":
            job = match.group(1)
            if self.daemon is None:
                return _json(
                    start_response,
                    "409 Conflict",
                    {
                        "error": f"this server runs no jobs (monitor serve): run {_echo(job)!r} "
                        "with monitor run JOB --slot"
                    },
                )
            if job not in self.daemon.config.jobs:
                return _json(start_response, "404 Not Found", {"error": f"unknown job {_echo(job)!r}"})
            from monitor.service.daemon import WorkItem

            queued = self.daemon.enqueue(WorkItem(job, "manual", None))
            return _json(start_response, "202 Accepted", {"job": job, "queued": queued})
        return _json(
            start_response, "404 Not Found", {"error": f"no such endpoint: {_echo(method)} {_echo(path)}"}
        )

    def _run_items(self, run_id: int, start_response: StartResponse) -> Iterable[bytes]:
        """One run's items: prediction, target, scores, error, and what the model was given
        (the exact prompt, the conversation sent), every sample and the filtered outputs."""
        try:
            self.store.get_run(run_id)
        except NotFoundError:
            return _json(start_response, "404 Not Found", {"error": f"no run {run_id}"})
        details = self.store.item_details(run_id)
        rows = [
            {
                "id": r.item_id,
                "prediction": r.prediction,
                "target": r.target,
                "correct": r.correct,
                "score": r.score,
                "scores": r.scores,
                "error": r.error,
                **details.get(r.item_id, {}),
            }
            for r in self.store.item_results(run_id)
        ]
        return _json(start_response, "200 OK", {"run": run_id, "items": rows})


def _fire_to_dict(fire: Any) -> dict[str, Any]:
    """A job fire as the API shows it: what it planned, and whether its after-job work ran."""
    return {
        "id": fire.id,
        "job": fire.job,
        "trigger": fire.trigger,
        "scheduled_for": fire.scheduled_for,
        "status": fire.status,
        "planned": fire.planned,
        "created_at": fire.created_at,
        "started_at": fire.started_at,
        "after_job_at": fire.after_job_at,
        "finished_at": fire.finished_at,
        "error": fire.error,
    }


def _respond(
    start_response: StartResponse,
    status: str,
    body: bytes,
    content_type: str,
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    start_response(
        status, [("Content-Type", content_type), ("Content-Length", str(len(body))), *(headers or [])]
    )
    return [body]


def _json(
    start_response: StartResponse, status: str, payload: Any, headers: list[tuple[str, str]] | None = None
) -> list[bytes]:
    body = json.dumps(payload, default=json_default).encode()
    return _respond(start_response, status, body, "application/json", headers)


class HttpServer:
    """A threaded WSGI server on its own thread, with read timeouts and a cap on connections."""

    def __init__(
        self,
        app: MonitorApp,
        host: str,
        port: int,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        server_class = type("_Server", (_ThreadingServer,), {"max_connections": max_connections})
        handler_class = type("_Handler", (_QuietHandler,), {"timeout": timeout_s})
        self._server: WSGIServer = make_server(
            host, port, app, server_class=server_class, handler_class=handler_class
        )
        self._thread = threading.Thread(target=self._server.serve_forever, name="monitor-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for serve_forever, which never ran otherwise
            self._server.shutdown()
        self._server.server_close()
