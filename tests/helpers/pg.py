"""A real PostgreSQL server for tests: a throwaway cluster on loopback, or an existing one.

``postgres_server`` (session scope) starts a private server from Debian's
``postgresql`` package (``initdb``/``pg_ctl`` under ``/usr/lib/postgresql/*/bin``)
in a temporary directory, listening on 127.0.0.1 on a free port with its unix
socket in that directory, and stops and removes it at the end.  Tests run as
root in CI and ``initdb`` refuses root, so the binaries then run as the
``postgres`` OS user.

``MONITOR_TEST_POSTGRES_URL`` points the tests at an existing server instead
(a SQLAlchemy URL whose user may create schemas in its database).  When no
server can be had the tests are skipped with the reason, unless
``MONITOR_TEST_POSTGRES_REQUIRED=1`` (set it in CI), which turns the skip into
a failure so that a broken CI image cannot pass quietly.

``postgres_url`` (function scope) gives each test an empty schema of its own,
selected through the connection's ``search_path``; the session runs in a
non-UTC time zone so that timestamp handling has to be right.

``store`` (import ``sqlite_or_postgres_store``) runs a test twice: on a new SQLite file and on
an empty PostgreSQL schema, the store opened (migrated) on each.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

from monitor.store import Store

URL_ENV = "MONITOR_TEST_POSTGRES_URL"
REQUIRED_ENV = "MONITOR_TEST_POSTGRES_REQUIRED"
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
DATABASE = "monitor_test"
#: A zone with a half-hour offset: a timestamp read back in server time cannot pass for UTC.
SESSION_TIMEZONE = "America/St_Johns"
START_TIMEOUT_S = 60


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be provided; the message says why."""


@dataclass(frozen=True)
class PostgresServer:
    """A reachable server and a database on it that tests may create schemas in."""

    url: URL
    #: Set for a throwaway server (stopped at the end); None for MONITOR_TEST_POSTGRES_URL.
    data_dir: Path | None = None


def find_pg_bin() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` that has ``initdb`` and ``pg_ctl``."""
    candidates = [
        path
        for path in Path("/").glob(PG_BIN_GLOB.lstrip("/"))
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file()
    ]
    if not candidates:
        raise PostgresUnavailable(
            f"no initdb/pg_ctl under {PG_BIN_GLOB}: install Debian's 'postgresql' package "
            f"(apt-get install -y postgresql) or set {URL_ENV}"
        )

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path.parent.name))

    return max(candidates, key=version)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_server_user() -> list[str]:
    """The command prefix that runs PostgreSQL's binaries as a non-root user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable(
            "tests run as root, initdb refuses root, and there is no 'postgres' OS user "
            "(the 'postgresql' package creates it)"
        ) from None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresUnavailable("tests run as root and 'runuser' (util-linux) is missing")
    return [runuser, "-u", "postgres", "--"]


def _run(prefix: list[str], cmd: list[str], log: Path) -> None:
    """Run one PostgreSQL binary; a failure raises with its output and the server log's tail."""
    done = subprocess.run(
        [*prefix, *cmd], capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip()[-2000:]
        log_tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise PostgresUnavailable(
            f"{Path(cmd[0]).name} exited with {done.returncode}: {output}"
            + (f"\nserver log:\n{log_tail}" if log_tail else "")
        )


def start_server(root: Path) -> PostgresServer:
    """Create a cluster in ``root`` and start it on loopback; raises PostgresUnavailable."""
    bin_dir = find_pg_bin()
    prefix = _as_server_user()
    data, sockets, log = root / "data", root / "sockets", root / "server.log"
    sockets.mkdir()
    if prefix:
        postgres = pwd.getpwnam("postgres")
        for path in (root, sockets):
            os.chown(path, postgres.pw_uid, postgres.pw_gid)
    root.chmod(0o700)
    _run(
        prefix,
        [
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ],
        log,
    )
    # A port taken between free_port() and the server's bind makes pg_ctl fail: try a few.
    last: PostgresUnavailable | None = None
    for _ in range(3):
        port = free_port()
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={sockets} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50"
        )
        try:
            _run(
                prefix,
                [
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(log),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    str(START_TIMEOUT_S),
                    "start",
                ],
                log,
            )
        except PostgresUnavailable as exc:
            last = exc
            continue
        url = URL.create("postgresql+psycopg2", username="postgres", host="127.0.0.1", port=port)
        server = PostgresServer(url.set(database=DATABASE), data)
        engine = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{DATABASE}"'))
        except Exception:
            stop_server(server)
            raise
        finally:
            engine.dispose()
        return server
    assert last is not None
    raise last


def stop_server(server: PostgresServer) -> None:
    if server.data_dir is None:
        return
    bin_dir = find_pg_bin()
    subprocess.run(
        [*_as_server_user(), str(bin_dir / "pg_ctl"), "-D", str(server.data_dir), "-m", "fast", "stop"],
        capture_output=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRED_ENV, "") not in ("", "0"):
        pytest.fail(f"PostgreSQL is required ({REQUIRED_ENV} is set) but unavailable: {reason}")
    pytest.skip(f"PostgreSQL unavailable: {reason}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session: MONITOR_TEST_POSTGRES_URL, or a throwaway one."""
    existing = os.environ.get(URL_ENV)
    if existing:
        yield PostgresServer(make_url(existing))
        return
    # Not pytest's tmp_path: it lives under a root-only directory the postgres user cannot enter.
    root = Path(tempfile.mkdtemp(prefix="monitor-pg-"))
    server: PostgresServer | None = None
    try:
        try:
            server = start_server(root)
        except (PostgresUnavailable, OSError, subprocess.SubprocessError) as exc:
            _unavailable(str(exc))
        assert server is not None
        yield server
    finally:
        if server is not None:
            stop_server(server)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of an empty schema of this test's own on the session's server."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_server.url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:
        admin.dispose()
        _unavailable(f"cannot create a schema on {postgres_server.url!r}: {exc}")
    url = postgres_server.url.update_query_dict(
        {"options": f"-c search_path={schema} -c TimeZone={SESSION_TIMEZONE}"}
    )
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(name="store", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def sqlite_or_postgres_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store on a new SQLite file, then on an empty PostgreSQL schema."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'monitor.db'}"
    else:
        url = str(request.getfixturevalue("postgres_url"))
    opened = Store.open(url)
    yield opened
    opened.close()
