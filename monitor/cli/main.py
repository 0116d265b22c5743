"""The ``monitor`` command line: the composition root that wires config, store, models and runner.

Every :class:`~monitor.errors.MonitorError` becomes a message on stderr (one
line per problem) and its exit code; tracebacks are left for bugs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from monitor import __version__
from monitor.api.views import clean, json_default, primary_metric, run_to_dict, status_entries
from monitor.backends import ModelSpec
from monitor.errors import ConfigError, EvalSetError, MonitorError, NotFoundError, Problem
from monitor.evals.evalset import EvalSet, load_evalset, parse_strategy, strategy_name

RESULTS_FORMAT_VERSION = 1
SUMMARY_FORMAT_VERSION = 1
DEFAULT_CONFIG = "monitor.yaml"

app = typer.Typer(
    name="monitor",
    help="Monitor fine-tuned language models as they age: golden evals, history, regressions, recommendations.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def handle_errors(func: F) -> F:
    """Turn our errors into one line per problem on stderr and the error's exit code."""
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MonitorError as exc:
            problems = getattr(exc, "problems", None) or [Problem("", str(exc))]
            for problem in problems:
                _err(f"error: {problem}")
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _err("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _is_terminal() -> bool:
    return sys.stdout.isatty() and os.environ.get("TERM") != "dumb"


@contextmanager
def _progress(total: int, label: str, enabled: bool) -> Iterator[Callable[[int], None] | None]:
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def _format_metric(value: dict[str, Any] | None) -> str:
    if not value or value.get("value") is None or _isnan(value["value"]):
        return "-"
    stderr = value.get("stderr")
    if stderr is None or _isnan(stderr):
        return f"{value['value']:.4f}"
    return f"{value['value']:.4f} ± {stderr:.4f}"


def _isnan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)


