"""``monitor deploy kubernetes CONFIG -o DIR``: Kubernetes manifests rendered from the configuration.

Fires run elsewhere than the daemon here: a CronJob per scheduled job runs
``monitor run JOB --slot auto``, which claims the fire in the database, so that
each fire runs once however many pods start for it, and a dead pod's fire is
resumed by the next; one Deployment runs ``monitor serve`` (the API, ``/metrics``,
release watchers and the webhook sender, without a scheduler) behind a Service.
Every pod reads the configuration file from a ConfigMap and its secrets (the
database URL, API keys, webhook secrets, the API token) from one Secret, by
environment variable, so that no secret is rendered into a file.

What is written to DIR (files of an earlier render that name a job no longer
configured are removed):

``configmap.yaml``          the configuration file, verbatim
``secret.example.yaml``     the Secret's keys with placeholder values (fill in, or ``kubectl create secret``)
``cronjob-<job>.yaml``      one per job with a schedule
``deployment-serve.yaml``   ``monitor serve``, probed on ``/healthz`` and ``/readyz``
``service-serve.yaml``      the Deployment's port, annotated for Prometheus

The pods share one database, so it must be PostgreSQL (``database:
${MONITOR_DATABASE_URL}``, the URL kept in the Secret); a SQLite database is
refused with its line.  An ``every:`` schedule becomes a cron expression when it
divides an hour or a day evenly (``15m``, ``6h``, ``1d``, ``7d``), else it is
refused: write ``cron:`` instead.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from monitor.cli.output import err, handle_errors
from monitor.errors import ConfigError, Problem

deploy_app = typer.Typer(help="Render deployment files from the configuration.", no_args_is_help=True)

#: Where the ConfigMap is mounted in every pod.
CONFIG_DIR = "/etc/monitor"
CONFIG_FILE = "monitor.yaml"
#: The image's user and group (deploy/Dockerfile).
IMAGE_UID = 10001
DATABASE_ENV = "MONITOR_DATABASE_URL"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_HEADER = (
    "# Rendered by `monitor deploy kubernetes {config}`: change the configuration and render again\n"
    "# rather than editing this file.\n"
)


@dataclass(frozen=True)
class KubernetesOptions:
    """What the manifests need beyond the configuration."""

    image: str = "model-monitor:latest"
    namespace: str | None = None
    #: Prefix of every resource's name.
    name: str = "monitor"
    secret: str = "monitor-secrets"
    #: A PersistentVolumeClaim with the models, eval sets and baselines, mounted at ``data_mount``.
    volume_claim: str | None = "monitor-data"
    data_mount: str = "/srv/monitor"


@dataclass(frozen=True)
class SecretEnv:
    """An environment variable every pod takes from the Secret."""

    name: str
    required: bool
    why: str


def _dns_name(text: str, limit: int = 52) -> str:
    """A DNS-1123 label from ``text`` (CronJob names are limited to 52 characters); a changed or
    shortened name gets a hash of the original, so two jobs never collide."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "job"
    if name != text or len(name) > limit:
        digest = hashlib.sha256(text.encode()).hexdigest()[:6]
        name = f"{name[: limit - 7].rstrip('-')}-{digest}"
    return name


def _label_value(text: str) -> str:
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63].strip("-_.")
    return value or "job"


