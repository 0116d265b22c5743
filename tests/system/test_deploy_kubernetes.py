"""``monitor deploy kubernetes``: the manifests validate against Kubernetes' own schemas, say what the
configuration says, and the rendered example in ``deploy/kubernetes/`` is the one the command writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kubernetes_validate.utils as kv
import pytest
import yaml

from monitor.cli.deploy import KubernetesOptions, cron_for_every, write_kubernetes
from monitor.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "monitor.example.yaml"
KEPT = REPO / "deploy" / "kubernetes"
#: The oldest release whose CronJob takes ``timeZone`` (GA in 1.27) that we support, and the newest
#: schemas the validator ships.
VERSIONS = ("1.27.0", kv.latest_version())

CONFIG = """\
version: 1
database: ${MONITOR_DATABASE_URL}
models:
  tuned:
    base: /srv/monitor/models/base
    adapter: /srv/monitor/models/lora
    device: cuda
  served:
    backend: openai
    base: tuned-lora
    endpoint: {base_url: "http://vllm:8000/v1", api_key_env: VLLM_API_KEY}
evalsets:
  golden: /srv/monitor/evals/golden
jobs:
  nightly:
    models: [tuned]
    evalsets: [golden]
    schedule: {cron: "30 2 * * *", timezone: Europe/Paris, grace: 3h}
  remote_every_6h:
    models: [served]
    evalsets: [golden]
    schedule: {every: 6h}
  by_hand:
    models: [tuned]
    evalsets: [golden]
webhooks:
  endpoints:
    pager: {url: "https://hooks.example/x", secret_env: PAGER_SECRET}
baselines: /srv/monitor/baselines
daemon:
  host: 0.0.0.0
  port: 9500