def _print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A rich table on a terminal, tab-separated lines otherwise (for scripts and logs)."""
    if _is_terminal():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    print("\t".join(columns))
    for row in rows:
        print("\t".join(row))


# --- monitor eval --------------------------------------------------------------------------------


@app.command("eval")
@handle_errors
def eval_command(
    model: Annotated[str, typer.Option("--model", help="Base model: a local directory or a hub id.")],
    evalset: Annotated[Path, typer.Option("--evalset", help="Eval set directory.")],
    adapter: Annotated[str | None, typer.Option("--adapter", help="PEFT adapter directory.")] = None,
    fewshot: Annotated[
        int | None, typer.Option("--fewshot", min=0, help="Shots; default: the eval set's fewshot.k.")
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Items handed to the model at a time.")
    ] = 64,
    batch_tokens: Annotated[
        int | None, typer.Option("--batch-tokens", min=64, help="Token budget of one forward pass.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16, float16.")] = "auto",
    output: Annotated[
        Path | None, typer.Option("--output", help="Write one JSON line per item here.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
    db: Annotated[str | None, typer.Option("--db", help="Also record the run in this database URL.")] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Model name for --db (default: derived).")
    ] = None,
) -> None:
    """Evaluate one model on one eval set, once, without a configuration file."""
    from monitor.backends import load_backend
    from monitor.evals.loop import evaluate, summarize

    started = time.perf_counter()
    es = load_evalset(evalset)
    k = es.default_fewshot if fewshot is None else fewshot
    es.render_fewshot_prefix(k)  # an impossible shot count is an input error, before loading anything
    spec = ModelSpec("hf", model, adapter, device=device, dtype=dtype, batch_tokens=batch_tokens)
    if db is not None:
        _eval_recorded(db, name or _derived_name(model, adapter), spec, es, k, batch_size, as_json)
        return
    load_started = time.perf_counter()
    backend = load_backend(spec)
    load_s = time.perf_counter() - load_started
    fingerprint = backend.fingerprint()
    with _progress(len(es.items), f"{es.name} {strategy_name(k)}", not as_json) as progress:
        outcome = evaluate(backend, es, fewshot_k=k, chunk_size=batch_size, progress=progress)
    metrics = summarize(outcome.results, es.metrics)
    total_s = time.perf_counter() - started
    if output is not None:
        _write_results(output, es, outcome.results)
    summary = {
        "format_version": SUMMARY_FORMAT_VERSION,
        "monitor_version": __version__,
        "model": {
            "base": model,
            "adapter": adapter,
            "fingerprint": fingerprint.digest,
            "files": fingerprint.files,
        },
        "evalset": {
            "name": es.name,
            "version": es.version,
            "path": str(es.path),
            "task": es.task,
            "items": len(es.items),
        },
        "strategy": strategy_name(k),
        "fewshot_k": k,
        "metrics": {m: v.to_dict() for m, v in metrics.items()},
        "items_failed": outcome.failed,
        "tokens": {"prompt": outcome.prompt_tokens, "completion": outcome.completion_tokens},
        "timings": {
            "load_s": round(load_s, 4),
            "eval_s": round(outcome.eval_s, 4),
            "total_s": round(total_s, 4),
            "items_per_s": round(len(outcome.results) / outcome.eval_s, 2) if outcome.eval_s else None,
        },
        "backend": backend.describe(),
    }
    backend.close()
    if as_json:
        print(json.dumps(clean(summary), default=json_default, indent=2))
        return
    rows = [[m, _format_metric(v.to_dict()), str(v.n)] for m, v in metrics.items()]
    _print_table(
        f"{es.name} ({strategy_name(k)}, {len(es.items)} items)", ["metric", "value ± stderr", "n"], rows
    )
    failed = f", {outcome.failed} items failed" if outcome.failed else ""
    print(
        f"eval {outcome.eval_s:.2f}s, load {load_s:.2f}s{failed}; eval set version {es.version[:12]}; model {fingerprint.digest[:12]}"
    )


def _derived_name(model: str, adapter: str | None) -> str:
    name = Path(model.rstrip("/")).name
    return f"{name}+{Path(adapter.rstrip('/')).name}" if adapter else name


def _write_results(path: Path, es: EvalSet, results: Sequence[Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for r in results:
            line: dict[str, Any] = {
                "format_version": RESULTS_FORMAT_VERSION,
                "id": r.item_id,
                "prediction": r.prediction,
                "target": r.target,
            }
            if es.task == "multiple_choice":
                line["correct"] = r.correct
                line["loglikelihoods"] = r.loglikelihoods
            else:
                line["score"] = r.score
                line["scores"] = r.scores
            if r.error:
                line["error"] = r.error
            fh.write(json.dumps(clean(line), ensure_ascii=False) + "\n")
    tmp.replace(path)


def _eval_recorded(
    db: str, name: str, spec: ModelSpec, es: EvalSet, k: int, chunk: int, as_json: bool
) -> None:
    from monitor.service.plan import RunPlan
    from monitor.service.runs import ModelPool, execute_run
    from monitor.store import Store

    store = Store.open(db)
    pool = ModelPool()
    try:
        with _progress(len(es.items), f"{name} on {es.name}", not as_json) as progress:
            run = execute_run(store, pool, RunPlan(name, spec, es, k), chunk_size=chunk, progress=progress)
    finally:
        pool.close()
    if as_json:
        print(json.dumps(clean(run_to_dict(run, name)), default=json_default, indent=2))
    else:
        _print_runs([(run, name)])
    if run.status != "succeeded":
        raise typer.Exit(1)


# --- configuration-driven commands --------------------------------------------------------------------


def _load_config(path: Path) -> Any:
    from monitor.config import load_config

    return load_config(path)


def _store_for(config_path: Path, db: str | None) -> Any:
    from monitor.store import Store

    if db is None:
        db = os.environ.get("MONITOR_DATABASE_URL")
    if db is None:
        if not config_path.exists():
            raise ConfigError("configuration file not found (or give --db URL)", str(config_path))
        db = _load_config(config_path).database_url()
    return Store.open(db)


ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="The monitor configuration file.")]
DbOption = Annotated[str | None, typer.Option("--db", help="Database URL (default: from the configuration).")]


@app.command("check-config")
@handle_errors
def check_config_command(config: ConfigOption = Path(DEFAULT_CONFIG)) -> None:
    """Validate the configuration and every eval set and model path it names; one line per problem."""
    cfg = _load_config(config)
    problems = config_problems(cfg, config)
    if problems:
        raise ConfigError(problems)
    print(f"{config}: ok ({len(cfg.models)} models, {len(cfg.evalsets)} eval sets, {len(cfg.jobs)} jobs)")


def config_problems(cfg: Any, config_path: Path) -> list[Problem]:
    """Problems a valid schema can still hide: missing eval sets, missing model folders, bad strategies."""
    from monitor.exporters.webhooks import resolve_secrets

    problems: list[Problem] = []
    try:
        resolve_secrets(cfg.webhooks)
    except ConfigError as exc:
        problems.extend(exc.problems)
    loaded: dict[str, EvalSet] = {}
    for name, path in cfg.evalsets.items():
        try:
            es = load_evalset(cfg.resolve(path))
        except EvalSetError as exc:
            problems.extend(exc.problems)
            continue
        loaded[name] = es
    for name, model in cfg.models.items():
        key_env = model.endpoint.api_key_env if model.endpoint else None
        if key_env and not os.environ.get(key_env):
            problems.append(
                Problem(
                    str(config_path),
                    f"models.{name}.endpoint.api_key_env: environment variable {key_env} is not set",
                )
            )
    for name in cfg.models:
        base, adapter = cfg.model_source(name)
        if base.startswith(("/", ".")) and not Path(base).exists():
            problems.append(Problem(f"{config_path}", f"models.{name}.base: {base} does not exist"))
        if adapter is not None and not Path(adapter).exists():
            problems.append(Problem(f"{config_path}", f"models.{name}.adapter: {adapter} does not exist"))
    for family_name, family in cfg.families.items():
        watch = family.watch
        where = f"families.{family_name}.watch"
        if watch is not None and watch.directory is not None and not cfg.resolve(watch.directory).is_dir():
            problems.append(
                Problem(
                    str(config_path), f"{where}.directory: {cfg.resolve(watch.directory)} is not a directory"
                )
            )
        key_env = watch.openai.api_key_env if watch is not None and watch.openai is not None else None
        if key_env and not os.environ.get(key_env):
            problems.append(
                Problem(
                    str(config_path), f"{where}.openai.api_key_env: environment variable {key_env} is not set"
                )
            )
    checks = [  # (where, strategies, eval set): every prompt a job or a challenger evaluation renders
        (f"finetunes.{n}.strategies", ft.strategies, e)
        for n, ft in cfg.finetunes.items()
        for e in ft.evalsets
    ]
    checks += [
        (f"jobs.{n}", job.strategies or (cfg.models[m].strategy,), e)
        for n, job in cfg.jobs.items()
        for m in job.models
        for e in job.evalsets
    ]
    for where, strategies, es_name in checks:
        found = loaded.get(es_name)
        for strategy in strategies if found is not None else ():
            try:
                found.render_fewshot_prefix(parse_strategy(strategy, found))  # type: ignore[arg-type,union-attr]
            except EvalSetError as exc:
                problems.append(
                    Problem(str(config_path), f"{where}: {strategy} on {es_name}: {exc.problems[0].message}")
                )
    return problems


@app.command("run")
@handle_errors
def run_command(
    jobs: Annotated[list[str] | None, typer.Argument(help="Jobs to run (default: all).")] = None,
    config: ConfigOption = Path(DEFAULT_CONFIG),
    as_json: Annotated[bool, typer.Option("--json", help="Print the runs as JSON.")] = False,
) -> None:
    """Run the configured jobs once and record every run (challenger jobs of found releases too)."""
    from monitor.service.releases.watch import effective_config
    from monitor.store import Store

    declared = _load_config(config)
    store = Store.open(declared.database_url())
    try:
        cfg = effective_config(declared, store.releases())
        finished = _run_jobs(store, cfg, jobs or [], as_json=as_json)
    finally:
        store.close()
    if any(run.status != "succeeded" for run, _ in finished):
        raise typer.Exit(1)


def _run_jobs(store: Any, cfg: Any, jobs: Sequence[str], *, as_json: bool) -> list[tuple[Any, str]]:
    """Run ``jobs`` (all when empty) in this process with progress bars, then print the runs."""
    from monitor.service.runs import run_jobs

    def label(plan: Any) -> str:
        return f"{plan.model_name} on {plan.evalset.name} ({strategy_name(plan.fewshot_k)})"

    def report(plan: Any, run: Any) -> None:
        if not as_json:
            _err(f"{label(plan)}: {run.status}" + (f" ({run.error})" if run.error else ""))

    finished = run_jobs(
        store,
        cfg,
        jobs,
        trigger="cli",
        progress_for=lambda plan: _progress(len(plan.evalset.items), label(plan), not as_json),
        on_run=report,
    )
    if as_json:
        print(json.dumps([clean(run_to_dict(r, n)) for r, n in finished], default=json_default, indent=2))
    else:
        _print_runs(finished)
    return finished


def _print_runs(runs: Sequence[tuple[Any, str]]) -> None:
    rows = []
    for run, name in runs:
        metric, value = primary_metric(run)
        rows.append(
            [
                str(run.id),
                name,
                run.evalset_name,
                run.strategy,
                run.status,
                metric,
                _format_metric(value),
                f"{run.duration_s:.1f}s" if run.duration_s is not None else "-",
                (run.error or "")[:80],
            ]
        )
    _print_table(
        "runs",
        ["run", "model", "evalset", "strategy", "status", "metric", "value ± stderr", "time", "error"],
        rows,
    )


@app.command("status")
@handle_errors
def status_command(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The latest result per model, eval set and strategy, with the change from the previous run."""
    store = _store_for(config, db)
    entries = status_entries(store)
    store.close()
    if as_json:
        print(json.dumps(entries, default=json_default, indent=2))
        return
    print_status(entries)