def cron_for_every(seconds: float) -> str | None:
    """The cron expression firing every ``seconds`` at the same instants as the daemon's interval
    (multiples of the interval from midnight UTC), or None when cron cannot say it."""
    s = int(seconds)
    if s != seconds or s <= 0:
        return None
    if s == 7 * 86400:
        return "0 0 * * 0"
    if s == 86400:
        return "0 0 * * *"
    if s % 3600 == 0 and 24 % (s // 3600) == 0:
        hours = s // 3600
        return "0 * * * *" if hours == 1 else f"0 */{hours} * * *"
    if s % 60 == 0 and 60 % (s // 60) == 0:
        minutes = s // 60
        return "* * * * *" if minutes == 1 else f"*/{minutes} * * * *"
    return None


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _env_references(data: Any) -> tuple[set[str], set[str]]:
    """``${VAR}`` names in the file's values (not its comments): those without a default, and those with one."""
    without: set[str] = set()
    with_default: set[str] = set()
    for value in _strings(data):
        for match in _ENV_REF.finditer(value):
            (with_default if match.group(2) else without).add(match.group(1))
    return without, with_default


def load_for_render(path: Path) -> tuple[Any, str, Any]:
    """The configuration as the pods will read it, the file's text, and its located YAML.

    Variables are not taken from this shell (a render must not depend on it, nor copy a secret):
    one without a default gets a placeholder, and the database URL is the Secret's PostgreSQL URL.
    """
    from monitor._yaml import load_yaml, read_text
    from monitor.config import load_config

    text, problems = read_text(path)
    if text is None:
        raise ConfigError(problems)
    located, _ = load_yaml(text, path)
    without, _ = _env_references(located.data if located is not None else None)
    env = {name: f"placeholder-{name.lower()}" for name in without}
    env[DATABASE_ENV] = "postgresql+psycopg2://from-the-secret/monitor"
    return load_config(path, env=env), text, located


def secret_env(cfg: Any, data: Any) -> list[SecretEnv]:
    """Every variable the pods take from the Secret: the database URL, each ``*_env`` the
    configuration names, and each ``${VAR}`` without a default."""
    found: dict[str, SecretEnv] = {DATABASE_ENV: SecretEnv(DATABASE_ENV, True, "the PostgreSQL URL")}

    def add(name: str | None, why: str, required: bool = True) -> None:
        if name and name not in found:
            found[name] = SecretEnv(name, required, why)

    for name, model in sorted(cfg.models.items()):
        if model.endpoint is not None:
            add(model.endpoint.api_key_env, f"models.{name}.endpoint.api_key_env")
    for name, endpoint in sorted(cfg.webhooks.endpoints.items()):
        add(endpoint.secret_env, f"webhooks.endpoints.{name}.secret_env")
    for name, family in sorted(cfg.families.items()):
        if family.watch is not None and family.watch.openai is not None:
            add(family.watch.openai.api_key_env, f"families.{name}.watch.openai.api_key_env")
    without, _ = _env_references(data)
    for name in sorted(without):
        add(name, "${" + name + "} in the configuration")
    # unset leaves /api/v1 open, as the daemon does without the variable
    add(cfg.daemon.api_token_env, "daemon.api_token_env (unset: /api/v1 is open)", required=False)
    return list(found.values())


def config_problems(cfg: Any, path: Path, located: Any) -> list[Problem]:
    def where(*loc: str | int) -> str:
        line = located.line_of(loc) if located is not None else None
        return (
            f"{path}:{line}: {'.'.join(str(p) for p in loc)}"
            if line
            else f"{path}: {'.'.join(map(str, loc))}"
        )

    problems = []
    if not cfg.database_url().startswith("postgresql"):
        problems.append(
            Problem(
                where("database"),
                f"{cfg.database_url().split(':', 1)[0]} cannot be shared by the CronJobs' pods and the serve "
                f"Deployment: use PostgreSQL, e.g. database: ${{{DATABASE_ENV}}} with the URL in the Secret",
            )
        )
    if cfg.daemon.host in _LOOPBACK:
        problems.append(
            Problem(
                where("daemon", "host"),
                f"{cfg.daemon.host} is not reachable from the Service or the probes: use 0.0.0.0",
            )
        )
    for name, job in sorted(cfg.jobs.items()):
        schedule = job.schedule
        if (
            schedule is not None
            and schedule.every is not None
            and cron_for_every(schedule.every.total_seconds()) is None
        ):
            problems.append(
                Problem(
                    where("jobs", name, "schedule", "every"),
                    f"{schedule.every} does not divide an hour or a day, so a CronJob cannot fire at the same "
                    "times: use cron:",
                )
            )
    return problems


def _notes(cfg: Any, options: KubernetesOptions) -> Iterator[str]:
    """Paths the pods will not see: outside the volume, or relative to the ConfigMap's folder."""
    mount = options.data_mount.rstrip("/") + "/"
    paths = [(f"evalsets.{n}", p) for n, p in sorted(cfg.evalsets.items())]
    paths.append(("baselines", cfg.baselines))
    for name, model in sorted(cfg.models.items()):
        if model.backend == "hf":
            # a hub id (org/name) is downloaded, not mounted
            if model.base.startswith(("/", ".", "~")):
                paths.append((f"models.{name}.base", model.base))
            if model.adapter:
                paths.append((f"models.{name}.adapter", model.adapter))
    for where, value in paths:
        if not value.startswith("/"):
            yield f"note: {where}: {value} is relative to {CONFIG_DIR} (the ConfigMap) in the pods: use a path under {mount}"
        elif options.volume_claim and not value.startswith(mount):
            yield f"note: {where}: {value} is outside {mount} (the volume): the pods will not see it"


def _metadata(name: str, options: KubernetesOptions, component: str, **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "labels": {
            "app.kubernetes.io/name": "model-monitor",
            "app.kubernetes.io/instance": options.name,
            "app.kubernetes.io/component": component,
            **labels,
        },
    }
    if options.namespace:
        meta["namespace"] = options.namespace
    return meta


def _pod_spec(
    cfg: Any,
    options: KubernetesOptions,
    secrets: Iterable[SecretEnv],
    command: list[str],
    gpu: bool,
    **container: Any,
) -> dict[str, Any]:
    env: list[dict[str, Any]] = [
        {
            "name": s.name,
            "valueFrom": {
                "secretKeyRef": {
                    "name": options.secret,
                    "key": s.name,
                    **({} if s.required else {"optional": True}),
                }
            },
        }
        for s in secrets
    ]
    env += [
        {"name": "HF_HOME", "value": "/tmp/huggingface"},
        {"name": "TOKENIZERS_PARALLELISM", "value": "false"},
        # torch's CPU threads sleep at barriers instead of spinning (other pods share the node)
        {"name": "OMP_WAIT_POLICY", "value": "PASSIVE"},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": f"{options.name}-config"}},
        {"name": "tmp", "emptyDir": {}},
    ]
    if options.volume_claim:
        mounts.append({"name": "data", "mountPath": options.data_mount})
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": options.volume_claim}})
    resources: dict[str, Any] = {"requests": {"cpu": "500m", "memory": "1Gi"}}
    if gpu:
        resources["limits"] = {"nvidia.com/gpu": 1}
    return {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": IMAGE_UID,
            "runAsGroup": IMAGE_UID,
            "fsGroup": IMAGE_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "monitor",
                "image": options.image,
                "imagePullPolicy": "IfNotPresent",
                "command": command,
                "env": env,
                "volumeMounts": mounts,
                "resources": resources,
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                **container,
            }
        ],
        "volumes": volumes,
    }


