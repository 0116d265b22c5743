"""What the CLI prints: repeated problems counted once; the drift report's header says what it covers."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from monitor.api.views import count_repeats
from monitor.cli.main import app
from tests.unit.test_drift_cli import messages, resampled, write_setup


def test_repeated_problems_are_counted_once() -> None:
    problems = [f"log.jsonl:{n}: lacks 'timestamp'" for n in range(3, 803)] + ["log.jsonl:900: not JSON"]
    assert count_repeats(problems) == [
        "800 lines: lacks 'timestamp' (first at log.jsonl:3)",
        "log.jsonl:900: not JSON",
    ]
    assert count_repeats(["no location"]) == ["no location"]


def test_the_drift_report_has_a_header_naming_model_window_reference_and_sizes(tmp_path: Path) -> None:
    config = write_setup(tmp_path, resampled(messages(150, seed=8, drift=1.0), 800, seed=4))
    output = tmp_path / "r.html"
    result = CliRunner().invoke(
        app, ["report", "drift", "router", "--config", str(config), "-o", str(output)]
    )
    assert result.exit_code == 0, result.output
    text = output.read_text()
    head = text[text.index("<h1>Input drift: router</h1>") :][:1500]
    assert "Verdict: drifted" in head and "Window: " in head and "reference: " in head
    assert "800 rows, 150 distinct texts" in head or "current window: 800 rows" in head, head
    missing = CliRunner().invoke(
        app, ["report", "drift", "router", "--config", str(config), "-o", str(tmp_path / "no" / "r.html")]
    )
    assert missing.exit_code != 0 and "does not exist" in missing.stderr


REASON = "confirmed (95% CI -12.7 points to -6.3 points) over 3 runs, slices billing and shipping"
COLUMNS = [
    "model",
    "evalset",
    "strategy",
    "metric",
    "state",
    "delta",
    "95% CI",
    "adj. p",
    "MDD",
    "runs",
    "note",
]
ROW = [
    "support-ft",
    "routing",
    "zero_shot",
    "acc",
    "regressed",
    "-0.095",
    "[-0.127, -0.063]",
    "0.0012",
    "0.03",
    "3",
]


def _drawn(wide: bool, width: int = 80) -> list[str]:
    import io

    from rich.console import Console

    from monitor.api.views import print_table

    buffer = io.StringIO()
    print_table("verdicts", COLUMNS, [[*ROW, REASON]], wide=wide, console=Console(file=buffer, width=width))
    return buffer.getvalue().splitlines()


def test_a_narrow_table_wraps_reasons_between_words_and_keeps_every_word() -> None:
    lines = _drawn(wide=False)
    note = [line.rstrip().rstrip("│┃").rsplit("│", 1)[-1].strip() for line in lines if line.startswith("│")]
    assert " ".join(w for w in note if w).split() == REASON.split()
    assert "…" not in "".join(lines)


def test_a_wide_table_keeps_each_reason_on_one_line() -> None:
    lines = _drawn(wide=True)
    assert any(REASON in line for line in lines)
    assert sum(1 for line in lines if line.startswith("│")) == 1