def print_status(entries: Sequence[dict[str, Any]]) -> None:
    """The status table (rich on a terminal, tab-separated otherwise)."""
    if not entries:
        print("no runs recorded yet")
        return
    rows = []
    for entry in entries:
        when = entry["finished_at"] or entry["started_at"]
        rows.append(
            [
                entry["model"],
                entry["evalset"],
                entry["strategy"],
                entry["status"],
                entry["metric"],
                _format_metric(entry["value"]),
                "-" if entry["change"] is None else f"{entry['change']:+.4f}",
                _verdict_text(entry),
                "-" if entry["newly_broken"] is None else str(entry["newly_broken"]),
                str(entry["flaky"]),
                when.strftime("%Y-%m-%d %H:%M") if when else "-",
            ]
        )
    _print_table(
        "status",
        [
            "model",
            "evalset",
            "strategy",
            "status",
            "metric",
            "value ± stderr",
            "change",
            "vs baseline",
            "newly broken",
            "flaky",
            "when (UTC)",
        ],
        rows,
    )


def _verdict_text(entry: dict[str, Any]) -> str:
    if entry["verdict"] is None:
        return "-"
    delta = entry["vs_baseline"]
    return entry["verdict"] if delta is None else f"{entry['verdict']} ({delta:+.3f})"


