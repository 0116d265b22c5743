"""YAML loading that keeps line numbers, so every problem can name its line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

from monitor.errors import Problem


class LocatedYaml:
    """A parsed YAML document plus the line of every mapping key (as ``a.b.c`` paths)."""

    def __init__(self, data: Any, lines: dict[tuple[str | int, ...], int]) -> None:
        self.data = data
        self._lines = lines

    def line_of(self, loc: tuple[str | int, ...]) -> int | None:
        """The 1-based line of the deepest known key on ``loc``."""
        for end in range(len(loc), 0, -1):
            line = self._lines.get(tuple(loc[:end]))
            if line is not None:
                return line
        return None


def read_text(path: Path) -> tuple[str | None, list[Problem]]:
    """Read a UTF-8 text file; a problem names the line of the first undecodable byte."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, [Problem(str(path), "file not found")]
    except OSError as exc:
        return None, [Problem(str(path), f"cannot read: {exc.strerror or exc}")]
    try:
        return raw.decode("utf-8"), []
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        byte = raw[exc.start : exc.start + 1].hex()
        return None, [Problem(f"{path}:{line}", f"not valid UTF-8 (byte 0x{byte} at column {column})")]


def load_yaml(text: str, path: Path) -> tuple[LocatedYaml | None, list[Problem]]:
    """Parse one YAML document; syntax errors become a problem with file and line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        what = " ".join(part for part in (exc.context, exc.problem) if part)
        return None, [Problem(where, f"invalid YAML: {what}")]
    except yaml.YAMLError as exc:
        return None, [Problem(str(path), f"invalid YAML: {exc}")]
    lines: dict[tuple[str | int, ...], int] = {}
    if node is not None:
        _collect_lines(node, (), lines)
    return LocatedYaml(data, lines), []


def _collect_lines(
    node: yaml.Node, prefix: tuple[str | int, ...], out: dict[tuple[str | int, ...], int]
) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            loc = (*prefix, str(key_node.value))
            out[loc] = key_node.start_mark.line + 1
            _collect_lines(value_node, loc, out)
    elif isinstance(node, yaml.SequenceNode):
        for index, child in enumerate(node.value):
            loc = (*prefix, index)
            out[loc] = child.start_mark.line + 1
            _collect_lines(child, loc, out)


def pydantic_problems(exc: Any, path: Path, located: LocatedYaml, root: str = "") -> list[Problem]:
    """One problem per pydantic error, located at ``file:line`` with the dotted field path."""
    problems = []
    for error in exc.errors():
        loc = tuple(
            part for part in error["loc"] if not (isinstance(part, str) and part.startswith("function-"))
        )
        dotted = ".".join(str(part) for part in loc) or root or "(document)"
        line = located.line_of(loc)
        where = f"{path}:{line}" if line else str(path)
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required key is missing"
        message = message.removeprefix("Value error, ")
        problems.append(Problem(where, f"{dotted}: {message}"))
    return problems


class Strict(BaseModel):
    """The base of every schema of a file we load (``monitor.yaml``, ``evalset.yaml``): unknown keys
    are refused, a loaded model is frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
