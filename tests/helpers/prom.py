"""A real Prometheus server for tests, and the PromQL that the dashboards and rules run.

``start_prometheus`` starts ``prometheus`` (Debian's ``prometheus`` package, or
``$MONITOR_TEST_PROMETHEUS``) on a free loopback port with a throwaway TSDB,
scraping the given targets every second as the ``model-monitor`` job with
``honor_labels: true`` (as deploy/prometheus/prometheus.yml does), and
evaluating the given rule files every second.  ``instant_query`` runs one
expression through the HTTP API.

``dashboard_expressions`` and ``rule_expressions`` pull every PromQL expression
out of the Grafana dashboards (panel targets and template variable queries, with
the template variables replaced by concrete values) and out of Prometheus rule
files, so that a test can run each against a Prometheus with real data
(``query_each``).

``reads_input_drift`` tells the expressions that ask for input drift findings
(``kind="input"``), which exist only where production samples are configured;
``query_result_options`` renders a Grafana ``query_result(...)`` variable's options
as Grafana does.

When no ``prometheus``/``promtool`` binary exists, the tests that need one are
skipped with the reason, unless ``MONITOR_TEST_PROMETHEUS_REQUIRED=1`` (set it in
CI), which turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

BINARY_ENV = "MONITOR_TEST_PROMETHEUS"
REQUIRED_ENV = "MONITOR_TEST_PROMETHEUS_REQUIRED"
START_TIMEOUT_S = 30
#: The Prometheus job name of the monitor in every scrape configuration (deploy/ and tests).
JOB_NAME = "model-monitor"

#: Values for Grafana's built-in variables when a dashboard query is run outside Grafana.
GRAFANA_BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
#: $name, ${name}, ${name:format} and the deprecated [[name]].
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]")
#: The monitor's metric names in a PromQL expression (recording rules are named monitor:..., not matched).
_METRIC_NAME = re.compile(r"(?<![\w:])monitor_[a-z_]+")
#: label_values(selector, label) in a template variable query: Grafana asks for the selector's series.
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.*),\s*(?P<label>\w+)\s*\)\s*$", re.S)
#: A selector asking for input drift findings only: kind="input" (not kind=~"behaviour|input").
_INPUT_DRIFT = re.compile(r'\bkind\s*=\s*"input"')


class PrometheusUnavailable(RuntimeError):
    """No Prometheus binary could be found or started; the message says why."""


class PromQLError(AssertionError):
    """Prometheus rejected a query; the message has the expression and Prometheus's error."""


def unavailable(reason: str) -> None:
    """Skip the calling test, or fail it where a Prometheus is required (CI)."""
    if os.environ.get(REQUIRED_ENV) == "1":
        pytest.fail(f"{reason} (and {REQUIRED_ENV}=1)")
    pytest.skip(reason)


def find_binary(name: str) -> str | None:
    """``prometheus`` or ``promtool`` from $MONITOR_TEST_PROMETHEUS's folder or the PATH."""
    override = os.environ.get(BINARY_ENV)
    if override:
        candidate = Path(override).with_name(name) if name != "prometheus" else Path(override)
        return str(candidate) if candidate.is_file() else None
    return shutil.which(name)


def require_binary(name: str) -> str:
    """The binary's path, or skip (fail in CI) with how to get it."""
    path = find_binary(name)
    if path is None:
        unavailable(
            f"no {name} binary: install Debian's 'prometheus' package (apt-get install -y prometheus) "
            f"or set {BINARY_ENV} to a prometheus binary"
        )
    assert path is not None
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the server ------------------------------------------------------------------------------------


@dataclass
class PrometheusServer:
    """A running Prometheus on loopback; ``stop`` ends it."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def instant_query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """The result vector of ``expr`` (scalars and strings come back as one unlabelled sample)."""
        return instant_query(self.url, expr, at=at)

    def wait_for(self, expr: str, timeout: float = 20.0, what: str = "") -> list[dict[str, Any]]:
        """Poll ``expr`` until it returns something, and return that."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.instant_query(expr)
            if result:
                return result
            if self.process.poll() is not None:
                raise PrometheusUnavailable(
                    f"prometheus exited ({self.process.returncode}):\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or expr}")
            time.sleep(0.2)

    def rule_groups(self) -> list[dict[str, Any]]:
        """The rule groups Prometheus loaded, each rule with its health and last error."""
        body = httpx.get(f"{self.url}/api/v1/rules", timeout=10.0).json()
        return list(body["data"]["groups"])

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def scrape_config(
    targets: Sequence[str],
    rule_files: Sequence[Path] = (),
    *,
    interval: str = "1s",
    job_name: str = JOB_NAME,
) -> dict[str, Any]:
    """A Prometheus configuration scraping ``targets`` like deploy/prometheus/prometheus.yml does, but fast."""
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": job_name,
                "honor_labels": True,
                "static_configs": [{"targets": list(targets)}],
            }
        ],
    }