@app.command("history")
@handle_errors
def history_command(
    model: Annotated[str, typer.Argument(help="Model name.")],
    evalset: Annotated[str, typer.Argument(help="Eval set name.")],
    config: ConfigOption = Path(DEFAULT_CONFIG),
    db: DbOption = None,
    limit: Annotated[int, typer.Option(min=1)] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The runs of one model on one eval set over time, newest first."""
    store = _store_for(config, db)
    runs = store.runs(model=model, evalset=evalset, limit=limit)
    store.close()
    if not runs:
        raise NotFoundError(f"no runs of model {model!r} on eval set {evalset!r}")
    if as_json:
        print(json.dumps([clean(run_to_dict(r, n)) for r, n in runs], default=json_default, indent=2))
        return
    rows = []
    for run, _ in runs:
        metric, value = primary_metric(run)
        rows.append(
            [
                str(run.id),
                run.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                run.strategy,
                run.status,
                metric,
                _format_metric(value),
                run.evalset_version[:10],
                (run.model_fingerprint or "-")[:10],
                (run.error or "")[:60],
            ]
        )
    _print_table(
        f"{model} on {evalset}",
        [
            "run",
            "started (UTC)",
            "strategy",
            "status",
            "metric",
            "value ± stderr",
            "evalset version",
            "model",
            "error",
        ],
        rows,
    )


@app.command("daemon")
@handle_errors
def daemon_command(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    host: Annotated[str | None, typer.Option(help="Listen address (default: daemon.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (default: daemon.port; 0 picks one).")] = None,
    show_status: Annotated[bool, typer.Option(help="Print the status table after every run.")] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the configured jobs on their schedules and serve /metrics, health checks and the API."""
    serve_daemon(config, host=host, port=port, show_status=show_status, log_level=log_level)


def serve_daemon(
    config: Path,
    *,
    host: str | None = None,
    port: int | None = None,
    show_status: bool = False,
    log_level: str = "info",
) -> None:
    """Run the daemon in this process until SIGTERM or SIGINT (the body of ``monitor daemon``)."""
    import signal
    import threading

    from prometheus_client import CollectorRegistry

    from monitor.analysis.baselines import BaselineFiles
    from monitor.api.server import HttpServer, MonitorApp
    from monitor.errors import MonitorError
    from monitor.exporters import DaemonCollector, StoreCollector
    from monitor.exporters.metrics import baseline_values
    from monitor.exporters.webhooks import WebhookCollector, WebhookSender
    from monitor.service.daemon import Daemon
    from monitor.store import Store

    _setup_logging(log_level)
    cfg = _load_config(config)
    for problem in config_problems(cfg, config):
        _err(f"warning: {problem} (the jobs that need it will fail and be counted)")
    store = Store.open(cfg.database_url())
    daemon = Daemon(cfg, store)
    registry = CollectorRegistry(auto_describe=False)
    baselines = BaselineFiles(cfg.resolve(cfg.baselines))
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
        store.close()
        raise MonitorError(f"cannot listen on {listen_host}:{listen_port}: {exc.strerror or exc}") from exc
    stopped = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        _err(f"received {signal.Signals(signum).name}: finishing the chunk in hand, then stopping")
        daemon.request_stop()
        stopped.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if show_status:
        daemon.on_run_finished = lambda _run: print_status(status_entries(store))
    try:
        daemon.start()
    except MonitorError:
        server.stop()
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
    store.close()
    _err("monitor daemon stopped" + ("" if clean else " (a run was cut short; it resumes at the next start)"))


def _setup_logging(level: str) -> None:
    import logging

    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Their start-up chatter (migrations, job registration) is noise in a daemon's log.
    for noisy in ("alembic", "apscheduler"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


@app.command("run-now")
@handle_errors
def run_now_command(
    job: Annotated[str, typer.Argument(help="The job to run.")],
    config: ConfigOption = Path(DEFAULT_CONFIG),
    wait: Annotated[bool, typer.Option(help="Wait until the job's runs have finished.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 3600.0,
) -> None:
    """Ask the running daemon to run a job now."""
    import socket

    from monitor.errors import MonitorError
    from monitor.service.plan import plan_runs
    from monitor.store import Store, as_utc, utcnow

    cfg = _load_config(config)
    if job not in cfg.jobs:
        raise NotFoundError(f"unknown job {job!r}; configured: {', '.join(cfg.jobs) or 'none'}")
    expected = len(plan_runs(cfg, [job], trigger="manual"))
    store = Store.open(cfg.database_url())
    try:
        lease = store.current_lease()
        if lease is None or as_utc(lease.expires_at) < utcnow():  # type: ignore[operator]
            raise MonitorError(
                "no monitor daemon is running against this database; start one with `monitor daemon`, "
                f"or run the job here with `monitor run {job}`"
            )
        asked_at = utcnow()
        request_id = store.request_run(job, requested_by=f"{socket.gethostname()}:{os.getpid()}")
        print(f"asked the daemon ({lease.holder}) to run job {job} now (request {request_id})")
        if wait:
            runs = _wait_for_manual_runs(store, job, asked_at, expected, timeout)
            _print_runs(runs)
            if any(run.status != "succeeded" for run, _ in runs):
                raise typer.Exit(1)
    finally:
        store.close()


def _wait_for_manual_runs(store: Any, job: str, since: Any, expected: int, timeout: float) -> list[Any]:
    from monitor.errors import MonitorError
    from monitor.store import as_utc

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [
            (run, name)
            for run, name in store.runs(limit=max(50, expected * 4))
            if run.job == job and run.trigger == "manual" and as_utc(run.started_at) >= since
        ]
        if len(runs) >= expected and all(run.status != "running" for run, _ in runs):
            return runs
        time.sleep(0.5)
    raise MonitorError(f"job {job} did not finish within {timeout:.0f} s")


@app.command("diff")
@handle_errors
def diff_command(
    run_a: Annotated[int, typer.Argument(help="The earlier run (for example the baseline's run).")],
    run_b: Annotated[int, typer.Argument(help="The later run.")],
    config: ConfigOption = Path(DEFAULT_CONFIG),
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    limit: Annotated[int, typer.Option(help="Item ids listed per group.")] = 20,
) -> None:
    """Item by item: what newly fails, what newly passes and which predictions changed from RUN_A to RUN_B."""
    from monitor.analysis.behaviour import ItemOutcome, diff_outcomes

    store = _store_for(config, db)
    try:
        runs = [store.get_run(run_a), store.get_run(run_b)]
        outcomes = [
            [ItemOutcome(r.item_id, r.prediction, r.correct, r.error) for r in store.item_results(run.id)]  # type: ignore[arg-type]
            for run in runs
        ]
    finally:
        store.close()
    diff = diff_outcomes(*outcomes)
    payload = {
        "run_a": run_a,
        "run_b": run_b,
        "evalset_a": runs[0].evalset_name,
        "evalset_b": runs[1].evalset_name,
        "same_evalset_version": runs[0].evalset_version == runs[1].evalset_version,
        "common": diff.common,
        "agreement": diff.agreement,
        "newly_broken": list(diff.newly_broken),
        "newly_fixed": list(diff.newly_fixed),
        "changed_predictions": list(diff.changed_predictions),
        "only_in_a": list(diff.only_in_a),
        "only_in_b": list(diff.only_in_b),
        "failed_in_b": list(diff.failed_in_b),
    }
    if as_json:
        print(json.dumps(payload, indent=2))
        return
    agreement = "-" if diff.agreement is None else f"{diff.agreement:.1%}"
    print(f"run {run_a} -> run {run_b}: {diff.common} common items, {agreement} identical predictions")
    if not payload["same_evalset_version"]:
        print("note: the runs used different versions of the eval set")
    for key in (
        "newly_broken",
        "newly_fixed",
        "changed_predictions",
        "only_in_a",
        "only_in_b",
        "failed_in_b",
    ):
        ids = payload[key]
        if ids:
            more = f" ... and {len(ids) - limit} more" if len(ids) > limit else ""
            print(f"{key.replace('_', ' ')} ({len(ids)}): {', '.join(ids[:limit])}{more}")


@app.command("regressions")
@handle_errors
def regressions_command(
    model: Annotated[str | None, typer.Argument(help="Only this model.")] = None,
    config: ConfigOption = Path(DEFAULT_CONFIG),
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The newest verdict against the baseline per model, eval set, strategy and metric."""
    from monitor.analysis.regression import latest_verdicts
    from monitor.service.after_job import latest_findings

    store = _store_for(config, db)
    try:
        model_id = store.get_model(model).id if model else None
        verdicts = latest_verdicts(store, model_id)
        names = {v.model_id: store.model_name(v.model_id) for v in verdicts}
        findings = [(f, n) for f, n in latest_findings(store) if model is None or n == model]
    finally:
        store.close()
    rows = [
        clean(
            {
                "model": names[v.model_id],
                "evalset": v.evalset_name,
                "strategy": v.strategy,
                "metric": v.metric,
                "state": v.state,
                "mode": v.mode,
                "delta": v.delta,
                "ci_low": v.ci_low,
                "ci_high": v.ci_high,
                "p_value": v.p_value,
                "adjusted_p": v.adjusted_p,
                "min_detectable": v.min_detectable,
                "consecutive": v.consecutive,
                "run": v.run_id,
                "baseline_run": v.baseline_run_id,
                "reason": v.reason,
            }
        )
        for v in sorted(verdicts, key=lambda v: (names[v.model_id], v.evalset_name, v.strategy, v.metric))
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows and not findings:
        print("no verdicts yet: pin a baseline (monitor baseline pin MODEL EVALSET) and run again")
        return

    def num(x: float | None, fmt: str = "+.3f") -> str:
        return "-" if x is None else format(x, fmt)

    _print_table(
        "regression verdicts",
        [
            "model",
            "evalset",
            "strategy",
            "metric",
            "state",
            "delta",
            "95% CI",
            "adj. p",
            "MDD",
            "runs",
            "note",
        ],
        [
            [
                r["model"],
                r["evalset"],
                r["strategy"],
                r["metric"],
                r["state"],
                num(r["delta"]),
                f"[{num(r['ci_low'])}, {num(r['ci_high'])}]",
                num(r["adjusted_p"], ".2g"),
                num(r["min_detectable"], ".3f"),
                str(r["consecutive"]),
                (r["reason"] or "")[:60],
            ]
            for r in rows
        ],
    )
    if findings:
        _print_table(
            "behaviour and integrity",
            ["model", "kind", "source", "state", "score", "p", "reason"],
            [
                [
                    n,
                    f.kind,
                    f.source,
                    f.state,
                    num(f.score, ".3f"),
                    num(f.p_value, ".2g"),
                    (f.reason or "")[:70],
                ]
                for f, n in findings
            ],
        )


@app.command("recommend")
@handle_errors
def recommend_command(
    finetune: Annotated[str | None, typer.Argument(help="One configured fine-tune (default: all).")] = None,
    config: ConfigOption = Path(DEFAULT_CONFIG),
    memo: Annotated[
        Path | None, typer.Option(help="Write a one-page Markdown memo here (a folder for several).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Keep, re-train, re-base or retire each fine-tune, with the evidence (and records the decision)."""
    from monitor.analysis.recommend import assess, record_recommendation
    from monitor.service.releases.watch import effective_config
    from monitor.store import Store, utcnow

    cfg = _load_config(config)
    names = [finetune] if finetune else list(cfg.finetunes)
    unknown = [n for n in names if n not in cfg.finetunes]
    if unknown or not names:
        raise NotFoundError(
            f"unknown fine-tune {', '.join(unknown)}"
            if unknown
            else "no fine-tunes configured (finetunes: in the config)"
        )
    store = Store.open(cfg.database_url())
    out = []
    try:
        cfg = effective_config(cfg, store.releases())
        for name in names:
            found = assess(store, cfg, name)
            decision, evidence, case = found.decision, found.evidence, found.costs
            record = None
            with contextlib.suppress(NotFoundError):  # never evaluated: nothing to record yet
                record = record_recommendation(
                    store, cfg.finetunes[name].model, decision, evidence, case.to_dict() if case else None
                )
            out.append((name, decision, evidence, record, case))
            if memo is not None:
                path = memo / f"{name}.md" if (memo.is_dir() or len(names) > 1) else memo
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(found.memo(when=utcnow().strftime("%Y-%m-%d %H:%M UTC")))
                _err(f"memo written to {path}")
    finally:
        store.close()
    if as_json:
        print(
            json.dumps(
                [
                    clean(
                        {
                            "finetune": n,
                            "action": d.action,
                            "reasons": list(d.reasons),
                            "release": d.release,
                            "strategy": d.strategy,
                            "changed": r.changed if r else None,
                            "evidence": e.to_dict(),
                            "costs": c.to_dict() if c else None,
                        }
                    )
                    for n, d, e, r, c in out
                ],
                indent=2,
            )
        )
        return
    _print_table(
        "recommendations",
        ["fine-tune", "action", "changed", "why"],
        [
            [n, d.action, "-" if r is None else ("yes" if r.changed else "no"), d.reasons[0][:110]]
            for n, d, _, r, _ in out
        ],
    )
    for n, _, _, _, c in out:
        if c is not None:
            print(f"{n}: " + " ".join(c.sentences))


@app.command("drift")
@handle_errors
def drift_command(
    model: Annotated[
        str | None, typer.Argument(help="One model (default: every model with drift: configured).")
    ] = None,
    config: ConfigOption = Path(DEFAULT_CONFIG),
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check production inputs for drift against the reference, now, and record the result."""
    from monitor.service.after_job import make_notifier, run_input_drift
    from monitor.store import Store, utcnow

    cfg = _load_config(config)
    names = [model] if model else [n for n, m in cfg.models.items() if m.drift is not None]
    missing = [n for n in names if n not in cfg.models or cfg.models[n].drift is None]
    if missing or not names:
        raise NotFoundError(
            f"no drift: section for model {', '.join(missing)}"
            if missing
            else "no model has a drift: section"
        )
    store = Store.open(cfg.database_url())
    results = []
    try:
        for name in names:
            if not any(m.name == name for m in _models(store)):
                base, adapter = cfg.model_source(name)
                store.upsert_model(name, kind=cfg.models[name].backend, base=base, adapter=adapter)
            record = run_input_drift(
                store,
                name,
                cfg.models[name].drift,
                base_dir=cfg.root,
                now=utcnow(),
                notify=make_notifier(cfg),
            )
            results.append((name, record))
    finally:
        store.close()
    rows = [
        clean(
            {
                "model": n,
                "source": r.source,
                "state": r.state,
                "drifted": r.drifted,
                "score": r.score,
                "p_value": r.p_value,
                "threshold": r.threshold,
                "reason": r.reason,
            }
        )
        for n, r in results
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        _print_table(
            "input drift",
            ["model", "source", "state", "score", "threshold", "reason"],
            [
                [
                    r["model"],
                    r["source"],
                    r["state"],
                    "-" if r["score"] is None else f"{r['score']:.3f}",
                    "-" if r["threshold"] is None else f"{r['threshold']:.3f}",
                    (r["reason"] or "")[:80],
                ]
                for r in rows
            ],
        )
    if any(r.state == "error" for _, r in results):
        raise typer.Exit(1)


def _models(store: Any) -> list[Any]:
    from sqlalchemy import select

    from monitor.store import ModelRecord

    with store.session() as s:
        return list(s.execute(select(ModelRecord)).scalars())


report_app = typer.Typer(help="Reports: Evidently's HTML drift report.")
app.add_typer(report_app, name="report")


@report_app.command("drift")
@handle_errors
def report_drift_command(
    model: Annotated[str, typer.Argument(help="The model whose production inputs to report on.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the HTML report.")] = Path(
        "drift-report.html"
    ),
    config: ConfigOption = Path(DEFAULT_CONFIG),
) -> None:
    """Write Evidently's HTML report of the model's production inputs against its reference."""
    from monitor.analysis.drift.evidently import check_input_drift
    from monitor.store import utcnow

    cfg = _load_config(config)
    if model not in cfg.models or cfg.models[model].drift is None:
        raise NotFoundError(f"no drift: section for model {model!r}")
    check = check_input_drift(cfg.models[model].drift, now=utcnow(), base_dir=cfg.root, report_path=output)
    verdict = "drifted" if check.analysis.drifted else "no drift"
    print(f"{model}: {verdict} (score {check.analysis.score:.3f}); report written to {output}")


baseline_app = typer.Typer(help="Pin, show, list and unpin baselines (baselines/<model>/<evalset>.json).")
app.add_typer(baseline_app, name="baseline")


def _baselines_root(config: Path) -> Path:
    cfg = _load_config(config)
    return Path(cfg.resolve(cfg.baselines))


@baseline_app.command("pin")
@handle_errors
def baseline_pin_command(
    model: Annotated[str, typer.Argument(help="Model name.")],
    evalset: Annotated[str, typer.Argument(help="Eval set name.")],
    run: Annotated[
        int | None, typer.Option("--run", help="Run id (default: the newest succeeded run).")
    ] = None,
    config: ConfigOption = Path(DEFAULT_CONFIG),
    db: DbOption = None,
) -> None:
    """Pin a succeeded run as the baseline of a model on an eval set."""
    from monitor.analysis.baselines import baseline_path, pin_baseline

    store = _store_for(config, db)
    try:
        root = _baselines_root(config)
        baseline = pin_baseline(store, root, model, evalset, run)
    finally:
        store.close()
    metric, value = next(iter(baseline.metrics.items()), ("-", None))
    print(
        f"pinned run {baseline.run_id} as the baseline of {model} on {evalset} "
        f"({baseline.strategy}, {metric} {_format_metric(value)}): {baseline_path(root, model, evalset)}"
    )


@baseline_app.command("show")
@handle_errors
def baseline_show_command(
    model: Annotated[str, typer.Argument()],
    evalset: Annotated[str, typer.Argument()],
    config: ConfigOption = Path(DEFAULT_CONFIG),
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show a pinned baseline."""
    from monitor.analysis.baselines import baseline_path, load_baseline

    path = baseline_path(_baselines_root(config), model, evalset)
    if not path.exists():
        raise NotFoundError(f"no baseline pinned for model {model!r} on eval set {evalset!r} ({path})")
    baseline = load_baseline(path)
    if as_json:
        print(baseline.to_json(), end="")
        return
    print(f"{model} on {evalset}: run {baseline.run_id}, {baseline.strategy}, pinned {baseline.pinned_at}")
    print(
        f"eval set version {baseline.evalset_version[:12]}, model {str(baseline.model_fingerprint)[:12]}, {len(baseline.items)} items"
    )
    rows = [
        [name, _format_metric(value), str(value.get("n", "-"))] for name, value in baseline.metrics.items()
    ]
    _print_table("baseline", ["metric", "value ± stderr", "n"], rows)


@baseline_app.command("list")
@handle_errors
def baseline_list_command(config: ConfigOption = Path(DEFAULT_CONFIG)) -> None:
    """List pinned baselines (and report corrupt files, exit 2)."""
    from monitor.analysis.baselines import BaselineError, iter_baselines

    rows, problems = [], []
    for _path, found in iter_baselines(_baselines_root(config)):
        if isinstance(found, Exception):
            problems.extend(found.problems)  # type: ignore[attr-defined]
            continue
        metric, value = next(iter(found.metrics.items()), ("-", None))
        rows.append(
            [
                found.model,
                found.evalset,
                found.strategy,
                str(found.run_id),
                metric,
                _format_metric(value),
                found.pinned_at[:16],
            ]
        )
    if rows:
        _print_table(
            "baselines",
            ["model", "evalset", "strategy", "run", "metric", "value ± stderr", "pinned (UTC)"],
            rows,
        )
    elif not problems:
        print("no baselines pinned")
    if problems:
        raise BaselineError(problems)


@baseline_app.command("unpin")
@handle_errors
def baseline_unpin_command(
    model: Annotated[str, typer.Argument()],
    evalset: Annotated[str, typer.Argument()],
    config: ConfigOption = Path(DEFAULT_CONFIG),
) -> None:
    """Remove a pinned baseline."""
    from monitor.analysis.baselines import unpin_baseline

    path = unpin_baseline(_baselines_root(config), model, evalset)
    print(f"unpinned {path}")


releases_app = typer.Typer(help="Base-model releases: list them, or scan the watched families now.")
app.add_typer(releases_app, name="releases")


def _release_rows(releases: Sequence[Any], cfg: Any) -> list[list[str]]:
    from monitor.service.releases.watch import challenger_job, model_name
    from monitor.store import as_utc

    return [
        [
            r.family,
            r.name,
            r.source,
            r.location if r.revision is None else f"{r.location}@{r.revision[:12]}",
            f"{as_utc(r.discovered_at):%Y-%m-%d %H:%M}",
            "pending" if r.evaluated_at is None else f"{as_utc(r.evaluated_at):%Y-%m-%d %H:%M}",
            challenger_job(model_name(cfg, r)),
        ]
        for r in releases
    ]


_RELEASE_COLUMNS = ["family", "release", "source", "where", "found (UTC)", "evaluated (UTC)", "job"]


def _release_dicts(releases: Sequence[Any]) -> list[dict[str, Any]]:
    keys = ("family", "name", "source", "location", "revision", "details", "discovered_at", "evaluated_at")
    return [{k: getattr(r, k) for k in keys} for r in releases]


@releases_app.command("list")
@handle_errors
def releases_list_command(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The releases found so far, and whether their challenger evaluation has run."""
    from monitor.store import Store

    cfg = _load_config(config)
    store = Store.open(cfg.database_url())
    try:
        releases = store.releases()
    finally:
        store.close()
    if as_json:
        print(json.dumps(_release_dicts(releases), default=json_default, indent=2))
    elif releases:
        _print_table("releases", _RELEASE_COLUMNS, _release_rows(releases, cfg))
    else:
        print("no releases found yet (families: with versions or a watch in the config)")


@releases_app.command("forget")
@handle_errors
def releases_forget_command(
    release: Annotated[str, typer.Argument(help="The release's name, as `monitor releases list` shows it.")],
    config: ConfigOption = Path(DEFAULT_CONFIG),
) -> None:
    """Forget a release (a folder dropped by mistake): no longer a challenger; its runs stay in the history.

    A watcher that still sees it finds it again: remove it from the source first.
    """
    from monitor.store import Store

    cfg = _load_config(config)
    store = Store.open(cfg.database_url())
    try:
        if not store.forget_release(release):
            known = ", ".join(r.name for r in store.releases()) or "none"
            raise NotFoundError(f"no release named {release!r}; stored releases: {known}")
    finally:
        store.close()
    _err(f"release {release} forgotten; its runs stay in the history")


@releases_app.command("scan")
@handle_errors
def releases_scan_command(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    run: Annotated[
        bool, typer.Option("--run/--no-run", help="Run the challenger evaluations of new releases here.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Scan every watched family now; evaluate what is new against the old base (as the daemon would)."""
    from monitor.service.after_job import make_notifier
    from monitor.service.releases.watch import ReleaseWatcher, effective_config, pending_challenger_jobs
    from monitor.store import Store, utcnow

    declared = _load_config(config)
    watched = [name for name, family in declared.families.items() if family.watch is not None]
    store = Store.open(declared.database_url())
    failed = False
    try:
        watcher = ReleaseWatcher(store, declared, notify=make_notifier(declared))
        new = watcher.register_configured()
        for family in watched:
            new += watcher.scan(family, utcnow())
            error = watcher.state[family].last_error
            if error:
                _err(f"families.{family}.watch: {error}")
                failed = True
        cfg = effective_config(declared, store.releases())
        jobs = pending_challenger_jobs(cfg, store.releases())
        if not as_json:
            if new:
                _print_table("new releases", _RELEASE_COLUMNS, _release_rows(new, cfg))
            else:
                _err(f"no new release in {len(watched)} watched famil{'y' if len(watched) == 1 else 'ies'}")
        if run and jobs:
            finished = _run_jobs(store, cfg, jobs, as_json=as_json)
            failed = failed or any(r.status != "succeeded" for r, _ in finished)
        elif as_json:
            print(
                json.dumps({"new": _release_dicts(new), "pending_jobs": jobs}, default=json_default, indent=2)
            )
        elif jobs:
            _err(
                f"challenger jobs pending: {', '.join(jobs)} (monitor run JOB, or a running daemon runs them)"
            )
    finally:
        store.close()
    if failed:
        raise typer.Exit(1)


@app.command("serve-openai")
@handle_errors
def serve_openai_command(
    models: Annotated[
        list[str],
        typer.Option("--model", help="NAME=BASE or NAME=BASE:ADAPTER (local folders); repeat for more."),
    ],
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    api_key_env: Annotated[
        str | None, typer.Option("--api-key-env", help="Require the key in this environment variable.")
    ] = None,
    latency: Annotated[float, typer.Option(min=0.0, help="Seconds added to every inference request.")] = 0.0,
    fail_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of inference requests answered with HTTP 500.")
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the fault draws.")] = 0,
    memoize: Annotated[
        bool, typer.Option(help="Answer a repeated request from memory (greedy answers never change).")
    ] = False,
) -> None:
    """Serve local HF models and LoRA adapters over an OpenAI-compatible API (tests, demos, benchmarks)."""
    import threading

    from monitor.errors import InputError
    from monitor.testing.openai_server import FaultPlan, FaultRule, OpenAIServer, load_served_model

    served = []
    for value in models:
        name, sep, source = value.partition("=")
        if not sep or not name or not source:
            raise InputError(f"--model {value!r}: use NAME=BASE or NAME=BASE:ADAPTER")
        base, _, adapter = source.partition(":")
        served.append(load_served_model(name, base, adapter or None))
    key = None
    if api_key_env is not None:
        key = os.environ.get(api_key_env)
        if not key:
            raise InputError(f"--api-key-env: environment variable {api_key_env} is not set")
    rules = (FaultRule("status", status=500, probability=fail_rate),) if fail_rate else ()
    server = OpenAIServer(
        served,
        host=host,
        port=port,
        api_key=key,
        faults=FaultPlan(latency_s=latency, rules=rules, seed=seed),
        memoize=memoize,
    )
    with server:
        _err(f"serving {', '.join(m.name for m in served)} at {server.url} (Ctrl-C stops)")
        threading.Event().wait()


@app.command("demo")
@handle_errors
def demo_command(
    workdir: Annotated[
        Path, typer.Option(help="Where the demo keeps its models, config and database.")
    ] = Path("demo-output"),
    rebuild: Annotated[bool, typer.Option(help="Rebuild the demo models even if cached.")] = False,
    once: Annotated[bool, typer.Option(help="Run every job once, show the status and exit.")] = False,
    port: Annotated[int, typer.Option(help="Port of the daemon's /metrics.")] = 9464,
) -> None:
    """Build the demo's small models (cached) and run the daemon on them with a fast schedule."""
    from monitor.demo.run import run_demo

    run_demo(workdir, rebuild=rebuild, once=once, port=port)


def version_callback(value: bool) -> None:
    if value:
        print(f"monitor {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Monitor fine-tuned language models as they age."""


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()
