"""The daemon process assembled: the composition root of ``monitor daemon`` (and of the demo's daemon).

Here, in the api layer, because the process serves :mod:`monitor.api.server`
and everything it serves comes from below (service, exporters, store); the CLI
only parses flags and calls :func:`run_daemon`.

Threads of the process: the main thread (waits for a signal), the daemon's own
(see :mod:`monitor.service.daemon`), the HTTP server's, and the webhook
sender's (``monitor-webhooks``, only with webhook endpoints configured).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from monitor.errors import LeaseLostError, MonitorError

#: Hears the status entries (:func:`monitor.api.views.status_entries`) after every finished run.
StatusListener = Callable[[Sequence[dict[str, Any]]], None]


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def setup_logging(level: str) -> None:
    """Log to stderr at ``level`` (debug, info, warning or error), quieting start-up chatter."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Their start-up chatter (migrations, job registration) is noise in a daemon's log.
    for noisy in ("alembic", "apscheduler"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def run_daemon(
    config: Path,
    *,
    host: str | None = None,
    port: int | None = None,
    on_status: StatusListener | None = None,
    log_level: str = "info",
) -> None:
    """Run the daemon in this process until SIGTERM or SIGINT (the body of ``monitor daemon``).

    ``host`` and ``port`` override ``daemon.host`` and ``daemon.port``;
    ``on_status`` hears the status entries after every finished run.

    Start-up goes configuration, database, lease, port, so that each failure is
    the one that matters, in one line with its exit code: a bad configuration
    (2), a database that cannot be opened or written (4), another daemon holding
    the lease (5, naming it), a port in use (1).  A daemon whose lease was taken
    over while it worked stops fenced and exits 5.
    """
    from prometheus_client import CollectorRegistry

    from monitor.analysis.baselines import BaselineFiles
    from monitor.api.server import HttpServer, MonitorApp
    from monitor.api.views import status_entries
    from monitor.config import load_config
    from monitor.exporters import DaemonCollector, StoreCollector
    from monitor.exporters.metrics import baseline_values
    from monitor.exporters.webhooks import WebhookCollector, WebhookSender
    from monitor.service.checks import config_problems
    from monitor.service.daemon import Daemon
    from monitor.store import Store

    setup_logging(log_level)
    cfg = load_config(config)
    for problem in config_problems(cfg, config):
        _err(f"warning: {problem} (the jobs that need it will fail and be counted)")
    store = Store.open(cfg.database_url())
    daemon = Daemon(cfg, store)
    try:
        daemon.acquire()
    except MonitorError:
        store.close()
        raise
    registry = CollectorRegistry(auto_describe=False)
    baselines = BaselineFiles(cfg.baselines_dir())
    registry.register(
        StoreCollector(
            store,
            job_intervals=daemon.job_intervals,
            baselines=lambda: baseline_values(baselines.current()),
            models=lambda: daemon.config.models.keys(),
        )
    )
    registry.register(DaemonCollector(daemon))
    sender = WebhookSender(store, cfg.webhooks) if cfg.webhooks.endpoints else None
    registry.register(WebhookCollector(store, endpoints=list(cfg.webhooks.endpoints)))
    token = os.environ.get(cfg.daemon.api_token_env) or None
    listen_host = host or cfg.daemon.host
    listen_port = cfg.daemon.port if port is None else port
    try:
        server = HttpServer(MonitorApp(registry, store, daemon, token), listen_host, listen_port)
    except OSError as exc:
        daemon.release()
        store.close()
        raise MonitorError(f"cannot listen on {listen_host}:{listen_port}: {exc.strerror or exc}") from exc
    stopped = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        _err(f"received {signal.Signals(signum).name}: finishing the chunk in hand, then stopping")
        daemon.request_stop()
        stopped.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if on_status is not None:
        listener = on_status
        daemon.on_run_finished = lambda _run: listener(status_entries(store))
        started = getattr(listener, "started", None)
        if callable(started):
            daemon.on_run_started = started
    try:
        daemon.start()
    except MonitorError:
        server.stop()
        daemon.release()
        store.close()
        raise
    server.start()
    sender_stop = threading.Event()
    if sender is not None:
        daemon.on_events = sender.wake
        threading.Thread(
            target=sender.run_forever, args=(sender_stop,), name="monitor-webhooks", daemon=True
        ).start()
    print(
        f"monitor daemon: metrics at {server.url}/metrics, status at {server.url}/api/v1/status", flush=True
    )
    if token is None:
        _err(f"note: ${cfg.daemon.api_token_env} is not set, so the /api/v1 endpoints need no token")
    while not stopped.wait(0.5):
        if daemon.stopping:
            break
    clean = daemon.shutdown()
    sender_stop.set()
    if sender is not None:
        sender.wake()
    server.stop()
    if not clean:
        # The worker is still inside torch or a tokenizer: the run is recorded interrupted and the
        # lease released (Daemon.shutdown); leave now, without the interpreter shutdown that would
        # abort around the native thread ("terminate called without an active exception").
        if daemon.lost_lease is not None:
            _err(f"error: {daemon.lost_lease}")
            logging.shutdown()
            os._exit(LeaseLostError.exit_code)
        _err(
            "monitor daemon stopped: the chunk or model load in hand outlasted the shutdown timeout; "
            "its run is recorded interrupted and resumes at the next start"
        )
        logging.shutdown()
        os._exit(0)
    store.close()
    if daemon.lost_lease is not None:
        raise LeaseLostError(daemon.lost_lease)
    _err("monitor daemon stopped")


def run_server(
    config: Path,
    *,
    host: str | None = None,
    port: int | None = None,
    log_level: str = "info",
    stop: threading.Event | None = None,
) -> None:
    """``monitor serve``: the API, ``/metrics``, the release watchers and the webhook sender, without
    the scheduler, for deployments where fires run elsewhere (``monitor run JOB --slot`` from
    Kubernetes CronJobs, Airflow, systemd timers).  It takes no lease: several may serve one database.

    Runs until SIGTERM or SIGINT (or ``stop`` is set).
    """
    from prometheus_client import CollectorRegistry

    from monitor.analysis.baselines import BaselineFiles
    from monitor.api.server import HttpServer, MonitorApp
    from monitor.config import load_config
    from monitor.exporters import StoreCollector
    from monitor.exporters.metrics import baseline_values
    from monitor.exporters.webhooks import WebhookCollector, WebhookSender
    from monitor.schedule import make_trigger, typical_interval
    from monitor.service.after_job import make_notifier
    from monitor.service.releases.effective import effective_config
    from monitor.service.releases.watch import ReleaseWatcher
    from monitor.store import Store, utcnow

    setup_logging(log_level)
    cfg = load_config(config)
    store = Store.open(cfg.database_url())
    now = utcnow()
    intervals = {
        name: typical_interval(
            make_trigger(every=job.schedule.every, cron=job.schedule.cron, timezone=job.schedule.timezone),
            now,
        )
        for name, job in cfg.jobs.items()
        if job.schedule is not None
    }
    registry = CollectorRegistry(auto_describe=False)
    baselines = BaselineFiles(cfg.baselines_dir())
    registry.register(
        StoreCollector(
            store,
            job_intervals=intervals,
            baselines=lambda: baseline_values(baselines.current()),
            models=lambda: effective_config(cfg, store.releases()).models.keys(),
        )
    )
    registry.register(WebhookCollector(store, endpoints=list(cfg.webhooks.endpoints)))
    sender = WebhookSender(store, cfg.webhooks) if cfg.webhooks.endpoints else None
    watcher = ReleaseWatcher(store, cfg, notify=make_notifier(cfg))
    token = os.environ.get(cfg.daemon.api_token_env) or None
    listen_host = host or cfg.daemon.host
    listen_port = cfg.daemon.port if port is None else port
    try:
        server = HttpServer(MonitorApp(registry, store, None, token), listen_host, listen_port)
    except OSError as exc:
        store.close()
        raise MonitorError(f"cannot listen on {listen_host}:{listen_port}: {exc.strerror or exc}") from exc
    stopped = stop or threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        _err(f"received {signal.Signals(signum).name}: stopping")
        stopped.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    watcher.register_configured()
    server.start()
    threads = []
    if sender is not None:
        threads.append(threading.Thread(target=sender.run_forever, args=(stopped,), name="monitor-webhooks"))
    if watcher.sources:

        def watch() -> None:
            while not stopped.wait(min(cfg.daemon.poll_interval.total_seconds(), 1.0)):
                try:
                    if watcher.scan_due(utcnow()) and sender is not None:
                        sender.wake()
                except MonitorError as exc:
                    logging.getLogger("monitor.api.app").warning("release watcher: %s", exc)
                except Exception:  # the watcher must never take the server down
                    logging.getLogger("monitor.api.app").exception("release watcher failed")

        threads.append(threading.Thread(target=watch, name="monitor-releases"))
    for thread in threads:
        thread.daemon = True
        thread.start()
    print(f"monitor serve: metrics at {server.url}/metrics, status at {server.url}/api/v1/status", flush=True)
    if token is None:
        _err(f"note: ${cfg.daemon.api_token_env} is not set, so the /api/v1 endpoints need no token")
    stopped.wait()
    if sender is not None:
        sender.wake()
    server.stop()
    for thread in threads:
        thread.join(5)
    store.close()
    _err("monitor serve stopped")
