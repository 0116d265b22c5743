"""Options and helpers shared by the configuration-driven commands: --config, --db, loading both."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from monitor.errors import ConfigError

DEFAULT_CONFIG = "monitor.yaml"


def load_config_file(path: Path) -> Any:
    """The configuration at ``path``, loaded and validated."""
    from monitor.config import load_config

    return load_config(path)


def store_for(config_path: Path, db: str | None, *, create: bool = False) -> Any:
    """The store of ``--db``, else of $MONITOR_DATABASE_URL, else of the configuration's database.

    The commands that use it only read: a SQLite file that does not exist is an error naming it, and
    nothing (file or folder) is created, unless ``create``.
    """
    from monitor.store import Store

    if db is None:
        db = os.environ.get("MONITOR_DATABASE_URL")
    if db is None:
        if not config_path.exists():
            raise ConfigError("configuration file not found (or give --db URL)", str(config_path))
        db = load_config_file(config_path).database_url()
    return Store.open(db, create=create)


ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="The monitor configuration file.")]
DbOption = Annotated[str | None, typer.Option("--db", help="Database URL (default: from the configuration).")]
