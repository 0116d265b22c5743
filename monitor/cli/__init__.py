"""The ``monitor`` command line: the top of the package graph (nothing imports it)."""

from monitor.cli.main import app, main

__all__ = ["app", "main"]
