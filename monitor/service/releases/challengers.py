"""Challenger bookkeeping: which challenger jobs are pending or stale, and marking a release evaluated."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from monitor.config import MonitorConfig
from monitor.service.releases.effective import challenger_job, model_name, release_of_job

if TYPE_CHECKING:
    from monitor.store import Store


def stale_challenger_jobs(store: Store, cfg: MonitorConfig) -> list[str]:
    """Challenger jobs whose release was last run on another version of a golden set than the fine-tune.

    A refreshed golden set makes the challenger comparison unpaired (the items differ); running the
    release and the old base again on the new version restores it.  A release that was already run
    on the new version (even if that run failed) is not stale, so nothing is queued over and over.
    """
    stale = []
    for ft in cfg.finetunes.values():
        for evalset in ft.evalsets:
            latest = store.runs(model=ft.model, evalset=evalset, status="succeeded", limit=1)
            if not latest:
                continue
            version = latest[0][0].evalset_version
            for name in ft.challengers:
                job = challenger_job(name)
                if job not in cfg.jobs or job in stale:
                    continue
                tried = store.runs(model=name, evalset=evalset, limit=1)
                if tried and tried[0][0].evalset_version != version:
                    stale.append(job)
    return stale


def mark_evaluated(store: Store, cfg: MonitorConfig, job: str, when: datetime | None = None) -> list[str]:
    """After a challenger job has run: mark its release evaluated (``cfg`` as declared or effective)."""
    name = release_of_job(job)
    if name is None:
        return []
    marked = []
    for release in store.releases():
        if release.id is not None and release.evaluated_at is None and model_name(cfg, release) == name:
            store.mark_release_evaluated(release.id, when)
            marked.append(release.name)
    return marked


# --- the watcher -----------------------------------------------------------------------------------


def pending_challenger_jobs(cfg: MonitorConfig, releases: Sequence[Any]) -> list[str]:
    """Challenger jobs of releases not yet evaluated, that the effective configuration knows."""
    jobs = []
    for release in releases:
        if release.evaluated_at is not None:
            continue
        name = model_name(cfg, release)
        job = challenger_job(name)
        if job in cfg.jobs:
            jobs.append(job)
    return jobs
