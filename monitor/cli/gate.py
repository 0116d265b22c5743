"""``monitor gate``: a candidate against the pinned baseline or another model; the exit code is the verdict.

Exit codes: 0 passed, 1 regression, 6 inconclusive (an eval set cannot detect the
configured tolerance, or the runs are not comparable), 7 a run failed; 2 bad input,
3 a model that cannot load, 4 the database (as every command).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from monitor.cli.options import DEFAULT_CONFIG, ConfigOption, load_config_file
from monitor.cli.output import err, handle_errors
from monitor.errors import InputError, NotFoundError, Problem


@handle_errors
def gate_command(
    name: Annotated[
        str | None, typer.Argument(help="The candidate: a model named in the configuration.")
    ] = None,
    base: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Or a candidate not in the configuration: base model (directory or hub id), "
            "or the served model name with --endpoint.",
        ),
    ] = None,
    adapter: Annotated[str | None, typer.Option("--adapter", help="The candidate's PEFT adapter.")] = None,
    endpoint: Annotated[
        str | None, typer.Option("--endpoint", help="The candidate's OpenAI-compatible server (base URL).")
    ] = None,
    api_key_env: Annotated[
        str | None, typer.Option("--api-key-env", help="Environment variable holding the endpoint's API key.")
    ] = None,
    baseline_of: Annotated[
        str | None,
        typer.Option("--baseline-of", help="Whose pinned baselines to compare with (default: NAME)."),
    ] = None,
    against: Annotated[
        str | None, typer.Option("--against", help="Compare with this configured model, run now, instead.")
    ] = None,
    evalsets: Annotated[
        list[str] | None,
        typer.Option(
            "--evalset",
            help="A configured golden set (repeatable; default: all "
            "with a pinned baseline, or the jobs' sets with --against).",
        ),
    ] = None,
    tolerance: Annotated[
        float | None,
        typer.Option("--tolerance", min=0.0, max=1.0, help="Drop tolerated (default: regression.tolerance)."),
    ] = None,
    alpha: Annotated[
        float | None,
        typer.Option("--alpha", min=0.0, max=1.0, help="Significance level (default: regression.alpha)."),
    ] = None,
    prior_discordance: Annotated[
        float | None,
        typer.Option(
            "--prior-discordance",
            min=0.0,
            max=1.0,
            help="Share of items two runs of one model disagree on, when --db holds no re-run of the "
            "reference (default: runs taken as independent).",
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="For --model: auto, cpu, cuda, ...")] = "auto",
    dtype: Annotated[str, typer.Option(help="For --model: auto, float32, bfloat16, float16.")] = "auto",
    config: ConfigOption = Path(DEFAULT_CONFIG),
    db: Annotated[
        str | None,
        typer.Option("--db", help="Record the gate's runs here (default: a throwaway SQLite file)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
    junit: Annotated[Path | None, typer.Option("--junit", help="Write a JUnit XML report here.")] = None,
) -> None:
    """Gate a candidate model: exit 0 passed, 1 regression, 6 inconclusive, 7 a run failed."""
    from dataclasses import replace

    from monitor.analysis.baselines import baseline_path, load_baseline
    from monitor.evals.evalset import load_evalset
    from monitor.service.after_job import analysis_policy
    from monitor.service.gate import run_gate
    from monitor.service.runs import ModelPool, judge_specs
    from monitor.store import Store

    if alpha is not None and not 0.0 < alpha < 1.0:
        raise InputError(f"must be between 0 and 1 (exclusive), got {alpha}", "--alpha")
    cfg = load_config_file(config)
    candidate = _candidate(cfg, name, base, adapter, endpoint, api_key_env, device, dtype)
    reference_model = baseline_of or name
    if against is None and reference_model is None:
        raise InputError("a candidate given by --model needs --baseline-of MODEL or --against MODEL", "gate")
    if against is not None and baseline_of is not None:
        raise InputError("--against and --baseline-of are two references: give one", "gate")
    chosen = _evalset_names(cfg, evalsets, reference_model if against is None else None, against, name)
    sets = [load_evalset(cfg.resolve(cfg.evalsets[es])) for es in chosen]
    baselines = None
    other = None
    if against is None:
        assert reference_model is not None
        baselines = {
            es: load_baseline(baseline_path(cfg.baselines_dir(), reference_model, es)) for es in chosen
        }
    else:
        other = _configured(cfg, against)
    policy = analysis_policy(cfg.regression).regression
    policy = replace(
        policy,
        tolerance=policy.tolerance if tolerance is None else tolerance,
        alpha=policy.alpha if alpha is None else alpha,
        prior_discordance=prior_discordance,
    )
    with tempfile.TemporaryDirectory(prefix="monitor-gate-") as scratch:
        url = db or f"sqlite:///{Path(scratch) / 'gate.db'}"
        with Store.open(url) as store, ModelPool() as pool:
            report = run_gate(
                store,
                pool,
                candidate,
                sets,
                baselines=baselines,
                against=other,
                policy=policy,
                chunk_size=cfg.daemon.chunk_size,
                judge_specs=judge_specs(cfg),
            )
    if junit is not None:
        junit.parent.mkdir(parents=True, exist_ok=True)
        junit.write_text(report.junit_xml(), encoding="utf-8")
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for check in report.checks:
            print(f"{check.outcome:12s} {check.message}")
        print(report.summary)
    if report.outcome != "passed":
        err(f"gate {report.outcome} (exit {report.exit_code})")
    raise typer.Exit(report.exit_code)


def _configured(cfg: Any, name: str) -> Any:
    from monitor.service.gate import Contender
    from monitor.service.plan import model_spec

    if name not in cfg.models:
        raise NotFoundError(
            f"no model {name!r} in the configuration; configured: {', '.join(cfg.models) or 'none'}"
        )
    model = cfg.models[name]
    return Contender(name, model_spec(cfg, name), strategy=model.strategy, model_version=model.version)


def _candidate(
    cfg: Any,
    name: str | None,
    base: str | None,
    adapter: str | None,
    endpoint: str | None,
    api_key_env: str | None,
    device: str,
    dtype: str,
) -> Any:
    from monitor.backends import EndpointSpec, ModelSpec
    from monitor.service.gate import Contender

    if name is not None and (base or adapter or endpoint):
        raise InputError("give the candidate as a configured NAME or with --model, not both", "gate")
    if name is not None:
        return _configured(cfg, name)
    if base is None:
        raise InputError(
            "no candidate: give a configured model NAME or --model (with --adapter or --endpoint)", "gate"
        )
    if endpoint is not None:
        if adapter is not None:
            raise InputError(
                "--adapter is for local models; with --endpoint, --model names the served adapter", "gate"
            )
        spec = ModelSpec("openai", base, endpoint=EndpointSpec(base_url=endpoint, api_key_env=api_key_env))
        label = f"{base}@{endpoint}"
    else:
        spec = ModelSpec("hf", base, adapter, device=device, dtype=dtype)
        label = Path(base.rstrip("/")).name + (f"+{Path(adapter.rstrip('/')).name}" if adapter else "")
    return Contender(f"gate:{label}"[:200], spec)


def _evalset_names(
    cfg: Any, chosen: list[str] | None, baseline_model: str | None, against: str | None, name: str | None
) -> list[str]:
    from monitor.analysis.baselines import baseline_path

    if chosen:
        unknown = [es for es in chosen if es not in cfg.evalsets]
        if unknown:
            raise NotFoundError(
                f"unknown eval set(s) {', '.join(unknown)}; configured: {', '.join(cfg.evalsets) or 'none'}"
            )
        names = list(dict.fromkeys(chosen))
    elif baseline_model is not None:
        names = [es for es in cfg.evalsets if baseline_path(cfg.baselines_dir(), baseline_model, es).exists()]
        if not names:
            raise NotFoundError(
                f"no baseline pinned for model {baseline_model!r} under {cfg.baselines_dir()}: "
                f"pin one (monitor baseline pin {baseline_model} EVALSET) or give --against MODEL"
            )
    else:
        wanted = {against, name} - {None}
        names = list(
            dict.fromkeys(es for job in cfg.jobs.values() if wanted & set(job.models) for es in job.evalsets)
        ) or list(cfg.evalsets)
        if not names:
            raise InputError([Problem("evalsets", "no eval set configured to gate on")])
    if baseline_model is not None:
        missing = [es for es in names if not baseline_path(cfg.baselines_dir(), baseline_model, es).exists()]
        if missing:
            raise NotFoundError(
                f"no baseline pinned for model {baseline_model!r} on eval set(s) {', '.join(missing)} "
                f"(under {cfg.baselines_dir()})"
            )
    return names
