"""Exporters: Prometheus metrics (and, later, webhooks)."""

from monitor.exporters.metrics import BaselineValue, DaemonCollector, StoreCollector

__all__ = ["BaselineValue", "DaemonCollector", "StoreCollector"]
