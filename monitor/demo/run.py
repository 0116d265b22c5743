"""``monitor demo``: build the demo models (cached), tell the aging story, then run the daemon.

The story (:mod:`monitor.demo.story`) takes the fine-tune from deployment
through drift and a confirmed regression to a new base release and a re-base
recommendation, with webhooks landing in a local receiver.  Then the daemon
starts on the demo configuration with a fast schedule (the fine-tune every
minute, the releases folder watched), prints where ``/metrics`` is and one
line per event (a run with its score and verdict, a changed recommendation, a
release found), until Ctrl-C.  ``--once`` stops after the story
(what the tests and CI use).

Two configurations are written: ``monitor-demo.yaml``, which the demo itself
runs (webhooks to its receiver, whose secret only the demo process holds), and
``monitor.yaml``, the same without webhooks, which ``monitor check-config`` and
``monitor daemon`` take as is after the demo has ended.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from monitor.api.views import print_status
from monitor.demo.story import (
    FINETUNE,
    SECRET,
    SECRET_ENV,
    claim_workdir,
    prepare_workdir,
    tell_story,
    write_demo_config,
)

DEMO_PORT = 9464


def run_demo(workdir: Path, *, rebuild: bool = False, once: bool = False, port: int = DEMO_PORT) -> Path:
    """Build (or load) the demo models, tell the story, then run the daemon unless ``once``."""
    # torch's OpenMP threads spin while they wait by default; beside other work on a small machine
    # that spinning made the build many times slower. Set before torch is first imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # transformers draws a bar for every model it loads or saves: noise between the story's lines
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from monitor.api.app import run_daemon
    from monitor.demo.build import build_demo_models, link_stable_paths
    from monitor.demo.receiver import DemoReceiver

    workdir = workdir.resolve()
    claim_workdir(workdir)
    say: Callable[[str], None] = lambda line: print(line, flush=True)  # noqa: E731
    started = time.perf_counter()
    say(f"demo: the demo models live under {workdir / 'models'} (built once, then cached)")
    models = build_demo_models(workdir / "models", force=rebuild, progress=lambda line: say(f"demo: {line}"))
    models = link_stable_paths(models, workdir / "models")
    built = time.perf_counter() - started
    say(f"demo: models {'loaded from the cache' if models.from_cache else 'built'} in {built:.0f} s")
    prepare_workdir(workdir)
    os.environ.setdefault(SECRET_ENV, SECRET)
    receiver = DemoReceiver(os.environ[SECRET_ENV], workdir / "webhooks.log").start()
    try:
        plain = write_demo_config(workdir, models, port=port)
        config_path = write_demo_config(
            workdir, models, port=port, receiver_url=receiver.url, name="monitor-demo.yaml"
        )
        say(f"demo: configuration written to {plain} (and {config_path.name}, with the demo's webhooks)")
        story_started = time.perf_counter()
        tell_story(workdir, config_path, models, receiver=receiver, say=say, show_table=print_status)
        print(
            f"\ndemo: story told in {time.perf_counter() - story_started:.0f} s; database {workdir / 'monitor.db'}",
            file=sys.stderr,
            flush=True,
        )
        for line in next_commands(workdir, plain):
            say(line)
        if once:
            return plain
        say(
            "demo: starting the daemon on the demo configuration: the fine-tune runs every minute and "
            f"{workdir / 'releases'} is watched for new base models. Ctrl-C stops it."
        )
        from monitor.api.views import EventLines, status_entries
        from monitor.config import load_config
        from monitor.store import Store

        events = EventLines(load_config(config_path).database_url())
        with Store.open(load_config(config_path).database_url(), create=False) as store:
            events.prime(status_entries(store))
        run_daemon(config_path, on_status=events, log_level="warning")
    finally:
        receiver.stop()
    return plain


def next_commands(workdir: Path, config: Path) -> list[str]:
    """The block printed at the end: commands to try next, with the story's real run ids, runnable as
    written from the current folder (the repository's root, when the demo was started from there)."""
    from monitor.config import load_config
    from monitor.store import Store

    cfg = load_config(config)
    with Store.open(cfg.database_url(), create=False) as store:
        runs = [run for run, _ in store.runs(model=FINETUNE, evalset="ticket-routing")]
    # the two newest runs: the same eval set version, so the diff pairs every item
    newest, oldest = (runs[0].id, runs[1].id) if len(runs) > 1 else (None, None)
    exe = _executable()
    c = f"-c {_shown(config)}"
    lines = ["", "demo: next, try these (on the demo's history, from this folder):"]
    commands: list[tuple[str, str]] = [
        (f"{exe} status {c}", "the newest run of every series, its verdict"),
        (f"{exe} history {FINETUNE} ticket-routing {c}", "every run of one series"),
        (f"{exe} recommend {FINETUNE} {c}", "the recommendation, its reasons and the cost case"),
        (f"{exe} report {FINETUNE} {c} -o {_shown(workdir / 'report.html')}", "the HTML report, with charts"),
    ]
    if newest is not None and oldest is not None and newest != oldest:
        commands.insert(2, (f"{exe} diff {oldest} {newest} {c}", "two nightly runs, item by item"))
    commands.append((f"{exe} daemon {c}", "restart the daemon on the demo's history (Ctrl-C stops it)"))
    width = max(len(command) for command, _ in commands)
    lines += [f"  {command.ljust(width)}  # {why}" for command, why in commands]
    return lines


def _shown(path: Path) -> str:
    """``path`` relative to the current folder when it lies under it (shorter, and copy-pasteable)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _executable() -> str:
    """How to call ``monitor`` from here: ``monitor`` when it is on PATH, else the venv's path."""
    import shutil

    here = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    on_path = shutil.which("monitor")
    if on_path is not None and (here is None or Path(on_path).resolve() == here):
        return "monitor"
    if here is not None and here.name == "monitor":
        return _shown(here.parent / "monitor")
    return "monitor"
