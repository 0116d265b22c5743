"""``monitor eval``: one model on one eval set, once, without a configuration file."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from monitor.api.views import clean, json_default, run_to_dict
from monitor.backends import ModelSpec
from monitor.cli.output import (
    format_metric,
    handle_errors,
    print_runs,
    print_table,
    progress_bar,
)
from monitor.errors import EvalSetError, NotFoundError, Problem
from monitor.evals.evalset import SPEC_FILE, EvalSet, load_evalset, strategy_name
from monitor.evals.results import eval_summary, write_results


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
    show_prompts: Annotated[
        int,
        typer.Option(
            "--show-prompts",
            min=0,
            help="Print the first N prompts exactly as the model gets them (chat template applied), to stderr.",
        ),
    ] = 0,
    db: Annotated[str | None, typer.Option("--db", help="Also record the run in this database URL.")] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Model name for --db (default: derived).")
    ] = None,
    judge_model: Annotated[
        list[str] | None,
        typer.Option(
            "--judge-model",
            help="The hf model (a local directory or a hub id) a judge metric's model: stands for: "
            "NAME=PATH for one name, PATH for every judge; repeatable.",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="A monitor configuration whose models: the judges are looked up in."
        ),
    ] = None,
) -> None:
    """Evaluate one model on one eval set, once, without a configuration file."""
    from monitor.backends import load_backend
    from monitor.evals.loop import chat_setup, evaluate, summarize

    started = time.perf_counter()
    es = load_evalset(evalset)
    k = es.default_fewshot if fewshot is None else fewshot
    es.render_fewshot_prefix(k)  # an impossible shot count is an input error, before loading anything
    spec = ModelSpec("hf", model, adapter, device=device, dtype=dtype, batch_tokens=batch_tokens)
    judges_for = judge_specs_for(es, judge_model or [], config, device=device, dtype=dtype)
    if db is not None:
        _eval_recorded(
            db, name or _derived_name(model, adapter), spec, es, k, batch_size, as_json, judges_for
        )
        return
    load_started = time.perf_counter()
    backend = load_backend(spec)
    load_s = time.perf_counter() - load_started
    try:
        chat = chat_setup(backend, es)  # format: chat on a model without a template: an input error
    except BaseException:
        backend.close()
        raise
    if show_prompts:
        _show_prompts(backend, es, k, chat, show_prompts)
    fingerprint = backend.fingerprint()
    with _judges(es, judges_for) as judges:
        context = None
        if judges is not None:
            from monitor.evals.scorers import ScorerContext

            context = ScorerContext(es.path, backend_for=judges.models)
        with progress_bar(len(es.items), f"{es.name} {strategy_name(k)}", not as_json) as progress:
            outcome = evaluate(
                backend, es, fewshot_k=k, chunk_size=batch_size, progress=progress, scorer_context=context
            )
        judged = judges.record({}) if judges is not None else {}
    metrics = summarize(outcome.results, es.metrics)
    total_s = time.perf_counter() - started
    if output is not None:
        write_results(output, es.task, outcome.results)
    summary = eval_summary(
        base=model,
        adapter=adapter,
        fingerprint=fingerprint,
        evalset=es,
        strategy=strategy_name(k),
        fewshot_k=k,
        metrics={m: v.to_dict() for m, v in metrics.items()},
        outcome=outcome,
        load_s=load_s,
        total_s=total_s,
        backend=backend.describe(),
    )
    summary |= judged
    seeds = es.draw_seeds(k)
    if len(seeds) > 1:
        from monitor.evals.results import draw_spread, item_details

        summary["fewshot_draws"] = draw_spread(
            (item_details(r) for r in outcome.results if not r.error), es.metrics, seeds
        )
    backend.close()
    if as_json:
        print(json.dumps(clean(summary), default=json_default, indent=2))
        return
    rows = [[m, format_metric(v.to_dict()), str(v.n)] for m, v in metrics.items()]
    print_table(
        f"{es.name} ({strategy_name(k)}, {len(es.items)} items)", ["metric", "value ± stderr", "n"], rows
    )
    _print_judges(judged)
    _print_draws(summary.get("fewshot_draws"))
    failed = f", {outcome.failed} items failed" if outcome.failed else ""
    print(
        f"eval {outcome.eval_s:.2f}s, load {load_s:.2f}s{failed}; eval set version {es.version[:12]}; model {fingerprint.digest[:12]}"
    )


def _print_draws(spread: dict[str, Any] | None) -> None:
    """One line per metric: how the score moves with the few-shot examples drawn."""
    if not spread:
        return
    seeds = spread["seeds"]
    for metric, found in spread["metrics"].items():
        each = ", ".join(f"{score:.3f}" for score in found["scores"])
        print(
            f"{metric} over {len(seeds)} few-shot draws (seeds {seeds[0]}..{seeds[-1]}): "
            f"{found['min']:.3f} to {found['max']:.3f}, sd {found['sd']:.3f} ({each})"
        )


def _show_prompts(backend: Any, es: EvalSet, k: int, chat: Any, n: int) -> None:
    """The first ``n`` items' prompts as the model gets them, each under a header line, on stderr."""
    from monitor.evals.loop import render_item

    for item in es.items[:n]:
        rendered = render_item(backend, es, item, k, chat)
        shown = (
            rendered.text
            if rendered.text is not None
            else json.dumps(
                [{"role": r, "content": c} for r, c in rendered.messages], ensure_ascii=False, indent=2
            )
        )
        typer.echo(f"--- prompt of item {item.id} ({es.name}, {strategy_name(k)}) ---", err=True)
        typer.echo(shown, err=True)
        if es.task == "multiple_choice":
            typer.echo(f"--- scored continuations: {list(es.continuations(item))}", err=True)
    typer.echo("--- end of prompts ---", err=True)


