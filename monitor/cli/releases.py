"""``monitor releases list|forget|scan``: base-model releases."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from monitor.api.views import json_default
from monitor.cli.options import DEFAULT_CONFIG, ConfigOption, load_config_file
from monitor.cli.output import (
    err,
    handle_errors,
    print_table,
)
from monitor.cli.runs import run_jobs_here
from monitor.errors import NotFoundError

releases_app = typer.Typer(help="Base-model releases: list them, or scan the watched families now.")


def _release_rows(releases: Sequence[Any], cfg: Any) -> list[list[str]]:
    from monitor.service.releases.effective import challenger_job, model_name
    from monitor.store import as_utc

    return [
        [
            r.family,
            r.name,
            r.source,
            r.location if r.revision is None else f"{r.location}@{r.revision[:12]}",
            f"{as_utc(r.discovered_at):%Y-%m-%d %H:%M}",
            "pending" if r.evaluated_at is None else f"{as_utc(r.evaluated_at):%Y-%m-%d %H:%M}",
            challenger_job(model_name(cfg, r)),
        ]
        for r in releases
    ]


_RELEASE_COLUMNS = ["family", "release", "source", "where", "found (UTC)", "evaluated (UTC)", "job"]


def _release_dicts(releases: Sequence[Any]) -> list[dict[str, Any]]:
    keys = ("family", "name", "source", "location", "revision", "details", "discovered_at", "evaluated_at")
    return [{k: getattr(r, k) for k in keys} for r in releases]


@releases_app.command("list")
@handle_errors
def releases_list_command(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The releases found so far, and whether their challenger evaluation has run."""
    from monitor.store import Store

    cfg = load_config_file(config)
    with Store.open(cfg.database_url()) as store:
        releases = store.releases()
    if as_json:
        print(json.dumps(_release_dicts(releases), default=json_default, indent=2))
    elif releases:
        print_table("releases", _RELEASE_COLUMNS, _release_rows(releases, cfg))
    else:
        print("no releases found yet (families: with versions or a watch in the config)")


@releases_app.command("forget")
@handle_errors
def releases_forget_command(
    release: Annotated[str, typer.Argument(help="The release's name, as `monitor releases list` shows it.")],
    config: ConfigOption = Path(DEFAULT_CONFIG),
) -> None:
    """Forget a release (a folder dropped by mistake): no longer a challenger; its runs stay in the history.

    A watcher that still sees it finds it again: remove it from the source first.
    """
    from monitor.store import Store

    cfg = load_config_file(config)
    with Store.open(cfg.database_url()) as store:
        if not store.forget_release(release):
            known = ", ".join(r.name for r in store.releases()) or "none"
            raise NotFoundError(f"no release named {release!r}; stored releases: {known}")
    err(f"release {release} forgotten; its runs stay in the history")


@releases_app.command("scan")
@handle_errors
def releases_scan_command(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    run: Annotated[
        bool, typer.Option("--run/--no-run", help="Run the challenger evaluations of new releases here.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Scan every watched family now; evaluate what is new against the old base (as the daemon would)."""
    from monitor.service.after_job import make_notifier
    from monitor.service.releases.challengers import pending_challenger_jobs
    from monitor.service.releases.effective import effective_config
    from monitor.service.releases.watch import ReleaseWatcher
    from monitor.store import Store, utcnow

    declared = load_config_file(config)
    watched = [name for name, family in declared.families.items() if family.watch is not None]
    with Store.open(declared.database_url()) as store:
        failed = False
        watcher = ReleaseWatcher(store, declared, notify=make_notifier(declared))
        new = watcher.register_configured()
        for family in watched:
            new += watcher.scan(family, utcnow())
            error = watcher.state[family].last_error
            if error:
                err(f"families.{family}.watch: {error}")
                failed = True
        cfg = effective_config(declared, store.releases())
        jobs = pending_challenger_jobs(cfg, store.releases())
        if not as_json:
            if new:
                print_table("new releases", _RELEASE_COLUMNS, _release_rows(new, cfg))
            else:
                err(f"no new release in {len(watched)} watched famil{'y' if len(watched) == 1 else 'ies'}")
        if run and jobs:
            finished = run_jobs_here(store, cfg, jobs, as_json=as_json)
            failed = failed or any(r.status != "succeeded" for r, _ in finished)
        elif as_json:
            print(
                json.dumps({"new": _release_dicts(new), "pending_jobs": jobs}, default=json_default, indent=2)
            )
        elif jobs:
            err(
                f"challenger jobs pending: {', '.join(jobs)} (monitor run JOB, or a running daemon runs them)"
            )
    if failed:
        raise typer.Exit(1)
