"""The demo's model build shows where it is: a line per stage and, inside a training stage, a line
every so often with the step and the time left for the whole build."""

from __future__ import annotations

import re
import time

from monitor.demo.build import _Progress, _quiet_transformers, _Say


def test_training_stages_report_their_steps_and_the_time_left() -> None:
    lines: list[str] = []
    work = {"tokenizer": 2.0, "base v1": 50.0, "lora v1": 10.0, "base v2": 40.0}
    progress = _Progress(_Say(lines.append), work, every=0.0)
    with progress.stage("tokenizer"):
        pass
    assert lines == ["[1/4] building tokenizer ...", "[1/4] built tokenizer in 0 s"]  # no guess from it
    with progress.stage("base v1") as tick:
        for step in range(1, 5):
            time.sleep(0.3)
            tick(step, 4)
    steps = [line for line in lines if ": step " in line]
    assert [s.split(":")[1].split("(")[0].strip() for s in steps] == [
        "step 1 of 4",
        "step 2 of 4",
        "step 3 of 4",
    ]
    assert all(re.search(r"\(\d+%\); about \d+ s left$", line) for line in steps), steps
    # base v1 is half the training: after it, about as long again is left
    left = int(re.search(r"built base v1 in \d+ s; about (\d+) s left", lines[-1]).group(1))  # type: ignore[union-attr]
    assert 0.5 * progress.timings["base v1"] <= left <= 1.5 * progress.timings["base v1"] + 1, lines
    for name in ("lora v1", "base v2"):
        with progress.stage(name):
            pass
    assert lines[-1].startswith("[4/4] built base v2 in ") and "left" not in lines[-1]


def test_transformers_advice_is_kept_off_the_screen_during_the_build() -> None:
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    with _quiet_transformers():
        assert hf_logging.get_verbosity() == hf_logging.ERROR and not hf_logging.is_progress_bar_enabled()
    assert (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) == before
