"""The README's commands exist as written: every ``.venv/bin/monitor ...`` line names a real command with
real options (``--help`` on it succeeds), and every page it links to exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from monitor.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def commands() -> list[list[str]]:
    found = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith(".venv/bin/monitor "):
                found.append(shlex.split(line)[1:])
    return found


def test_the_readme_is_short() -> None:
    assert len(README.splitlines()) <= 350


@pytest.mark.parametrize("args", commands(), ids=lambda a: " ".join(a[:2]))
def test_every_readme_command_parses(args: list[str]) -> None:
    # The command must exist and its --help must list each long option the README gives it.
    words = [word for word in args if word.startswith("--")]
    result = CliRunner().invoke(app, [*_command_words(args), "--help"])
    assert result.exit_code == 0, result.output
    for option in words:
        name = option.split("=", 1)[0]
        assert name in result.output, f"{' '.join(args)}: {name} is not an option"


def _command_words(args: list[str]) -> list[str]:
    groups = {"baseline", "releases", "webhooks"}
    if args[0] in groups:
        return args[:2]
    if args[0] == "report":
        return ["report", "drift"] if args[1:2] == ["drift"] else ["report", "model"]
    return args[:1]


def test_every_linked_page_exists() -> None:
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
