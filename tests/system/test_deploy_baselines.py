"""The daemon laid out as deploy/compose.yaml lays it out: read-only config, writable baselines.

There is no Docker engine here, so the container's folders are recreated under a temporary
root: the configuration mounted read-only (mode 0444), the baselines folder writable, the state
folder as the working directory. The daemon runs as a real process on a tiny model; a baseline
pinned with ``monitor baseline pin`` lands in the mounted folder and the daemon exports it.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import TinyModels
from tests.helpers.prom import free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"
EXAMPLE_CONFIG = ROOT / "deploy" / "monitor.example.yaml"
CHOICES = ["billing", "technical", "account", "shipping"]
BASELINE_SERIES = 'monitor_baseline_score{evalset="small",metric="acc",model="router",strategy="zero-shot"}'


def compose_mounts() -> dict[str, tuple[str, bool]]:
    """The monitor service's mounts: container path -> (source, read-only)."""
    compose = yaml.safe_load(COMPOSE.read_text())
    mounts = {}
    for volume in compose["services"]["monitor"]["volumes"]:
        source = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", volume)
        parts = source.split(":")
        mounts[parts[1]] = (parts[0], parts[2:] == ["ro"])
    return mounts


def example_baselines_line() -> str:
    (line,) = [line for line in EXAMPLE_CONFIG.read_text().splitlines() if line.startswith("baselines:")]
    return line


def inside(root: Path, container_path: str) -> Path:
    return root / container_path.lstrip("/")


def write_container(root: Path, tiny: TinyModels, port: int) -> tuple[Path, Path, Path]:
    """The container's files under ``root``: (config, baselines folder, state folder)."""
    mounts = compose_mounts()
    (config_path,) = [path for path, (_, ro) in mounts.items() if path.endswith("/monitor.yaml") and ro]
    (baselines_path,) = [path for path in mounts if path.rstrip("/").endswith("/baselines")]
    state_path = "/var/lib/monitor"
    assert state_path in mounts
    (evals_path,) = [path for path in mounts if path.endswith("/evals")]
    evals = inside(root, evals_path) / "small"
    evals.mkdir(parents=True)
    (evals / "evalset.yaml").write_text(
        f'name: small\ntask: multiple_choice\nprompt: "Ticket: {{input}}\\nCategory:"\nchoices: {json.dumps(CHOICES)}\n'
    )
    words = ["refund", "crash", "login", "parcel", "invoice", "password", "screen", "address"]
    (evals / "data.jsonl").write_text(
        "".join(
            json.dumps(
                {"id": f"i{k}", "input": f"{words[k % 8]} {words[(k * 5) % 8]}", "target": CHOICES[k % 4]}
            )
            + "\n"
            for k in range(12)
        )
    )
    baselines = inside(root, baselines_path)
    baselines.mkdir(parents=True)
    state = inside(root, state_path)
    state.mkdir(parents=True)
    config = inside(root, config_path)
    config.parent.mkdir(parents=True)
    # The example's own `baselines:` line; MONITOR_BASELINES_DIR moves its default (the mounted
    # folder) under the temporary root, as the database URL moves /var/lib/monitor.
    config.write_text(
        f"""\
database: ${{MONITOR_DATABASE_URL}}
{example_baselines_line()}
models:
  router: {{base: {tiny.gpt2}, adapter: {tiny.lora}}}
evalsets:
  small: {evals}
jobs:
  nightly:
    models: [router]
    evalsets: [small]
    schedule: {{every: 1h, run_at_start: true}}
daemon:
  host: 127.0.0.1
  port: {port}
  chunk_size: 4
"""
    )
    config.chmod(0o444)
    config.parent.chmod(0o555)
    return config, baselines, state


def container_env(baselines: Path, state: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "MONITOR_DATABASE_URL": f"sqlite:///{state / 'monitor.db'}",
        "MONITOR_BASELINES_DIR": str(baselines),
    }


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def succeeded_runs(port: int) -> list[dict[str, object]]:
    url = f"http://127.0.0.1:{port}/api/v1/runs?model=router&evalset=small&status=succeeded"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return list(json.loads(response.read())["runs"])
    except OSError:
        return []  # not listening yet


def test_compose_mounts_the_config_read_only_and_the_baselines_writable() -> None:
    mounts = compose_mounts()
    assert mounts["/etc/monitor/monitor.yaml"][1] is True
    (baselines,) = [path for path in mounts if path.endswith("/baselines")]
    source, read_only = mounts[baselines]
    assert not read_only
    compose = yaml.safe_load(COMPOSE.read_text())
    assert source in compose["volumes"], "the baselines are a named volume of the compose file"
    # The example configuration's default is the mounted folder.
    assert example_baselines_line() == f"baselines: ${{MONITOR_BASELINES_DIR:-{baselines}}}"
    assert (
        f"mkdir -p /var/lib/monitor /etc/monitor {baselines}" in (ROOT / "deploy" / "Dockerfile").read_text()
    )


def test_daemon_finds_a_baseline_pinned_into_the_mounted_folder(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    port = free_port()
    config, baselines, state = write_container(tmp_path, tiny_models, port)
    env = container_env(baselines, state)
    config_text = config.read_text()
    log = tmp_path / "daemon.log"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "monitor", "daemon", "-c", str(config)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=state,
    )
    try:
        deadline = time.monotonic() + 60
        while not succeeded_runs(port):
            if daemon.poll() is not None:
                pytest.fail(f"daemon exited ({daemon.returncode}):\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no succeeded run:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        assert BASELINE_SERIES not in scrape(port), "no baseline before the pin"

        pinned = subprocess.run(
            [sys.executable, "-m", "monitor", "baseline", "pin", "router", "small", "-c", str(config)],
            capture_output=True,
            text=True,
            env=env,
            cwd=state,
            timeout=60,
        )
        assert pinned.returncode == 0, pinned.stdout + pinned.stderr
        written = baselines / "router" / "small.json"
        assert json.loads(written.read_text())["format_version"] == 1
        # (as root the mode does not stop a write, hence the content check too)
        assert stat.S_IMODE(config.stat().st_mode) == 0o444 and config.read_text() == config_text

        assert BASELINE_SERIES in scrape(port), "the daemon reads the baseline from the mounted folder"
    finally:
        daemon.terminate()
        try:
            daemon.wait(15)
        finally:
            if daemon.poll() is None:
                daemon.kill()
        config.parent.chmod(0o755)
