"""Exporters: Prometheus collectors built at scrape time (``metrics``) and alert webhooks (``webhooks/``)."""

from monitor.exporters.metrics import BaselineValue, DaemonCollector, StoreCollector

__all__ = ["BaselineValue", "DaemonCollector", "StoreCollector"]