def start_prometheus(
    root: Path,
    targets: Sequence[str],
    rule_files: Sequence[Path] = (),
    *,
    interval: str = "1s",
) -> PrometheusServer:
    """Start Prometheus in ``root`` scraping ``targets`` (host:port) and evaluating ``rule_files``.

    Raises:
        PrometheusUnavailable: no binary, or it did not become ready (the message has its log).
    """
    binary = find_binary("prometheus")
    if binary is None:
        raise PrometheusUnavailable(f"no prometheus binary on the PATH (or in ${BINARY_ENV})")
    root.mkdir(parents=True, exist_ok=True)
    config = root / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(targets, rule_files, interval=interval), sort_keys=False))
    log = root / "prometheus.log"
    last: PrometheusUnavailable | None = None
    # A port taken between free_port() and Prometheus's bind fails the start: try a few.
    for attempt in range(3):
        port = free_port()
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={root / f'data-{attempt}'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            cwd=root,
        )
        server = PrometheusServer(f"http://127.0.0.1:{port}", process, log)
        try:
            _wait_ready(server)
        except PrometheusUnavailable as exc:
            server.stop()
            last = exc
            continue
        return server
    assert last is not None
    raise last


def _wait_ready(server: PrometheusServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise PrometheusUnavailable(
                    f"prometheus exited ({server.process.returncode}) at start:\n{server.log_tail()}"
                )
            try:
                if client.get(f"{server.url}/-/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise PrometheusUnavailable(f"prometheus was not ready after {START_TIMEOUT_S}s:\n{server.log_tail()}")


_CLIENT: httpx.Client | None = None
_CLIENT_LOCK = threading.Lock()


def _client() -> httpx.Client:
    """One HTTP client for every query: a client per request costs more than the query itself (it
    builds an SSL context), and the tests run a few hundred queries."""
    global _CLIENT
    with _CLIENT_LOCK:
        if _CLIENT is None:
            _CLIENT = httpx.Client()
        return _CLIENT


def instant_query(
    url: str, expr: str, *, at: float | None = None, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """Run ``expr`` at ``at`` (default: now) through ``/api/v1/query``.

    Returns the result as a list of ``{"metric": {...}, "value": [ts, "v"]}``; a
    scalar or string result becomes one sample with no labels.

    Raises:
        PromQLError: Prometheus answered with an error (a bad expression, a failed evaluation).
    """
    params = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    try:
        response = _client().post(f"{url}/api/v1/query", data=params, timeout=timeout)
    except httpx.TransportError as exc:
        raise PromQLError(f"{expr}\n-> cannot reach Prometheus at {url}: {exc}") from exc
    try:
        body = response.json()
    except json.JSONDecodeError:
        raise PromQLError(f"{expr}\n-> HTTP {response.status_code}: {response.text[:500]}") from None
    if body.get("status") != "success":
        raise PromQLError(f"{expr}\n-> {body.get('errorType')}: {body.get('error')}")
    data = body["data"]
    if data["resultType"] in ("scalar", "string"):
        return [{"metric": {}, "value": data["result"]}]
    if data["resultType"] == "matrix":
        return [{"metric": s["metric"], "value": s["values"][-1]} for s in data["result"] if s["values"]]
    return list(data["result"])


def query_each(
    server: PrometheusServer, expressions: Sequence[Expression], *, at: float | None = None
) -> list[tuple[Expression, list[dict[str, Any]] | PromQLError]]:
    """Run every expression at one time ``at``: each with its result, or the error Prometheus gave."""
    out: list[tuple[Expression, list[dict[str, Any]] | PromQLError]] = []
    for expression in expressions:
        try:
            out.append((expression, server.instant_query(expression.expr, at=at)))
        except PromQLError as exc:
            out.append((expression, exc))
    return out


def sample_values(result: Sequence[Mapping[str, Any]]) -> list[float]:
    """The float values of an instant query result ("NaN", "+Inf" and "-Inf" included)."""
    return [float(sample["value"][1]) for sample in result]


# --- expressions of dashboards and rules -----------------------------------------------------------


@dataclass(frozen=True)
class Expression:
    """One PromQL expression and where it comes from."""

    #: "panel" (a dashboard target), "variable" (a template variable's query), "record" or "alert".
    kind: str
    #: Human-readable origin: file, panel or rule name, refId.
    source: str
    expr: str


def substitute(text: str, values: Mapping[str, str]) -> str:
    """Replace Grafana template variables with concrete values.

    Raises:
        KeyError: a variable that ``values`` and the built-ins do not know (the message names it).
    """
    known = {**GRAFANA_BUILTINS, **values}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in known:
            raise KeyError(f"template variable ${name} has no value (known: {', '.join(sorted(known))})")
        return known[name]

    return _VARIABLE.sub(replace, text)


def template_variables(text: str) -> set[str]:
    """The template variable names used in ``text``."""
    return {m.group(1) or m.group(2) or m.group(3) for m in _VARIABLE.finditer(text)}


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard, the panels inside collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def variable_query(variable: Mapping[str, Any]) -> str | None:
    """The PromQL behind a query variable: label_values(sel, label) -> sel; None for other kinds."""
    if variable.get("type") != "query":
        return None
    query = variable.get("query")
    text = query.get("query", "") if isinstance(query, dict) else str(query or "")
    match = _LABEL_VALUES.match(text)
    if match:
        return match.group("selector").strip()
    if text.startswith(("label_names(", "metrics(")):
        return None
    if text.startswith("query_result("):
        return text[len("query_result(") : -1]
    return text or None


def dashboard_expressions(path: Path, values: Mapping[str, str]) -> list[Expression]:
    """Every PromQL expression of a dashboard file, template variables replaced by ``values``."""
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable_query(variable)
        if query is not None:
            out.append(
                Expression("variable", f"{path.name}: variable {variable['name']}", substitute(query, values))
            )
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("expr"):
                source = (
                    f"{path.name}: panel {panel['id']} {panel.get('title', '')!r} {target.get('refId', '')}"
                )
                out.append(Expression("panel", source, substitute(target["expr"], values)))
    return out


def rule_expressions(path: Path) -> list[Expression]:
    """Every recording and alerting rule expression of a Prometheus rule file."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    out = []
    for group in document.get("groups", []):
        for rule in group.get("rules", []):
            if "alert" in rule:
                out.append(Expression("alert", f"{path.name}: alert {rule['alert']}", rule["expr"]))
            else:
                out.append(Expression("record", f"{path.name}: record {rule['record']}", rule["expr"]))
    return out


def metric_names(expr: str) -> set[str]:
    """The monitor's metric names (``monitor_...``) that an expression reads."""
    return set(_METRIC_NAME.findall(expr))


def recorded_names(expr: str) -> set[str]:
    """The recording-rule names (``monitor:...``) that an expression reads."""
    return set(re.findall(r"(?<![\w:])monitor:[a-z_:0-9]+", expr))


def reads_input_drift(expr: str) -> bool:
    """Whether ``expr`` selects input drift findings (``kind="input"``), which may not exist."""
    return bool(_INPUT_DRIFT.search(expr))


def query_result_options(variable: Mapping[str, Any], result: Sequence[Mapping[str, Any]]) -> list[str]:
    """The options Grafana makes of a ``query_result(...)`` variable's result, its regex applied.

    Grafana renders each sample as ``name{label="value",...} value timestamp_ms`` (labels in the
    order Prometheus returns them, sorted) and keeps the regex's first group, or the whole text
    when the regex has none; texts the regex does not match are dropped.
    """
    regex = str(variable.get("regex") or "")
    pattern = re.compile(regex[1 : regex.rindex("/")]) if regex.startswith("/") else None
    options = []
    for sample in result:
        labels = dict(sample["metric"])
        name = labels.pop("__name__", "")
        text = name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
        text += f" {sample['value'][1]} {int(float(sample['value'][0]) * 1000)}"
        if pattern is None:
            options.append(text)
            continue
        match = pattern.search(text)
        if match:
            options.append(match.group(1) if match.groups() else match.group(0))
    return sorted(set(options))
