"""``monitor.yaml``: the schema, ``${ENV}`` interpolation and the loader.

The schema refuses unknown keys; every problem comes out as one line with the
file, the line and the dotted key path.  Relative paths are resolved against
the configuration file's directory.  The loaded :class:`MonitorConfig` is frozen.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from monitor._yaml import LocatedYaml, load_yaml, pydantic_problems, read_text
from monitor.analysis.costs import CostsConfig
from monitor.analysis.production import DriftConfig
from monitor.errors import ConfigError, Problem
from monitor.exporters.webhooks import WebhooksConfig
from monitor.schedule import cron_trigger, parse_interval

CONFIG_VERSION = 1
DEFAULT_DATABASE = "sqlite:///monitor.db"
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"

Name = Annotated[str, Field(pattern=_NAME, max_length=200)]


def _check_interval(value: str) -> str:
    parse_interval(value)
    return value


def _check_strategy(value: str) -> str:
    if value in ("zero-shot", "evalset") or (value.endswith("-shot") and value[:-5].isdigit()):
        return value
    raise ValueError(f"{value!r} is not a prompt strategy; use zero-shot, N-shot (like 5-shot) or evalset")


Interval = Annotated[str, AfterValidator(_check_interval)]
Strategy = Annotated[str, AfterValidator(_check_strategy)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EndpointConfig(_Strict):
    """``models.<name>.endpoint``: an OpenAI-compatible server (vLLM, TGI, Ollama, llama.cpp, hosted APIs)."""

    #: Up to the version prefix, like ``http://vllm:8000/v1``.
    base_url: Annotated[str, Field(pattern=r"^https?://[^\s]+$")]
    #: Name of the environment variable holding the API key; the key itself is never written anywhere.
    api_key_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    #: ``completions`` (``/v1/completions``) or ``chat`` (``/v1/chat/completions``) for generation.
    api: Literal["completions", "chat"] = "completions"
    #: Extra request headers (not secret: they are recorded by name; the key goes in ``api_key_env``).
    headers: dict[str, str] = Field(default_factory=dict)
    #: Per-request timeout.
    timeout: Interval = "60s"
    max_concurrency: Annotated[int, Field(ge=1, le=1024)] = 8
    requests_per_minute: Annotated[float, Field(gt=0)] | None = None
    tokens_per_minute: Annotated[float, Field(gt=0)] | None = None
    max_retries: Annotated[int, Field(ge=0, le=20)] = 5
    #: Multiple choice by prompt log-probabilities (``logprobs``), by generating the answer
    #: (``generate``), or ``auto``: log-probabilities when the server returns them.
    mc_method: Literal["auto", "logprobs", "generate"] = "auto"


class ModelConfig(_Strict):
    """A model to evaluate: a base, an optional adapter, the backend that serves it.

    For ``backend: openai``, ``base`` is the served model name (as ``/v1/models``
    lists it: a base model or a LoRA adapter's name) and ``endpoint`` says where.
    """

    backend: Literal["hf", "openai"] = "hf"
    base: str
    adapter: str | None = None
    #: Your version of this model; new weights under the same version are reported as an integrity problem.
    version: str | None = None
    revision: str | None = None
    strategy: Strategy = "zero-shot"
    device: str = "auto"
    dtype: str = "auto"
    batch_tokens: Annotated[int, Field(ge=64)] | None = None
    #: Production inputs to watch for drift, and the reference they are compared with.
    drift: DriftConfig | None = None
    endpoint: EndpointConfig | None = None

    @model_validator(mode="after")
    def _backend_settings(self) -> ModelConfig:
        if self.backend == "openai":
            if self.endpoint is None:
                raise ValueError("an openai model needs 'endpoint' (base_url and friends)")
            local = sorted({"adapter", "revision", "device", "dtype", "batch_tokens"} & self.model_fields_set)
            if local:
                raise ValueError(
                    f"{', '.join(local)}: not for openai models (the server loads the weights; "
                    "name a served adapter in 'base')"
                )
        elif self.endpoint is not None:
            raise ValueError("'endpoint' is only for backend: openai")
        return self


class ScheduleConfig(_Strict):
    """When a job runs: ``every: 6h`` or ``cron: "0 3 * * *"`` (in ``timezone``)."""

    every: Interval | None = None
    cron: str | None = None
    timezone: str = "UTC"
    #: How late a missed run may still start (missed fires coalesce into one run).
    grace: Interval = "1h"
    #: Run once when the daemon starts and the job has never run on schedule.
    run_at_start: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> ScheduleConfig:
        if (self.every is None) == (self.cron is None):
            raise ValueError("give exactly one of 'every' or 'cron'")
        if self.cron is not None:
            cron_trigger(self.cron, self.timezone)
        return self


class JobConfig(_Strict):
    """Which models run on which eval sets, and when."""

    models: Annotated[tuple[Name, ...], Field(min_length=1)]
    evalsets: Annotated[tuple[Name, ...], Field(min_length=1)]
    strategies: tuple[Strategy, ...] | None = None
    schedule: ScheduleConfig | None = None


class DaemonConfig(_Strict):
    """``daemon:``: where the daemon listens and how it behaves."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 9464
    #: Name of the environment variable holding the API's bearer token (unset: the API is open).
    api_token_env: str = "MONITOR_API_TOKEN"
    max_loaded_models: Annotated[int, Field(ge=1)] = 2
    #: Items evaluated and committed at a time: a shutdown waits for at most one chunk.
    chunk_size: Annotated[int, Field(ge=1, le=4096)] = 16
    max_item_error_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    lease_ttl: Interval = "30s"
    poll_interval: Interval = "1s"
    shutdown_timeout: Interval = "9s"


class OpenAIWatchConfig(_Strict):
    """Where an OpenAI-compatible server lists its models (``GET {base_url}/models``)."""

    base_url: str
    #: Name of the environment variable holding the API key (the key itself is never stored).
    api_key_env: str | None = None
    timeout: Interval = "30s"


class WatchConfig(_Strict):
    """``families.<name>.watch``: where new releases of a base-model family appear.

    Give exactly one source: ``directory`` (a folder where new model folders
    appear), ``openai`` (a server whose model list grows) or ``hub`` (a hub
    repository whose new revisions are releases).
    """

    directory: str | None = None
    openai: OpenAIWatchConfig | None = None
    hub: str | None = None
    #: The hub branch or tag whose new commits are releases.
    hub_ref: str = "main"
    #: Shell-style pattern over folder names or served model ids; others are ignored.
    pattern: str = "*"
    every: Interval = "10m"
    #: A folder still being written to within this long is looked at again at the next scan.
    settle: Interval = "30s"
    #: Fields of the ``models:`` entry made for each release found (strategy, dtype, backend settings).
    model: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> WatchConfig:
        given = [k for k in ("directory", "openai", "hub") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'directory', 'openai' or 'hub'")
        if "base" in self.model:
            raise ValueError("model.base is set by the watcher for each release; leave it out")
        try:
            ModelConfig.model_validate(self.release_model("release", "0" * 40))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"model.{where}: {first['msg']}".replace("model.: ", "model: ")) from None
        return self

    def release_model(self, location: str, revision: str | None = None) -> dict[str, Any]:
        """The ``models:`` entry of a release found at ``location``: ``model:`` plus where it is.

        A release listed by an OpenAI-compatible server is served by it: ``backend: openai``, the
        served id as ``base``, and the watched server as its ``endpoint`` (fields given under
        ``model.endpoint`` win, such as ``mc_method``).  A hub release is pinned to its commit.
        """
        data: dict[str, Any] = {**self.model, "base": location}
        if self.openai is not None:
            data.setdefault("backend", "openai")
            server = {"base_url": self.openai.base_url}
            if self.openai.api_key_env:
                server["api_key_env"] = self.openai.api_key_env
            data["endpoint"] = {**server, **(self.model.get("endpoint") or {})}
        elif self.hub is not None and revision is not None:
            data["revision"] = revision
        return data

    @property
    def source(self) -> str:
        return "directory" if self.directory is not None else "openai" if self.openai is not None else "hub"


class FamilyConfig(_Strict):
    """``families.<name>``: the versions of a base model, oldest first, and where new ones appear."""

    #: ``models:`` entries of the family's releases registered by hand, oldest first.
    versions: tuple[Name, ...] = ()
    watch: WatchConfig | None = None
    #: Evaluate every release again with the old base on this schedule (golden sets are refreshed,
    #: releases are not); unset, each release is evaluated once, when it is found.
    reevaluate: ScheduleConfig | None = None


class FinetuneConfig(_Strict):
    """``finetunes.<name>``: a deployed fine-tune, its lineage, and the challengers it is weighed against."""

    #: The deployed fine-tune: a ``models:`` entry (a base plus an adapter, or a full fine-tune).
    model: Name
    #: The ``models:`` entry of the base it was trained from, evaluated like the challengers.
    base_model: Name
    #: Its golden eval sets.
    evalsets: Annotated[tuple[Name, ...], Field(min_length=1)]
    #: ``models:`` entries of newer base releases to weigh it against.
    challengers: tuple[Name, ...] = ()
    #: The base-model family: its versions after ``base_model``, and the releases its watcher finds,
    #: are challengers too.
    family: Name | None = None
    #: How challengers and the old base are prompted (zero-shot and few-shot).
    strategies: tuple[Strategy, ...] = ("zero-shot", "5-shot")
    trained_on: str | None = None
    #: Retire when few-shot on a newer base is within this of the fine-tune, significantly.
    retire_margin: Annotated[float, Field(ge=0.0, le=1.0)] = 0.02
    #: Re-base when a newer base beats the old one by more than this, significantly.
    rebase_margin: Annotated[float, Field(ge=0.0, le=1.0)] = 0.02
    #: Volume, prices and the cost of a re-train: the cost case of every option.
    costs: CostsConfig | None = None


class RegressionConfig(_Strict):
    """``regression:``: when a drop is a regression, and when behaviour has moved."""

    #: Drops smaller than this (in the metric's units: 0.02 is 2 points of accuracy) are tolerated.
    tolerance: Annotated[float, Field(ge=0.0, le=1.0)] = 0.02
    #: Significance level, after Holm's correction across a model's metrics and eval sets.
    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05
    #: Consecutive significant drops before a regression is declared (one makes it "suspect").
    confirmations: Annotated[int, Field(ge=1, le=100)] = 2
    #: Below this share of predictions identical to the baseline's, behaviour has drifted.
    min_agreement: Annotated[float, Field(ge=0.0, le=1.0)] = 0.9
    behaviour_alpha: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.01
    bootstrap_resamples: Annotated[int, Field(ge=200, le=200_000)] = 5000
    seed: int = 0


class MonitorConfig(_Strict):
    """The whole ``monitor.yaml``."""

    version: Literal[1] = 1
    database: str = DEFAULT_DATABASE
    models: dict[Name, ModelConfig] = Field(default_factory=dict)
    evalsets: dict[Name, str] = Field(default_factory=dict)
    jobs: dict[Name, JobConfig] = Field(default_factory=dict)
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    regression: RegressionConfig = Field(default_factory=RegressionConfig)
    finetunes: dict[Name, FinetuneConfig] = Field(default_factory=dict)
    families: dict[Name, FamilyConfig] = Field(default_factory=dict)
    webhooks: WebhooksConfig = Field(default_factory=WebhooksConfig)
    #: Where pinned baselines live (``<baselines>/<model>/<evalset>.json``), relative to this file.
    baselines: str = "baselines"
    #: Directory the file was loaded from; relative paths resolve against it.
    root: Path = Path()

    @field_validator("database")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if "://" not in value:
            raise ValueError(f"{value!r} is not a database URL (like sqlite:///monitor.db)")
        return value

    @model_validator(mode="after")
    def _references(self) -> MonitorConfig:
        missing = []
        for job_name, job in self.jobs.items():
            missing += [
                f"jobs.{job_name}.models: unknown model {m!r}" for m in job.models if m not in self.models
            ]
            missing += [
                f"jobs.{job_name}.evalsets: unknown eval set {e!r}"
                for e in job.evalsets
                if e not in self.evalsets
            ]
        for ft_name, ft in self.finetunes.items():
            for key, names, known in (
                ("model", (ft.model,), self.models),
                ("base_model", (ft.base_model,), self.models),
                ("challengers", ft.challengers, self.models),
                ("evalsets", ft.evalsets, self.evalsets),
            ):
                kind = "eval set" if key == "evalsets" else "model"
                missing += [
                    f"finetunes.{ft_name}.{key}: unknown {kind} {n!r}" for n in names if n not in known
                ]
            if ft.family is not None and ft.family not in self.families:
                missing.append(f"finetunes.{ft_name}.family: unknown family {ft.family!r}")
        for family_name, family in self.families.items():
            missing += [
                f"families.{family_name}.versions: unknown model {m!r}"
                for m in family.versions
                if m not in self.models
            ]
        if missing:
            raise ValueError("; ".join(missing))
        return self

    def resolve(self, path: str) -> Path:
        """A configured path, relative to the configuration file."""
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else (self.root / candidate)

    def model_source(self, name: str) -> tuple[str, str | None]:
        """Base and adapter of a model, local paths resolved (a hub id stays as it is)."""
        model = self.models[name]
        if model.backend == "openai":  # a served model name, not a path
            return model.base, None
        base = str(self.resolve(model.base)) if _looks_local(model.base, self.root) else model.base
        adapter = str(self.resolve(model.adapter)) if model.adapter else None
        return base, adapter

    def baselines_dir(self) -> Path:
        return self.resolve(self.baselines)

    def analysis_policy(self) -> Any:
        """The thresholds of :mod:`monitor.analysis.assess` from ``regression:``."""
        from monitor.analysis.assess import AnalysisPolicy
        from monitor.analysis.regression import RegressionPolicy

        r = self.regression
        return AnalysisPolicy(
            regression=RegressionPolicy(
                tolerance=r.tolerance,
                alpha=r.alpha,
                confirmations=r.confirmations,
                n_resamples=r.bootstrap_resamples,
                seed=r.seed,
            ),
            behaviour_alpha=r.behaviour_alpha,
            min_agreement=r.min_agreement,
        )

    def database_url(self) -> str:
        """The database URL, with a relative SQLite path resolved against the config file."""
        prefix = "sqlite:///"
        if self.database.startswith(prefix) and not self.database.startswith(prefix + "/"):
            rest = self.database[len(prefix) :]
            if rest and rest != ":memory:":
                return prefix + str(self.resolve(rest))
        return self.database


def _looks_local(base: str, root: Path) -> bool:
    return base.startswith((".", "/", "~")) or (root / base).exists() or base.count("/") != 1


def interpolate_env(
    value: Any, env: Mapping[str, str], loc: tuple[str | int, ...] = ()
) -> tuple[Any, list[tuple[tuple[str | int, ...], str]]]:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string; report unset variables with their key path."""
    errors: list[tuple[tuple[str | int, ...], str]] = []
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            errors.append((loc, f"environment variable {name} is not set"))
            return ""

        return _ENV.sub(substitute, value), errors
    if isinstance(value, dict):
        out = {}
        for key, sub in value.items():
            out[key], errs = interpolate_env(sub, env, (*loc, str(key)))
            errors += errs
        return out, errors
    if isinstance(value, list):
        items = []
        for index, sub in enumerate(value):
            new, errs = interpolate_env(sub, env, (*loc, index))
            items.append(new)
            errors += errs
        return items, errors
    return value, errors


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> MonitorConfig:
    """Load and validate ``monitor.yaml``.

    Raises:
        ConfigError: one problem per finding, each with file, line and key path.
    """
    config_path = Path(path)
    text, problems = read_text(config_path)
    if text is None:
        raise ConfigError(problems)
    if not text.strip():
        raise ConfigError("file is empty", str(config_path))
    located, problems = load_yaml(text, config_path)
    if located is None:
        raise ConfigError(problems)
    if not isinstance(located.data, dict):
        raise ConfigError("must be a mapping of keys (database, models, evalsets, jobs)", f"{config_path}:1")
    data, env_errors = interpolate_env(located.data, os.environ if env is None else env)
    if env_errors:
        raise ConfigError(_located(config_path, located, loc, msg) for loc, msg in env_errors)
    if "root" in data:
        raise ConfigError([_located(config_path, located, ("root",), "root: unknown key")])
    data["root"] = config_path.resolve().parent
    try:
        return MonitorConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            _split_reference_errors(pydantic_problems(exc, config_path, located), config_path, located)
        ) from None


def _located(path: Path, located: LocatedYaml, loc: tuple[str | int, ...], message: str) -> Problem:
    line = located.line_of(loc)
    dotted = ".".join(str(p) for p in loc)
    where = f"{path}:{line}" if line else str(path)
    return Problem(where, f"{dotted}: {message}" if dotted and not message.startswith(dotted) else message)


def _split_reference_errors(problems: list[Problem], path: Path, located: LocatedYaml) -> list[Problem]:
    # Cross-reference errors are raised once for the whole document; give each its own line and location.
    out = []
    for problem in problems:
        head, _, rest = problem.message.partition(": ")
        if head == "(document)" and "unknown" in rest:
            for part in rest.split("; "):
                dotted, _, message = part.partition(": ")
                loc = tuple(int(p) if p.isdigit() else p for p in dotted.split("."))
                out.append(_located(path, located, loc, f"{dotted}: {message}"))
        else:
            out.append(problem)
    return out
