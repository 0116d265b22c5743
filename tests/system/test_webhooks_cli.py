"""``monitor webhooks list`` and ``enable`` on a real SQLite file, an endpoint disabled by a real 410.

The command group is mounted on an app of the test's own, as the main CLI mounts it.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from monitor.cli.webhooks import webhooks_app
from monitor.config import load_config
from monitor.errors import NotFoundError, StoreError
from monitor.events import REGRESSION_CONFIRMED
from monitor.exporters.webhooks import WebhookSender, enqueue_event
from monitor.store import Store
from tests.helpers.receiver import Receiver, gone, ok

ENV = {"OPS_SECRET": "whsec_" + base64.b64encode(bytes(range(32))).decode()}
T0 = datetime.now(timezone.utc).replace(microsecond=0)
PAYLOAD = {"model": "router", "evalset": "routing", "metric": "acc", "delta": -0.1}

app = typer.Typer()
app.add_typer(webhooks_app, name="webhooks")


@dataclass
class Setup:
    config: Path
    db: Path
    ops: Receiver
    chat: Receiver

    def send(self, endpoints: tuple[str, ...], now: datetime) -> None:
        """Enqueue one event to ``endpoints`` and deliver what is due, as the daemon does."""
        cfg = load_config(self.config)
        with Store.open(cfg.database_url()) as store:
            with store.session() as s:
                enqueue_event(s, REGRESSION_CONFIRMED, PAYLOAD, endpoints, now=now)
            with WebhookSender(store, cfg.webhooks, rng=random.Random(7), env=ENV) as sender:
                sender.deliver_due(now)


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    """Two configured endpoints, ``ops`` disabled by a 410, and ``old`` known only to the store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MONITOR_DATABASE_URL", raising=False)
    with Receiver(default=gone()) as ops, Receiver() as chat:
        config = tmp_path / "monitor.yaml"
        config.write_text(
            "database: sqlite:///m.db\n"
            "webhooks:\n"
            "  endpoints:\n"
            f"    ops: {{url: '{ops.url}', secret_env: OPS_SECRET}}\n"
            f"    chat: {{url: '{chat.url}', format: slack}}\n"
        )
        s = Setup(config, tmp_path / "m.db", ops, chat)
        s.send(("ops", "chat", "old"), T0)  # ops answers 410; old is no longer configured: dead
        s.send(("ops", "chat"), T0 + timedelta(minutes=1))  # ops is disabled: nothing sent to it
        assert len(ops.requests) == 1 and len(chat.requests) == 2
        yield s


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, ["webhooks", *args])


def entries(*args: str) -> dict[str, dict[str, Any]]:
    result = invoke("list", "--json", *args)
    assert result.exit_code == 0, result.output
    return {entry["name"]: entry for entry in json.loads(result.stdout)}


