"""The daemon's HTTP endpoints: ``/metrics``, ``/healthz``, ``/readyz`` and a small JSON API.

``/api/v1/*`` requires ``Authorization: Bearer <token>`` when the token's
environment variable is set; ``/metrics`` and the health checks stay open, as
Prometheus scrapers and orchestrators expect.  The server binds 127.0.0.1
unless configured otherwise.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from monitor.api.views import json_default, run_to_dict, status_entries

log = logging.getLogger("monitor.api.server")
StartResponse = Callable[..., Any]
_RUN_JOB = re.compile(r"^/api/v1/jobs/([A-Za-z0-9][A-Za-z0-9_.-]*)/run$")


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)


class MonitorApp:
    """The WSGI application; ``daemon`` may be None (metrics-only, for tests and ``monitor serve``)."""

    def __init__(
        self, registry: CollectorRegistry, store: Any, daemon: Any = None, token: str | None = None
    ) -> None:
        self.registry = registry
        self.store = store
        self.daemon = daemon
        self.token = token or None

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        method = environ.get("REQUEST_METHOD", "GET")
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
            return _json(start_response, "404 Not Found", {"error": f"no such endpoint: {path}"})
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
        match = _RUN_JOB.match(path)
        if match and method == "POST":
            job = match.group(1)
            if self.daemon is None or job not in self.daemon.config.jobs:
                return _json(start_response, "404 Not Found", {"error": f"unknown job {job!r}"})
            from monitor.service.daemon import WorkItem

            queued = self.daemon.enqueue(WorkItem(job, "manual", None))
            return _json(start_response, "202 Accepted", {"job": job, "queued": queued})
        return _json(start_response, "404 Not Found", {"error": f"no such endpoint: {method} {path}"})


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
    """A threaded WSGI server on its own thread."""

    def __init__(self, app: MonitorApp, host: str, port: int) -> None:
        self._server = make_server(
            host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler
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