def _uses_gpu(cfg: Any, models: Iterable[str]) -> bool:
    return any(cfg.models[m].backend == "hf" and cfg.models[m].device.startswith("cuda") for m in models)


def render_kubernetes(
    cfg: Any, text: str, data: Any, options: KubernetesOptions
) -> dict[str, dict[str, Any]]:
    """File name to manifest: the ConfigMap, the Secret's example, a CronJob per scheduled job, and the
    serve Deployment and Service.  ``text`` is the configuration file, ``data`` its parsed YAML, ``cfg``
    the configuration loaded from it, which must have passed :func:`config_problems`."""
    config_path = f"{CONFIG_DIR}/{CONFIG_FILE}"
    secrets = secret_env(cfg, data)
    files: dict[str, dict[str, Any]] = {
        "configmap.yaml": {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _metadata(f"{options.name}-config", options, "config"),
            "data": {CONFIG_FILE: text},
        },
        "secret.example.yaml": {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": _metadata(options.secret, options, "secrets"),
            "type": "Opaque",
            "stringData": {
                s.name: f"CHANGE-ME ({s.why})"
                if s.required
                else f"OPTIONAL ({s.why}; delete the key to leave it unset)"
                for s in secrets
            },
        },
    }
    for job_name, job in sorted(cfg.jobs.items()):
        schedule = job.schedule
        if schedule is None:
            continue  # run on request only: `monitor run JOB` by hand
        if schedule.cron is not None:
            cron, zone = schedule.cron, schedule.timezone
        else:
            cron, zone = cron_for_every(schedule.every.total_seconds()), "Etc/UTC"
        name = _dns_name(f"{options.name}-run-{job_name}")
        labels = {"monitor.model-monitor.io/job": _label_value(job_name)}
        pod = _pod_spec(
            cfg,
            options,
            secrets,
            ["monitor", "run", job_name, "--config", config_path, "--slot", "auto"],
            _uses_gpu(cfg, job.models),
        )
        pod["restartPolicy"] = "Never"
        # SIGTERM stops after the chunk in hand and leaves the fire to the next claimant
        pod["terminationGracePeriodSeconds"] = max(30, int(cfg.daemon.shutdown_timeout.total_seconds()) + 5)
        files[f"cronjob-{_dns_name(job_name, 200)}.yaml"] = {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": _metadata(name, options, "run", **labels),
            "spec": {
                "schedule": cron,
                "timeZone": zone,
                # a missed fire may still start this late (the job's grace), as the daemon allows
                "startingDeadlineSeconds": max(10, int(schedule.grace.total_seconds())),
                # the slot claim makes a fire run once anyway; Forbid keeps pods from piling up behind a slow one
                "concurrencyPolicy": "Forbid",
                "successfulJobsHistoryLimit": 3,
                "failedJobsHistoryLimit": 3,
                "jobTemplate": {
                    "metadata": {"labels": dict(labels)},
                    "spec": {
                        # a retried pod claims the same fire and resumes it
                        "backoffLimit": 3,
                        "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
                    },
                },
            },
        }
    serve = f"{options.name}-serve"
    selector = {"app.kubernetes.io/instance": options.name, "app.kubernetes.io/component": "serve"}
    probe = {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 20, "timeoutSeconds": 5}
    serve_pod = _pod_spec(
        cfg,
        options,
        secrets,
        ["monitor", "serve", "--config", config_path],
        False,
        ports=[{"name": "http", "containerPort": cfg.daemon.port, "protocol": "TCP"}],
        livenessProbe=probe,
        readinessProbe={**probe, "httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 10},
    )
    serve_pod["terminationGracePeriodSeconds"] = max(30, int(cfg.daemon.shutdown_timeout.total_seconds()) + 5)
    files["deployment-serve.yaml"] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(serve, options, "serve"),
        "spec": {
            # one sender of webhooks and one set of release watchers
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": dict(selector)}, "spec": serve_pod},
        },
    }
    service_meta = _metadata(serve, options, "serve")
    service_meta["annotations"] = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(cfg.daemon.port),
        "prometheus.io/path": "/metrics",
    }
    files["service-serve.yaml"] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": service_meta,
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "http", "port": cfg.daemon.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    return files


