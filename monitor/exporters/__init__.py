"""Exporters: Prometheus metrics (and, later, webhooks)."""

from .metrics import BaselineValue, DaemonCollector, StoreCollector

__all__ = ["BaselineValue", "DaemonCollector", "StoreCollector"]
