"""The ``monitor`` command line: the composition root that wires config, store, models and runner.

Every :class:`~monitor.errors.MonitorError` becomes a message on stderr (one
line per problem) and its exit code; tracebacks are left for bugs.
"""

from __future__ import annotations

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

from . import __version__
from .backends import ModelSpec
from .errors import ConfigError, EvalSetError, MonitorError, NotFoundError, Problem
from .evalsets import EvalSet, load_evalset, parse_strategy, strategy_name

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


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _clean(value: Any) -> Any:
    """NaN is not JSON: replace it with null everywhere."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


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
    from .backends import load_backend
    from .runner import evaluate, summarize

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
        print(json.dumps(_clean(summary), default=_json_default, indent=2))
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
            fh.write(json.dumps(_clean(line), ensure_ascii=False) + "\n")
    tmp.replace(path)


def _eval_recorded(
    db: str, name: str, spec: ModelSpec, es: EvalSet, k: int, chunk: int, as_json: bool
) -> None:
    from .execution import ModelPool, RunPlan, execute_run
    from .store import Store

    store = Store.open(db)
    pool = ModelPool()
    try:
        with _progress(len(es.items), f"{name} on {es.name}", not as_json) as progress:
            run = execute_run(store, pool, RunPlan(name, spec, es, k), chunk_size=chunk, progress=progress)
    finally:
        pool.close()
    if as_json:
        print(json.dumps(_clean(_run_dict(run, name)), default=_json_default, indent=2))
    else:
        _print_runs([(run, name)])
    if run.status != "succeeded":
        raise typer.Exit(1)


# --- configuration-driven commands --------------------------------------------------------------------


def _load_config(path: Path) -> Any:
    from .config import load_config

    return load_config(path)


def _store_for(config_path: Path, db: str | None) -> Any:
    from .store import Store

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
    problems: list[Problem] = []
    loaded: dict[str, EvalSet] = {}
    for name, path in cfg.evalsets.items():
        try:
            es = load_evalset(cfg.resolve(path))
        except EvalSetError as exc:
            problems.extend(exc.problems)
            continue
        loaded[name] = es
    for name in cfg.models:
        base, adapter = cfg.model_source(name)
        if base.startswith(("/", ".")) and not Path(base).exists():
            problems.append(Problem(f"{config_path}", f"models.{name}.base: {base} does not exist"))
        if adapter is not None and not Path(adapter).exists():
            problems.append(Problem(f"{config_path}", f"models.{name}.adapter: {adapter} does not exist"))
    for job_name, job in cfg.jobs.items():
        for model_name in job.models:
            strategies = job.strategies or (cfg.models[model_name].strategy,)
            for es_name in job.evalsets:
                found = loaded.get(es_name)
                if found is None:
                    continue
                for strategy in strategies:
                    try:
                        found.render_fewshot_prefix(parse_strategy(strategy, found))
                    except EvalSetError as exc:
                        problems.append(
                            Problem(
                                str(config_path),
                                f"jobs.{job_name}: {strategy} on {es_name}: {exc.problems[0].message}",
                            )
                        )
    return problems


def plan_runs(cfg: Any, jobs: Sequence[str], trigger: str) -> list[Any]:
    """The runs that ``jobs`` (all jobs when empty) ask for, eval sets loaded and validated first."""
    from .execution import RunPlan

    unknown = [j for j in jobs if j not in cfg.jobs]
    if unknown:
        raise NotFoundError(
            f"unknown job(s) {', '.join(unknown)}; configured: {', '.join(cfg.jobs) or 'none'}"
        )
    names = list(jobs) or list(cfg.jobs)
    evalsets: dict[str, EvalSet] = {}
    problems: list[Problem] = []
    for job_name in names:
        for es_name in cfg.jobs[job_name].evalsets:
            if es_name not in evalsets:
                try:
                    evalsets[es_name] = load_evalset(cfg.resolve(cfg.evalsets[es_name]))
                except EvalSetError as exc:
                    problems.extend(exc.problems)
    if problems:
        raise EvalSetError(problems)
    plans = []
    for job_name in names:
        job = cfg.jobs[job_name]
        for model_name in job.models:
            model = cfg.models[model_name]
            base, adapter = cfg.model_source(model_name)
            spec = ModelSpec(
                model.backend,
                base,
                adapter,
                revision=model.revision,
                device=model.device,
                dtype=model.dtype,
                batch_tokens=model.batch_tokens,
            )
            for es_name in job.evalsets:
                es = evalsets[es_name]
                for strategy in job.strategies or (model.strategy,):
                    k = parse_strategy(strategy, es)
                    es.render_fewshot_prefix(k)
                    plans.append(RunPlan(model_name, spec, es, k, trigger=trigger, job=job_name))
    return plans


@app.command("run")
@handle_errors
def run_command(
    jobs: Annotated[list[str] | None, typer.Argument(help="Jobs to run (default: all).")] = None,
    config: ConfigOption = Path(DEFAULT_CONFIG),
    as_json: Annotated[bool, typer.Option("--json", help="Print the runs as JSON.")] = False,
) -> None:
    """Run the configured jobs once and record every run."""
    from .execution import ModelPool, execute_run
    from .store import Store

    cfg = _load_config(config)
    plans = plan_runs(cfg, jobs or [], trigger="cli")
    store = Store.open(cfg.database_url())
    pool = ModelPool(max_models=1)
    finished = []
    try:
        for plan in plans:
            label = f"{plan.model_name} on {plan.evalset.name} ({strategy_name(plan.fewshot_k)})"
            with _progress(len(plan.evalset.items), label, not as_json) as progress:
                run = execute_run(store, pool, plan, progress=progress)
            finished.append((run, plan.model_name))
            if not as_json:
                _err(f"{label}: {run.status}" + (f" ({run.error})" if run.error else ""))
    finally:
        pool.close()
        store.close()
    if as_json:
        print(json.dumps([_clean(_run_dict(r, n)) for r, n in finished], default=_json_default, indent=2))
    else:
        _print_runs(finished)
    if any(run.status != "succeeded" for run, _ in finished):
        raise typer.Exit(1)


def _run_dict(run: Any, model_name: str) -> dict[str, Any]:
    from .store import as_utc

    return {
        "id": run.id,
        "model": model_name,
        "evalset": run.evalset_name,
        "evalset_version": run.evalset_version,
        "strategy": run.strategy,
        "job": run.job,
        "trigger": run.trigger,
        "status": run.status,
        "metrics": run.metrics,
        "items_total": run.items_total,
        "items_done": run.items_done,
        "items_failed": run.items_failed,
        "prompt_tokens": run.prompt_tokens,
        "completion_tokens": run.completion_tokens,
        "model_fingerprint": run.model_fingerprint,
        "started_at": as_utc(run.started_at),
        "finished_at": as_utc(run.finished_at),
        "duration_s": run.duration_s,
        "load_s": run.load_s,
        "error": run.error,
    }


def _primary(run: Any) -> tuple[str, dict[str, Any] | None]:
    if not run.metrics:
        return "-", None
    name = next(iter(run.metrics))
    return name, run.metrics[name]


def _print_runs(runs: Sequence[tuple[Any, str]]) -> None:
    rows = []
    for run, name in runs:
        metric, value = _primary(run)
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
    from .store import as_utc

    store = _store_for(config, db)
    series = store.latest_per_series()
    store.close()
    out = []
    rows = []
    for s in series:
        metric, value = _primary(s.latest)
        prev_value = s.previous.metrics.get(metric) if s.previous is not None and metric != "-" else None
        delta = None
        if value and prev_value and value.get("value") is not None and prev_value.get("value") is not None:
            delta = value["value"] - prev_value["value"]
        out.append(
            {
                "model": s.model,
                "evalset": s.latest.evalset_name,
                "strategy": s.latest.strategy,
                "status": s.latest.status,
                "run": s.latest.id,
                "metric": metric,
                "value": value,
                "previous_run": s.previous.id if s.previous else None,
                "change": delta,
                "finished_at": as_utc(s.latest.finished_at),
                "error": s.latest.error,
            }
        )
        rows.append(
            [
                s.model,
                s.latest.evalset_name,
                s.latest.strategy,
                s.latest.status,
                metric,
                _format_metric(value),
                "-" if delta is None else f"{delta:+.4f}",
                (as_utc(s.latest.finished_at) or as_utc(s.latest.started_at)).strftime("%Y-%m-%d %H:%M"),  # type: ignore[union-attr]
            ]
        )
    if as_json:
        print(json.dumps(_clean(out), default=_json_default, indent=2))
        return
    if not rows:
        print("no runs recorded yet")
        return
    _print_table(
        "status",
        ["model", "evalset", "strategy", "status", "metric", "value ± stderr", "change", "when (UTC)"],
        rows,
    )


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
        print(json.dumps([_clean(_run_dict(r, n)) for r, n in runs], default=_json_default, indent=2))
        return
    rows = []
    for run, _ in runs:
        metric, value = _primary(run)
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


@app.command("demo")
@handle_errors
def demo_command(
    workdir: Annotated[
        Path, typer.Option(help="Where the demo keeps its models, config and database.")
    ] = Path("demo-output"),
    rebuild: Annotated[bool, typer.Option(help="Rebuild the demo models even if cached.")] = False,
) -> None:
    """Build the demo's small models (cached), evaluate them on the shipped eval sets, show the status."""
    from .demo.run import run_demo

    run_demo(workdir, rebuild=rebuild)


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