"""


def _render(tmp_path: Path, text: str = CONFIG, **options: str) -> dict[str, dict]:
    config = tmp_path / "monitor.yaml"
    config.write_text(text)
    out = tmp_path / "k8s"
    write_kubernetes(config, out, KubernetesOptions(**options))  # type: ignore[arg-type]
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(out.glob("*.yaml"))}


def _validate(manifest: dict) -> None:
    for version in VERSIONS:
        kv.validate(manifest, version, strict=True)


def test_every_manifest_validates_against_the_kubernetes_schemas(tmp_path: Path) -> None:
    files = _render(tmp_path, namespace="ml-monitoring")
    assert {n for n in files if not n.startswith("cronjob-")} == {
        "configmap.yaml", "secret.example.yaml", "deployment-serve.yaml", "service-serve.yaml",
    }  # fmt: skip
    assert len([n for n in files if n.startswith("cronjob-")]) == 2
    for manifest in files.values():
        _validate(manifest)
        assert manifest["metadata"]["namespace"] == "ml-monitoring"


def test_the_validator_is_strict(tmp_path: Path) -> None:
    cronjob = _render(tmp_path)["cronjob-nightly.yaml"]
    cronjob["spec"]["schedul"] = cronjob["spec"].pop("schedule")
    with pytest.raises(kv.ValidationError):
        kv.validate(cronjob, VERSIONS[-1], strict=True)


def test_a_cronjob_per_scheduled_job_runs_its_slot(tmp_path: Path) -> None:
    files = _render(tmp_path)
    cronjobs = {m["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"][2]: m
                for n, m in files.items() if n.startswith("cronjob-")}  # fmt: skip
    assert set(cronjobs) == {"nightly", "remote_every_6h"}  # by_hand has no schedule
    nightly = cronjobs["nightly"]["spec"]
    assert (nightly["schedule"], nightly["timeZone"], nightly["startingDeadlineSeconds"]) == (
        "30 2 * * *", "Europe/Paris", 3 * 3600,
    )  # fmt: skip
    assert nightly["concurrencyPolicy"] == "Forbid"
    pod = nightly["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == [
        "monitor",
        "run",
        "nightly",
        "--config",
        "/etc/monitor/monitor.yaml",
        "--slot",
        "auto",
    ]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 1}  # device: cuda
    assert pod["restartPolicy"] == "Never"
    remote = cronjobs["remote_every_6h"]
    assert remote["spec"]["schedule"] == "0 */6 * * *" and remote["spec"]["timeZone"] == "Etc/UTC"
    assert (
        "limits"
        not in remote["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["resources"]
    )
    # an underscore is not allowed in a resource name: changed, with a hash so that names never collide
    assert remote["metadata"]["name"].startswith("monitor-run-remote-every-6h-")


def test_secrets_come_from_the_secret_by_variable_and_the_database_is_required(tmp_path: Path) -> None:
    files = _render(tmp_path, secret="prod-monitor")
    env = files["deployment-serve.yaml"]["spec"]["template"]["spec"]["containers"][0]["env"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e}
    assert set(refs) == {"MONITOR_DATABASE_URL", "VLLM_API_KEY", "PAGER_SECRET", "MONITOR_API_TOKEN"}
    assert all(r["name"] == "prod-monitor" and r["key"] == name for name, r in refs.items())
    assert "optional" not in refs["MONITOR_DATABASE_URL"]
    assert refs["MONITOR_API_TOKEN"]["optional"] is True  # unset: /api/v1 open, as for the daemon
    assert set(files["secret.example.yaml"]["stringData"]) == set(refs)
    # the configuration goes verbatim into the ConfigMap: no secret is rendered into a file
    assert files["configmap.yaml"]["data"]["monitor.yaml"] == CONFIG


def test_the_serve_deployment_and_its_service(tmp_path: Path) -> None:
    files = _render(tmp_path)
    deployment, service = files["deployment-serve.yaml"], files["service-serve.yaml"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["monitor", "serve", "--config", "/etc/monitor/monitor.yaml"]
    assert container["ports"] == [{"name": "http", "containerPort": 9500, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert deployment["spec"]["replicas"] == 1
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == labels == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["port"] == 9500
    assert service["metadata"]["annotations"]["prometheus.io/port"] == "9500"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("database: ${MONITOR_DATABASE_URL}", "database: sqlite:///monitor.db"),
            "database: sqlite cannot be shared",
        ),
        (("{every: 6h}", "{every: 5h}"), "jobs.remote_every_6h.schedule.every: 5h does not divide"),
        (("host: 0.0.0.0", "host: 127.0.0.1"), "daemon.host: 127.0.0.1 is not reachable"),
    ],
)
def test_what_kubernetes_cannot_run_is_refused_with_its_line(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _render(tmp_path, CONFIG.replace(*change))
    (problem,) = caught.value.problems
    text = CONFIG.replace(*change)
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if change[1] in ln)
    assert str(problem).startswith(f"{tmp_path / 'monitor.yaml'}:{line}: ")
    assert message in str(problem)
    assert not (tmp_path / "k8s").exists()


def test_cron_for_every() -> None:
    assert [cron_for_every(s) for s in (60, 900, 3600, 4 * 3600, 86400, 7 * 86400)] == [
        "* * * * *", "*/15 * * * *", "0 * * * *", "0 */4 * * *", "0 0 * * *", "0 0 * * 0",
    ]  # fmt: skip
    assert [cron_for_every(s) for s in (90, 7 * 60, 5 * 3600, 2 * 86400, 0.5)] == [None] * 5


def test_the_command_writes_the_kept_example(tmp_path: Path) -> None:
    """``deploy/kubernetes/`` is ``monitor deploy kubernetes deploy/monitor.example.yaml -o deploy/kubernetes``."""
    out = tmp_path / "k8s"
    done = subprocess.run(
        [sys.executable, "-m", "monitor", "deploy", "kubernetes", str(EXAMPLE), "-o", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rendered = {p.name: p.read_text() for p in out.glob("*.yaml")}
    kept = {p.name: p.read_text() for p in KEPT.glob("*.yaml")}
    assert rendered == kept, "deploy/kubernetes/ is stale: render it again with the command above"
    for text in kept.values():
        _validate(yaml.safe_load(text))


def test_bad_input_is_one_line_and_no_traceback(tmp_path: Path) -> None:
    config = tmp_path / "monitor.yaml"
    config.write_text(CONFIG.replace("database: ${MONITOR_DATABASE_URL}", "database: sqlite:///m.db"))
    done = subprocess.run(
        [sys.executable, "-m", "monitor", "deploy", "kubernetes", str(config), "-o", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"error: {config}:2: database: sqlite cannot be shared")
