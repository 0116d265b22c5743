"""What a new user meets in the first hour: one clear line for each mistake, no class names."""

from __future__ import annotations

import importlib.util

import pytest
from typer.testing import CliRunner

from monitor.cli import app

runner = CliRunner()


@pytest.mark.skipif(importlib.util.find_spec("psycopg") is not None, reason="psycopg 3 is installed here")
def test_a_postgres_url_without_its_driver_says_how_to_install_it() -> None:
    result = runner.invoke(app, ["status", "--db", "postgresql://user:secret@localhost/monitor"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    line = lines[0]
    assert "pip install 'model-aging-monitor[postgres]'" in line
    assert "postgresql+psycopg2://" in line
    assert "No module named" not in line
    assert "secret" not in line