def _derived_name(model: str, adapter: str | None) -> str:
    name = Path(model.rstrip("/")).name
    return f"{name}+{Path(adapter.rstrip('/')).name}" if adapter else name


def judge_specs_for(
    es: EvalSet, judge_model: list[str], config: Path | None, *, device: str = "auto", dtype: str = "auto"
) -> Callable[[str], ModelSpec] | None:
    """The specs of the eval set's judge models from ``--judge-model`` and ``--config`` (None: no judge).

    ``--judge-model NAME=PATH`` names one judge model, ``--judge-model PATH`` stands for every
    judge; a configuration's ``models:`` give the others (an hf or openai model, as configured).

    Raises:
        EvalSetError: a judge metric's model is none of those (one line per metric, located).
    """
    judged = [(index, m) for index, m in enumerate(es.metric_specs) if m.name == "judge"]
    if not judged:
        return None
    named: dict[str, str] = {}
    every: str | None = None
    for value in judge_model:
        key, sep, path = value.partition("=")
        if sep and key and path:
            named[key] = path
        else:
            every = value
    cfg = None
    if config is not None:
        from monitor.cli.options import load_config_file

        cfg = load_config_file(config)

    def spec(model: str) -> ModelSpec:
        if model in named:
            return ModelSpec("hf", named[model], device=device, dtype=dtype)
        if cfg is not None and model in cfg.models:
            from monitor.service.plan import model_spec

            return model_spec(cfg, model)
        if every is not None:
            return ModelSpec("hf", every, device=device, dtype=dtype)
        raise NotFoundError(f"the judge model {model!r} is not configured")

    known = sorted({*named, *(cfg.models if cfg is not None else ())})
    problems = []
    for index, metric in judged:
        model = metric.options.get("model")
        if every is None and model not in known:
            listed = f" (configured: {', '.join(known)})" if known else ""
            problems.append(
                Problem(
                    str(es.path / SPEC_FILE),
                    f"metrics.{index}.model: judge model {model!r} is not configured{listed}: give "
                    "--judge-model PATH (or NAME=PATH), or --config with a monitor.yaml that defines it",
                )
            )
    if problems:
        raise EvalSetError(problems)
    return spec


@contextmanager
def _judges(es: EvalSet, specs: Callable[[str], ModelSpec] | None) -> Iterator[Any]:
    """The eval set's judges for ``monitor eval`` (None without any), loaded now and closed at the end."""
    if specs is None:
        yield None
        return
    from monitor.service.runs import ModelPool, judge_models, judge_run

    with ModelPool(max_models=len(judge_models(es))) as pool, contextlib.ExitStack() as pins:
        yield judge_run(pool, pins, es, specs)


def _print_judges(judged: dict[str, Any]) -> None:
    """The judges' agreement with people (their calibration), one row per judged metric."""
    rows = []
    for key, judge in (judged.get("judges") or {}).items():
        cal = judge.get("calibration") or {}
        if "error" in cal:
            rows.append([key, str(judge.get("model")), "-", "-", "-", cal["error"][:60]])
            continue
        if not cal:
            rows.append([key, str(judge.get("model")), "-", "-", "-", "no calibration file"])
            continue
        kappa = cal.get("kappa")
        floor = float(cal.get("min_agreement", 0.0))
        note = "below min_agreement: verdicts unreliable" if kappa is None or kappa < floor else "ok"
        rows.append(
            [
                key,
                str(judge.get("model")),
                "-" if kappa is None else f"{kappa:.3f}",
                f"{cal.get('accuracy', 0.0):.1%}",
                str(cal.get("n")),
                note,
            ]
        )
    if rows:
        print_table("judge agreement with people", ["metric", "judge", "kappa", "accuracy", "n", ""], rows)
    usage = judged.get("judge_usage") or {}
    for model, used in usage.items():
        print(
            f"judge {model}: {used.get('requests', 0)} requests, {used.get('prompt_tokens', 0)} prompt "
            f"and {used.get('completion_tokens', 0)} completion tokens"
        )


def _eval_recorded(
    db: str,
    name: str,
    spec: ModelSpec,
    es: EvalSet,
    k: int,
    chunk: int,
    as_json: bool,
    judges_for: Callable[[str], ModelSpec] | None = None,
) -> None:
    from monitor.service.plan import RunPlan
    from monitor.service.runs import ModelPool, execute_run, judge_models
    from monitor.store import Store

    with (
        Store.open(db) as store,
        ModelPool(max_models=1 + len(judge_models(es))) as pool,
        progress_bar(len(es.items), f"{name} on {es.name}", not as_json) as progress,
    ):
        run = execute_run(
            store,
            pool,
            RunPlan(name, spec, es, k),
            chunk_size=chunk,
            progress=progress,
            judge_specs=judges_for,
        )
    if as_json:
        print(json.dumps(clean(run_to_dict(run, name)), default=json_default, indent=2))
    else:
        print_runs([(run, name)])
    if run.status != "succeeded":
        raise typer.Exit(1)
