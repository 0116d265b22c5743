"""``monitor check-config``: validate the configuration and what it names, one line per problem."""

from __future__ import annotations

from pathlib import Path

from monitor.cli.options import DEFAULT_CONFIG, ConfigOption, load_config_file
from monitor.cli.output import (
    handle_errors,
)
from monitor.errors import ConfigError


@handle_errors
def check_config_command(config: ConfigOption = Path(DEFAULT_CONFIG)) -> None:
    """Validate the configuration and every eval set and model path it names; one line per problem."""
    from monitor.service.checks import config_problems

    cfg = load_config_file(config)
    problems = config_problems(cfg, config)
    if problems:
        raise ConfigError(problems)
    print(f"{config}: ok ({len(cfg.models)} models, {len(cfg.evalsets)} eval sets, {len(cfg.jobs)} jobs)")
