"""Loading ``monitor.yaml``: ``${ENV}`` interpolation, validation, one located line per problem.

Every problem comes out as one line with the file, the line and the dotted key
path.  Relative paths are resolved against the configuration file's directory;
the loaded :class:`~monitor.config.schema.MonitorConfig` is frozen.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from monitor._yaml import LocatedYaml, load_yaml, pydantic_problems, read_text
from monitor.config.schema import MonitorConfig
from monitor.errors import ConfigError, Problem

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


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
        problems = _split_reference_errors(pydantic_problems(exc, config_path, located), config_path, located)
        raise ConfigError(_with_suggestions(problems, data)) from None


def _with_suggestions(problems: list[Problem], data: dict[str, Any]) -> list[Problem]:
    """An unknown top-level key gets the known key it most resembles ("did you mean 'database'?"),
    or the list of known keys."""
    known = sorted(name for name in MonitorConfig.model_fields if name != "root")
    out = []
    for problem in problems:
        key = problem.message.removesuffix(": unknown key")
        if key != problem.message and key in data and key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
            problem = Problem(problem.location, problem.message + hint)
        out.append(problem)
    return out


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
