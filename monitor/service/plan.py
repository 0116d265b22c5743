"""Which runs a job asks for: the configuration turned into model specs, eval sets and shot counts.

Eval sets are loaded and validated before any run starts, so a bad set fails
the job at once with every problem listed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from monitor.backends import EndpointSpec, ModelSpec
from monitor.config import EndpointConfig, MonitorConfig
from monitor.errors import ConfigError, EvalSetError, NotFoundError, Problem
from monitor.evals.evalset import EvalSet, GenerationSpec, load_evalset, parse_strategy, strategy_name


@dataclass(frozen=True)
class RunPlan:
    """One run to make: a named model under a spec, an eval set, a shot count."""

    model_name: str
    spec: ModelSpec
    evalset: EvalSet
    fewshot_k: int
    trigger: str = "cli"
    job: str | None = None
    scheduled_for: datetime | None = None
    model_version: str | None = None

    @property
    def strategy(self) -> str:
        """The strategy's stored name (``zero-shot``, ``5-shot``)."""
        return strategy_name(self.fewshot_k)


def plan_key(plan: RunPlan) -> str:
    """How a fire lists a planned run: ``model/evalset/strategy``."""
    return f"{plan.model_name}/{plan.evalset.name}/{plan.strategy}"


def plan_runs(
    cfg: MonitorConfig, jobs: Sequence[str], trigger: str, scheduled_for: datetime | None = None
) -> list[RunPlan]:
    """The runs that ``jobs`` (all jobs when empty) ask for, eval sets loaded and validated first."""
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
            spec = model_spec(cfg, model_name)
            for es_name in job.evalsets:
                es = for_model(cfg, model_name, evalsets[es_name])
                for strategy in job.strategies or (model.strategy,):
                    k = parse_strategy(strategy, es)
                    es.render_fewshot_prefix(k)
                    plans.append(
                        RunPlan(
                            model_name,
                            spec,
                            es,
                            k,
                            trigger=trigger,
                            job=job_name,
                            scheduled_for=scheduled_for,
                            model_version=model.version,
                        )
                    )
    return plans


def for_model(cfg: MonitorConfig, model_name: str, evalset: EvalSet) -> EvalSet:
    """``evalset`` as model ``model_name`` is evaluated on it: a generation set's ``generation:``
    with the model's own ``generation:`` keys over it (production decoding wins).  The settings
    digest follows, so a changed model decoding never pairs with the old runs.

    Raises:
        ConfigError: the merged settings do not validate (one line naming the model's key).
    """
    extra = cfg.models[model_name].generation
    if not extra or evalset.task != "generate":
        return evalset
    own = evalset.spec.generation.model_dump(exclude_unset=True) if evalset.spec.generation else {}
    try:
        merged = GenerationSpec.model_validate({**own, **extra})
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) + ': ' if e['loc'] else ''}{e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise ConfigError(
            [Problem("", f"models.{model_name}.generation (on {evalset.name}): {reasons}")]
        ) from None
    spec = evalset.spec.model_copy(update={"generation": merged})
    return dataclasses.replace(evalset, spec=spec)


def chat_template_text(cfg: MonitorConfig, name: str) -> str | None:
    """The Jinja text of ``models.NAME.chat_template`` (a file, resolved against the config's folder).

    Raises:
        ConfigError: the file cannot be read or is not a Jinja template.
    """
    configured = cfg.models[name].chat_template
    if configured is None:
        return None
    path = cfg.resolve(configured)
    where = ""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        if isinstance(exc, FileNotFoundError):
            reason = "does not exist"
        elif isinstance(exc, OSError):
            reason = f"cannot be read ({exc.strerror})"
        else:
            reason = "is not UTF-8 text"
        raise ConfigError([Problem(where, f"models.{name}.chat_template: {path} {reason}")]) from None
    import jinja2

    try:
        jinja2.Environment().parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(
            [
                Problem(
                    where,
                    f"models.{name}.chat_template: {path} line {exc.lineno}: not a Jinja template: {exc.message}",
                )
            ]
        ) from None
    return text


def model_spec(cfg: MonitorConfig, name: str) -> ModelSpec:
    """The backend's spec of the configured model ``name`` (its folders resolved, its endpoint)."""
    model = cfg.models[name]
    base, adapter = cfg.model_source(name)
    return ModelSpec(
        model.backend,
        base,
        adapter,
        revision=model.revision,
        device=model.device,
        dtype=model.dtype,
        batch_tokens=model.batch_tokens,
        endpoint=endpoint_spec(model.endpoint, endpoint_tokenizer(cfg, name)) if model.endpoint else None,
        chat_template=chat_template_text(cfg, name),
    )


def endpoint_tokenizer(cfg: MonitorConfig, name: str) -> str | None:
    """``models.NAME.endpoint.tokenizer``: a folder resolved against the config's, else the name as given."""
    endpoint = cfg.models[name].endpoint
    if endpoint is None or endpoint.tokenizer is None:
        return None
    given = endpoint.tokenizer
    if given.startswith(("/", ".", "~")) or cfg.resolve(given).exists():
        return str(cfg.resolve(given))
    return given


def endpoint_spec(endpoint: EndpointConfig, tokenizer: str | None = None) -> EndpointSpec:
    """The ``openai`` backend's connection settings from a model's ``endpoint:`` block (``tokenizer``
    resolved by the caller)."""
    return EndpointSpec(
        base_url=endpoint.base_url,
        api_key_env=endpoint.api_key_env,
        api=endpoint.api,
        headers=tuple(sorted(endpoint.headers.items())),
        timeout_s=endpoint.timeout.total_seconds(),
        max_concurrency=endpoint.max_concurrency,
        requests_per_minute=endpoint.requests_per_minute,
        tokens_per_minute=endpoint.tokens_per_minute,
        max_retries=endpoint.max_retries,
        mc_method=endpoint.mc_method,
        tokenizer=tokenizer,
    )
