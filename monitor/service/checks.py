"""What a valid schema can still hide: the cross-checks of a loaded configuration (``monitor check-config``).

Here in the service layer, not in :mod:`monitor.config`, because the checks
load the eval sets (evals) and resolve the webhook secrets (exporters); the
configuration package stays at the bottom and imports nothing above it.
"""

from __future__ import annotations

import os
from pathlib import Path

from monitor.config import MonitorConfig
from monitor.errors import ConfigError, EvalSetError, Problem
from monitor.evals.evalset import EvalSet, load_evalset, parse_strategy
from monitor.exporters.webhooks import resolve_secrets


def config_problems(cfg: MonitorConfig, config_path: Path) -> list[Problem]:
    """Problems a valid schema can still hide: missing eval sets, missing model folders, bad strategies."""
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
