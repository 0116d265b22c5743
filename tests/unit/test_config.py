"""monitor.yaml: schema, interpolation, relative paths and one-line-per-problem errors."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from monitor.config import load_config
from monitor.errors import ConfigError
from monitor.schedule import parse_interval

GOOD = """\
database: ${DB_URL:-sqlite:///state/monitor.db}
models:
  router:
    base: ./models/base
    adapter: ./models/lora
    strategy: zero-shot
  challenger:
    base: ./models/v2
    strategy: 5-shot
evalsets:
  tickets: evals/tickets
jobs:
  nightly:
    models: [router, challenger]
    evalsets: [tickets]
    schedule: {cron: "0 3 * * *", timezone: Europe/Berlin}
  hourly:
    models: [router]
    evalsets: [tickets]
    strategies: [zero-shot, 2-shot]
    schedule: {every: 1h30m}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "monitor.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {})
    return [str(p) for p in info.value.problems]


def test_loads_frozen_config_with_resolved_paths(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD), env={})
    assert cfg.database_url() == f"sqlite:///{tmp_path / 'state/monitor.db'}"
    base, adapter = cfg.model_source("router")
    assert base == str(tmp_path / "models/base") and adapter == str(tmp_path / "models/lora")
    assert cfg.resolve(cfg.evalsets["tickets"]) == tmp_path / "evals/tickets"
    assert cfg.jobs["hourly"].strategies == ("zero-shot", "2-shot")
    with pytest.raises(ValidationError):  # frozen
        cfg.models["router"].base = "x"  # type: ignore[misc]


def test_env_interpolation(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD), env={"DB_URL": "postgresql://u:p@localhost/m"})
    assert cfg.database_url() == "postgresql://u:p@localhost/m"
    path = write(tmp_path, GOOD.replace("${DB_URL:-sqlite:///state/monitor.db}", "${DB_URL}"))
    assert problems(path) == [f"{path}:1: database: environment variable DB_URL is not set"]


def test_hub_ids_stay_as_they_are(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD.replace("./models/v2", "acme/llm-v2")), env={})
    assert cfg.model_source("challenger") == ("acme/llm-v2", None)


def test_unknown_keys_and_bad_values_one_line_each(tmp_path: Path) -> None:
    text = GOOD.replace("    strategy: 5-shot\n", "    strategy: many-shot\n    colour: red\n")
    path = write(tmp_path, text)
    found = problems(path)
    assert (
        f"{path}:9: models.challenger.strategy: 'many-shot' is not a prompt strategy; use zero-shot, N-shot (like 5-shot) or evalset"
        in found
    )
    assert f"{path}:10: models.challenger.colour: unknown key" in found
    assert len(found) == 2


def test_references_to_unknown_models_and_evalsets(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        GOOD.replace("models: [router, challenger]", "models: [router, ghost]").replace(
            "    evalsets: [tickets]\n    strategies", "    evalsets: [nope]\n    strategies"
        ),
    )
    found = problems(path)
    assert any(p.startswith(f"{path}:14: jobs.nightly.models: unknown model 'ghost'") for p in found), found
    assert any(p.startswith(f"{path}:19: jobs.hourly.evalsets: unknown eval set 'nope'") for p in found), (
        found
    )


def test_schedules_are_checked(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('"0 3 * * *"', '"61 3 * * *"').replace("1h30m", "soon"))
    found = problems(path)
    assert any(":16: jobs.nightly.schedule.cron: invalid cron expression '61 3 * * *'" in p for p in found), (
        found
    )
    assert any(":21: jobs.hourly.schedule.every: 'soon' is not an interval" in p for p in found), found
    both = write(tmp_path, GOOD.replace("{every: 1h30m}", "{every: 1h, cron: '* * * * *'}"))
    assert any("give exactly one of 'every' or 'cron'" in p for p in problems(both))
    # a bad time zone is blamed on the time zone, not on a good cron string
    zone = problems(write(tmp_path, GOOD.replace("Europe/Berlin", "Europe/Berln")))
    assert any(
        ":16: jobs.nightly.schedule.timezone: unknown time zone 'Europe/Berln' (an IANA name, like UTC or "
        "Europe/Berlin)" in p
        for p in zone
    ), zone
    assert not any("cron" in p for p in zone), zone


def test_interval_parsing() -> None:
    assert parse_interval("1h30m") == timedelta(minutes=90)
    assert parse_interval("45s") == timedelta(seconds=45)
    for bad in ("0m", "h", "5 minutes", ""):
        with pytest.raises(ValueError):
            parse_interval(bad)


def test_yaml_syntax_empty_and_missing(tmp_path: Path) -> None:
    path = write(tmp_path, "models:\n  a: [\n")
    (problem,) = problems(path)
    assert problem.startswith(f"{path}:3: invalid YAML")
    assert problems(write(tmp_path, "")) == [f"{path}: file is empty"]
    assert problems(tmp_path / "absent.yaml") == [f"{tmp_path / 'absent.yaml'}: file not found"]
    assert problems(write(tmp_path, "- a\n- b\n")) == [
        f"{path}:1: must be a mapping of keys (database, models, evalsets, jobs)"
    ]


def test_database_must_be_a_url(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("${DB_URL:-sqlite:///state/monitor.db}", "monitor.db"))
    assert problems(path) == [
        f"{path}:1: database: 'monitor.db' is not a database URL (like sqlite:///monitor.db)"
    ]
