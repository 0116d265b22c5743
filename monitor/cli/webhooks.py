"""``monitor webhooks``: the alert endpoints, their deliveries, and sending again to one that answered 410.

An endpoint that answers 410 Gone is disabled in the store, not in the
configuration: the sender sends it nothing more until ``monitor webhooks enable``.
Its deliveries marked ``disabled`` stay so (they are not sent late); new events are.

``list`` only reads: it never creates a database.  Neither command prints an
endpoint's URL, which for Slack is the secret itself.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from monitor.cli.options import DEFAULT_CONFIG, DbOption
from monitor.cli.output import err, handle_errors, print_table
from monitor.errors import ConfigError, NotFoundError, StoreError

if TYPE_CHECKING:
    from monitor.config import WebhookEndpointConfig
    from monitor.store import Store
    from monitor.store.outbox import EndpointStatus

#: A table cell shows this much of an error; ``--json`` has all of it.
ERROR_CELL_CHARS = 80

webhooks_app = typer.Typer(
    help="Alert webhook endpoints: their state and deliveries; send again to one disabled by a 410 Gone."
)

OptionalConfig = Annotated[
    Path | None,
    typer.Option("--config", "-c", help=f"The monitor configuration file (default: {DEFAULT_CONFIG})."),
]


# --- the configuration and the store ------------------------------------------------------------------


def _configured_endpoints(
    config: Path | None, db: str | None
) -> tuple[dict[str, WebhookEndpointConfig], str]:
    """The configured endpoints and the database URL.

    A configuration named with ``-c`` must exist; the default one is read when it
    does, and may be missing when the database comes from ``--db`` or
    ``MONITOR_DATABASE_URL`` (then no endpoint counts as configured).
    """
    from monitor.config import load_config

    path = config or Path(DEFAULT_CONFIG)
    db = db or os.environ.get("MONITOR_DATABASE_URL")
    if config is None and db is not None and not path.exists():
        return {}, db
    if not path.exists():
        raise ConfigError("configuration file not found (or give --db URL)", str(path))
    cfg = load_config(path)
    return dict(cfg.webhooks.endpoints), db or cfg.database_url()


def _open_existing(url: str) -> Store:
    """Open the store at ``url``; a SQLite file that does not exist is an error, never created."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from monitor.store import Store, redact_url

    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"database URL {redact_url(url)!r} is not usable: {exc}") from exc
    database = parsed.database
    is_file = database not in (None, "", ":memory:") and parsed.query.get("uri") != "true"
    if parsed.get_backend_name() == "sqlite" and database is not None and is_file:
        path = Path(database).expanduser()
        if not path.is_file():
            raise StoreError(
                f"database file {path} does not exist (check --db or the configuration's database)"
            )
    return Store.open(url)


def _known_names(configured: Mapping[str, Any], stored: Mapping[str, Any]) -> list[str]:
    """Configured endpoints in the configuration's order, then those only the store knows, by name."""
    return [*configured, *sorted(name for name in stored if name not in configured)]


# --- monitor webhooks list ---------------------------------------------------------------------------------


def _endpoint_dict(
    name: str, endpoint: WebhookEndpointConfig | None, status: EndpointStatus | None
) -> dict[str, Any]:
    from monitor.store.outbox import DELIVERY_STATUSES

    disabled_at = status.disabled_at if status else None
    return {
        "name": name,
        "configured": endpoint is not None,
        "format": endpoint.format if endpoint else None,
        "state": "enabled" if disabled_at is None else "disabled",
        "disabled_at": disabled_at,
        "reason": status.reason if status else None,
        "deliveries": dict(status.deliveries) if status else dict.fromkeys(DELIVERY_STATUSES, 0),
        "last_error": status.last_error if status else None,
    }


def _when(value: datetime | None) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M}"


def _cell(text: str | None) -> str:
    if not text:
        return "-"
    line = " ".join(text.split())
    return line if len(line) <= ERROR_CELL_CHARS else line[: ERROR_CELL_CHARS - 1] + "…"


_COLUMNS = [
    "endpoint",
    "format",
    "state",
    "disabled at (UTC)",
    "why",
    "pending",
    "delivered",
    "dead",
    "disabled",
    "last error",
]


def _row(entry: dict[str, Any]) -> list[str]:
    counts = entry["deliveries"]
    return [
        entry["name"],
        entry["format"] or "(not configured)",
        entry["state"],
        _when(entry["disabled_at"]),
        _cell(entry["reason"]),
        *(str(counts[status]) for status in ("pending", "delivered", "dead", "disabled")),
        _cell(entry["last_error"]),
    ]


@webhooks_app.command("list")
@handle_errors
def webhooks_list_command(
    config: OptionalConfig = None,
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the endpoints as JSON on stdout.")] = False,
) -> None:
    """Every configured endpoint and every one the store knows: its state, deliveries and last error."""
    from monitor.api.views import json_default
    from monitor.store.outbox import list_endpoints

    configured, url = _configured_endpoints(config, db)
    with _open_existing(url) as store:
        stored = {status.name: status for status in list_endpoints(store)}
    entries = [_endpoint_dict(n, configured.get(n), stored.get(n)) for n in _known_names(configured, stored)]
    if as_json:
        print(json.dumps(entries, default=json_default, indent=2))
    elif entries:
        print_table("webhook endpoints", _COLUMNS, [_row(entry) for entry in entries])
    else:
        print("no webhook endpoints configured (webhooks.endpoints) or on record")


# --- monitor webhooks enable -------------------------------------------------------------------------------


@webhooks_app.command("enable")
@handle_errors
def webhooks_enable_command(
    endpoint: Annotated[
        str, typer.Argument(help="The endpoint's name, as `monitor webhooks list` shows it.")
    ],
    config: OptionalConfig = None,
    db: DbOption = None,
) -> None:
    """Send to an endpoint again after it answered 410 Gone; its deliveries marked disabled stay so."""
    from monitor.store.outbox import enable_endpoint, list_endpoints

    configured, url = _configured_endpoints(config, db)
    with _open_existing(url) as store:
        stored = {status.name: status for status in list_endpoints(store)}
        if endpoint not in configured and endpoint not in stored:
            known = ", ".join(_known_names(configured, stored)) or "none"
            raise NotFoundError(f"no webhook endpoint named {endpoint!r}; known endpoints: {known}")
        status = stored.get(endpoint)
        if status is None or status.disabled_at is None or not enable_endpoint(store, endpoint):
            err(f"endpoint {endpoint} is not disabled: nothing to do")
            return
    kept = status.deliveries.get("disabled", 0)
    message = (
        f"endpoint {endpoint} enabled (disabled at {_when(status.disabled_at)} UTC: {_cell(status.reason)}); "
        f"its {kept} deliver{'y' if kept == 1 else 'ies'} marked disabled stay so, new events are sent to it"
    )
    if endpoint not in configured:
        message += " once it is back in the configuration's webhooks.endpoints"
    err(message)
