"""The daemon's HTTP surface under hostile clients: real sockets on loopback, a real SQLite store.

Half-sent requests, a flood of idle connections, an oversized body, a token in the
URL, a 10 KB job name: each is bounded, and the server keeps answering.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from monitor.api.server import ECHO_CHARS, HttpServer, MonitorApp, redact_query
from monitor.store import Store


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[float], HttpServer]]:
    """Start servers with a given read timeout (at most 4 connections, 1 KiB bodies) over one store."""
    store = Store.open(f"sqlite:///{tmp_path / 'monitor.db'}")
    servers: list[HttpServer] = []

    def start(timeout_s: float) -> HttpServer:
        app = MonitorApp(CollectorRegistry(), store, max_body_bytes=1024)
        server = HttpServer(app, "127.0.0.1", 0, timeout_s=timeout_s, max_connections=4)
        server.start()
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
        store.close()


@pytest.fixture
def served(serve: Callable[[float], HttpServer]) -> HttpServer:
    return serve(1.0)


def _half_sent(server: HttpServer) -> socket.socket:
    sock = socket.create_connection(server.address, timeout=5)
    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # no blank line: the request never ends
    return sock


def test_a_flood_of_half_sent_requests_is_capped_and_then_drained(
    serve: Callable[[float], HttpServer],
) -> None:
    # a read timeout long enough that the held connections outlast the refusals on a loaded machine
    served = serve(8.0)
    held = [_half_sent(served) for _ in range(4)]
    time.sleep(0.1)
    extra = [socket.create_connection(served.address, timeout=5) for _ in range(20)]
    try:
        for sock in extra:  # refused at once, before it sends anything, with no thread behind it
            assert sock.recv(200).startswith(b"HTTP/1.1 503")
        # the read timeout closes the half-sent connections and frees their slots
        for sock in held:
            sock.settimeout(20)
            assert sock.recv(100) == b""
        assert httpx.get(f"{served.url}/healthz", timeout=5).status_code == 200
    finally:
        for sock in held + extra:
            sock.close()


def test_a_client_that_sends_nothing_is_disconnected_after_the_read_timeout(served: HttpServer) -> None:
    with socket.create_connection(served.address, timeout=5) as sock:
        started = time.monotonic()
        assert sock.recv(100) == b""
        assert time.monotonic() - started < 8


def test_a_body_over_the_limit_is_refused_unread(served: HttpServer) -> None:
    response = httpx.post(f"{served.url}/api/v1/jobs/nightly/run", content=b"x" * 4096, timeout=5)
    assert response.status_code == 413
    assert "at most 1024" in response.json()["error"]
    assert httpx.get(f"{served.url}/healthz", timeout=5).status_code == 200


def test_a_token_in_the_url_never_reaches_the_access_log(
    served: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="monitor.api.server"):
        httpx.get(f"{served.url}/api/v1/runs?token=s3cr3t-token&limit=5", timeout=5)
        time.sleep(0.1)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "/api/v1/runs?token=...&limit=..." in logged
    assert "s3cr3t-token" not in logged


def test_names_echoed_back_are_cut(served: HttpServer) -> None:
    name = "j" * 10_000
    response = httpx.post(f"{served.url}/api/v1/jobs/{name}/run", timeout=5)
    assert response.status_code == 409  # a server without a daemon runs no jobs, and says so
    error = response.json()["error"]
    assert len(error) < ECHO_CHARS + 100 and "(10000 characters)" in error
    missing = httpx.get(f"{served.url}/{'p' * 5000}", timeout=5).json()["error"]
    assert len(missing) < ECHO_CHARS + 100


def test_redact_query_keeps_keys_and_drops_values() -> None:
    assert redact_query('"GET /a?token=x&b=2 HTTP/1.1" 200 3') == '"GET /a?token=...&b=... HTTP/1.1" 200 3'
    assert redact_query('"GET /metrics HTTP/1.1" 200 3') == '"GET /metrics HTTP/1.1" 200 3'