def dump_manifest(manifest: dict[str, Any], config_name: str) -> str:
    """A manifest as YAML, with the header saying where it came from; block style for the config text."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def text_block(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, text_block)
    body = yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)
    return _HEADER.format(config=config_name) + body


def write_kubernetes(config: Path, output: Path, options: KubernetesOptions) -> list[Path]:
    """Render ``config`` into ``output``; raises ConfigError with one located problem per finding."""
    cfg, text, located = load_for_render(config)
    problems = config_problems(cfg, config, located)
    if problems:
        raise ConfigError(problems)
    for note in _notes(cfg, options):
        err(note)
    files = render_kubernetes(cfg, text, located.data, options)
    output.mkdir(parents=True, exist_ok=True)
    for stale in output.glob("cronjob-*.yaml"):
        if stale.name not in files:
            stale.unlink()
    written = []
    for name, manifest in files.items():
        path = output / name
        path.write_text(dump_manifest(manifest, config.name))
        written.append(path)
    return written


@deploy_app.command("kubernetes")
@handle_errors
def kubernetes_command(
    config: Annotated[Path, typer.Argument(help="The monitor configuration file.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write the manifests to.")],
    image: Annotated[str, typer.Option(help="The monitor's container image.")] = KubernetesOptions.image,
    namespace: Annotated[
        str | None, typer.Option(help="Namespace of every resource (default: none set).")
    ] = None,
    name: Annotated[str, typer.Option(help="Prefix of every resource's name.")] = KubernetesOptions.name,
    secret: Annotated[
        str, typer.Option(help="The Secret the pods take their variables from.")
    ] = KubernetesOptions.secret,
    volume_claim: Annotated[
        str, typer.Option(help="PersistentVolumeClaim with models, eval sets and baselines ('' for none).")
    ] = "monitor-data",
    data_mount: Annotated[
        str, typer.Option(help="Where the volume is mounted.")
    ] = KubernetesOptions.data_mount,
) -> None:
    """Kubernetes manifests: a CronJob per scheduled job (`monitor run JOB --slot auto`), a Deployment and
    Service for `monitor serve`, the configuration as a ConfigMap, secrets from one Secret."""
    if not config.is_file():
        raise ConfigError("configuration file not found", str(config))
    options = KubernetesOptions(
        image=image,
        namespace=namespace or None,
        name=_dns_name(name, 30),
        secret=secret,
        volume_claim=volume_claim or None,
        data_mount=data_mount,
    )
    written = write_kubernetes(config, output, options)
    for path in written:
        print(path)
