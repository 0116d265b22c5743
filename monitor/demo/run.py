"""``monitor demo``: build the demo models (cached), tell the aging story, then run the daemon.

The story (:mod:`monitor.demo.story`) takes the fine-tune from deployment
through drift and a confirmed regression to a new base release and a re-base
recommendation, with webhooks landing in a local receiver.  Then the daemon
starts on the demo configuration with a fast schedule (the fine-tune every
minute, the releases folder watched), prints where ``/metrics`` is and shows
the status table as runs land, until Ctrl-C.  ``--once`` stops after the story
(what the tests and CI use).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from monitor.api.views import print_status
from monitor.demo.story import SECRET, SECRET_ENV, prepare_workdir, tell_story, write_demo_config

DEMO_PORT = 9464


def run_demo(workdir: Path, *, rebuild: bool = False, once: bool = False, port: int = DEMO_PORT) -> Path:
    """Build (or load) the demo models, tell the story, then run the daemon unless ``once``."""
    from monitor.api.app import run_daemon
    from monitor.demo.build import build_demo_models
    from monitor.demo.receiver import DemoReceiver

    workdir = workdir.resolve()
    started = time.perf_counter()
    print(f"demo: the demo models live under {workdir / 'models'} (built once, then cached)", flush=True)
    models = build_demo_models(
        workdir / "models", force=rebuild, progress=lambda line: print(f"demo: {line}", flush=True)
    )
    print(
        f"demo: models {'loaded from cache' if models.from_cache else 'built'} "
        f"in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    prepare_workdir(workdir)
    os.environ.setdefault(SECRET_ENV, SECRET)
    receiver = DemoReceiver(os.environ[SECRET_ENV], workdir / "webhooks.log").start()
    try:
        config_path = write_demo_config(workdir, models, port=port, receiver_url=receiver.url)
        print(f"demo: configuration written to {config_path}", flush=True)
        tell_story(
            workdir,
            config_path,
            models,
            receiver=receiver,
            say=lambda line: print(line, flush=True),
            show_table=print_status,
        )
        print(
            f"\ndemo: story told in {time.perf_counter() - started:.0f} s; database {workdir / 'monitor.db'}",
            file=sys.stderr,
            flush=True,
        )
        if once:
            return config_path
        print(
            "demo: starting the daemon on the demo configuration: the fine-tune runs every minute and "
            f"{workdir / 'releases'} is watched for new base models. Ctrl-C stops it.",
            flush=True,
        )
        run_daemon(config_path, on_status=print_status, log_level="warning")
    finally:
        receiver.stop()
    return config_path