def test_list_shows_every_endpoint_with_its_state_deliveries_and_last_error(setup: Setup) -> None:
    listed = entries("-c", str(setup.config))
    assert list(listed) == ["ops", "chat", "old"]  # configured in order, then those only stored

    ops = listed["ops"]
    assert (ops["configured"], ops["format"], ops["state"]) == (True, "standard", "disabled")
    assert datetime.fromisoformat(ops["disabled_at"]) == T0
    assert ops["reason"] == "HTTP 410: this hook was removed"
    assert ops["deliveries"] == {"pending": 0, "delivered": 0, "dead": 0, "disabled": 2}
    assert ops["last_error"] == "endpoint disabled: it answered 410 Gone"  # its newest delivery's

    chat = listed["chat"]
    assert (chat["configured"], chat["format"], chat["state"]) == (True, "slack", "enabled")
    assert (chat["disabled_at"], chat["reason"], chat["last_error"]) == (None, None, None)
    assert chat["deliveries"] == {"pending": 0, "delivered": 2, "dead": 0, "disabled": 0}

    old = listed["old"]
    assert (old["configured"], old["format"], old["state"]) == (False, None, "enabled")
    assert old["deliveries"]["dead"] == 1 and old["last_error"]

    table = invoke("list", "-c", str(setup.config))
    assert table.exit_code == 0, table.output
    header, *rows = [line.split("\t") for line in table.stdout.splitlines()]
    assert header == [
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
    by_name = {row[0]: row for row in rows}
    assert list(by_name) == ["ops", "chat", "old"]
    assert by_name["ops"][1:] == [
        "standard",
        "disabled",
        f"{T0:%Y-%m-%d %H:%M}",
        "HTTP 410: this hook was removed",
        "0",
        "0",
        "0",
        "2",
        "endpoint disabled: it answered 410 Gone",
    ]
    assert by_name["chat"][1:] == ["slack", "enabled", "-", "-", "0", "2", "0", "0", "-"]
    assert by_name["old"][1:3] == ["(not configured)", "enabled"]
    assert setup.ops.url not in table.stdout and setup.chat.url not in table.stdout  # a Slack URL is a secret


def test_enable_sends_again_and_leaves_the_disabled_deliveries_as_they_are(setup: Setup) -> None:
    result = invoke("enable", "ops", "-c", str(setup.config))
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"endpoint ops enabled (disabled at {T0:%Y-%m-%d %H:%M} UTC: HTTP 410: this hook was removed); "
        "its 2 deliveries marked disabled stay so, new events are sent to it"
    ]
    ops = entries("-c", str(setup.config))["ops"]
    assert (ops["state"], ops["disabled_at"], ops["reason"]) == ("enabled", None, None)
    assert ops["deliveries"]["disabled"] == 2

    setup.ops.default = ok()
    setup.send(("ops",), T0 + timedelta(minutes=2))
    assert [r.answered for r in setup.ops.requests] == [410, 200]
    assert entries("-c", str(setup.config))["ops"]["deliveries"] == {
        "pending": 0,
        "delivered": 1,
        "dead": 0,
        "disabled": 2,
    }

    again = invoke("enable", "ops", "-c", str(setup.config))
    assert again.exit_code == 0, again.output
    assert again.stderr.splitlines() == ["endpoint ops is not disabled: nothing to do"]
    never = invoke("enable", "chat", "-c", str(setup.config))
    assert never.exit_code == 0 and never.stderr.splitlines() == [
        "endpoint chat is not disabled: nothing to do"
    ]


def test_an_unknown_endpoint_is_named_with_the_known_ones(setup: Setup) -> None:
    result = invoke("enable", "opps", "-c", str(setup.config))
    assert result.exit_code == NotFoundError.exit_code == 2
    assert result.stderr.splitlines() == [
        "error: no webhook endpoint named 'opps'; known endpoints: ops, chat, old"
    ]
    assert entries("-c", str(setup.config))["ops"]["state"] == "disabled"


def test_the_database_can_come_from_db_alone(setup: Setup) -> None:
    setup.config.unlink()  # the default config is gone: only the store's endpoints are known
    listed = entries("--db", f"sqlite:///{setup.db}")
    assert list(listed) == ["chat", "old", "ops"]
    assert not any(entry["configured"] for entry in listed.values())
    assert listed["ops"]["state"] == "disabled"

    result = invoke("enable", "ops", "--db", f"sqlite:///{setup.db}")
    assert result.exit_code == 0, result.output
    assert "once it is back in the configuration's webhooks.endpoints" in result.stderr


def test_a_missing_database_file_is_an_error_and_is_not_created(setup: Setup, tmp_path: Path) -> None:
    missing = tmp_path / "elsewhere" / "missing.db"
    for args in (
        ("list", "--db", f"sqlite:///{missing}"),
        ("list", "--json", "--db", f"sqlite:///{missing}"),
        ("enable", "ops", "--db", f"sqlite:///{missing}"),
    ):
        result = invoke(*args)
        assert result.exit_code == StoreError.exit_code, result.output
        assert result.stdout == ""
        assert result.stderr.splitlines() == [
            f"error: database file {missing} does not exist (check --db or the configuration's database)"
        ]
    assert not missing.parent.exists()

    setup.db.unlink()  # the configuration's database
    result = invoke("list", "-c", str(setup.config))
    assert result.exit_code == StoreError.exit_code and str(setup.db) in result.stderr
    assert not setup.db.exists()


def test_a_configuration_named_but_missing_is_an_error(setup: Setup, tmp_path: Path) -> None:
    result = invoke("list", "-c", str(tmp_path / "nope.yaml"), "--db", f"sqlite:///{setup.db}")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"error: {tmp_path / 'nope.yaml'}: configuration file not found (or give --db URL)"
    ]
