"""The effective configuration: stored releases folded in as models, families' newer versions as
challengers, one challenger job per release, so a discovered release behaves like a configured model."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from monitor.config import FamilyConfig, JobConfig, ModelConfig, MonitorConfig, WatchConfig
from monitor.errors import WatchError
from monitor.service.releases.sources import Release

log = logging.getLogger("monitor.service.releases")
CHALLENGER_JOB_PREFIX = "challengers-"


def model_entry(watch: WatchConfig | None, release: Any) -> ModelConfig:
    """The ``models:`` entry of a release: the watch's ``model:`` fields plus where the release is."""
    if watch is None:
        if release.source != "config":
            raise WatchError(f"its family no longer has a watch: {release.source} releases are left out")
        return ModelConfig.model_validate({"base": release.location, "revision": release.revision})
    return ModelConfig.model_validate(watch.release_model(release.location, release.revision))


def configured_model_for(cfg: MonitorConfig, release: Any) -> str | None:
    """The configured model that already is this release (same folder, served id or commit), if any."""
    for name, model in cfg.models.items():
        if model.adapter is not None:
            continue
        if release.source == "directory" or release.source == "config":
            base, _ = cfg.model_source(name)
            if _same_path(base, release.location):
                return name
        elif model.base == release.location and (
            release.source != "hub" or model.revision == release.revision
        ):
            return name
    return None


def _same_path(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return a == b


def model_name(cfg: MonitorConfig, release: Any) -> str:
    """The ``models:`` name a release goes by: the configured model it is, or its own name."""
    return configured_model_for(cfg, release) or release.name


def challenger_job(release: str) -> str:
    """The name of the job that evaluates ``release`` against the old bases of its family's fine-tunes."""
    return f"{CHALLENGER_JOB_PREFIX}{release}"


def registered_releases(cfg: MonitorConfig) -> list[Release]:
    """The versions listed under ``families:`` that are newer than some fine-tune's base."""
    out = []
    for family_name, family in cfg.families.items():
        for version in _newer_versions(cfg, family_name, family):
            base, _ = cfg.model_source(version)
            out.append(Release(family_name, version, "config", base, cfg.models[version].revision))
    return out


def _newer_versions(cfg: MonitorConfig, family_name: str, family: FamilyConfig) -> list[str]:
    bases = [ft.base_model for ft in cfg.finetunes.values() if ft.family == family_name]
    positions = [family.versions.index(b) for b in bases if b in family.versions]
    oldest = min(positions) if positions else -1
    return list(family.versions[oldest + 1 :])


def effective_config(cfg: MonitorConfig, releases: Iterable[Any]) -> MonitorConfig:
    """The configuration with stored releases folded in.

    Each release of a configured family becomes a model (unless a configured
    model already is that release), a challenger of the family's fine-tunes,
    and a challenger job, scheduled by the family's ``reevaluate`` (or not at
    all).  Releases of families no longer configured stay in the history and
    are left out.
    """
    models = dict(cfg.models)
    by_family: dict[str, list[str]] = {}
    for release in releases:
        family = cfg.families.get(release.family)
        if family is None:
            continue
        configured = configured_model_for(cfg, release)
        if configured is None:
            if release.name in models:
                log.warning("release %s has the name of a configured model; it is left out", release.name)
                continue
            try:
                models[release.name] = model_entry(family.watch, release)
            except Exception as exc:  # a watch template changed under a stored release
                log.warning("release %s cannot be made a model: %s", release.name, exc)
                continue
        by_family.setdefault(release.family, []).append(configured or release.name)
    for family_name, family in cfg.families.items():
        listed = by_family.setdefault(family_name, [])
        for version in _newer_versions(cfg, family_name, family):
            if version not in listed:
                listed.append(version)
    finetunes = dict(cfg.finetunes)
    jobs = dict(cfg.jobs)
    for family_name, names in by_family.items():
        members = {n: ft for n, ft in cfg.finetunes.items() if ft.family == family_name}
        if not members or not names:
            continue
        for ft_name, ft in members.items():
            extra = [n for n in names if n not in (ft.model, ft.base_model)]
            finetunes[ft_name] = ft.model_copy(
                update={"challengers": tuple(dict.fromkeys((*ft.challengers, *extra)))}
            )
        old_bases = tuple(dict.fromkeys(ft.base_model for ft in members.values()))
        evalsets = tuple(dict.fromkeys(e for ft in members.values() for e in ft.evalsets))
        strategies = tuple(dict.fromkeys(s for ft in members.values() for s in ft.strategies))
        for name in names:
            if name in old_bases:
                continue
            job = challenger_job(name)
            if job in jobs:
                continue
            jobs[job] = JobConfig(
                models=(name, *(b for b in old_bases if b != name)),
                evalsets=evalsets,
                strategies=strategies,
                schedule=cfg.families[family_name].reevaluate,
            )
    return cfg.model_copy(update={"models": models, "finetunes": finetunes, "jobs": jobs})


def release_of_job(job: str) -> str | None:
    """The release a challenger job evaluates, or None for other jobs."""
    return job[len(CHALLENGER_JOB_PREFIX) :] if job.startswith(CHALLENGER_JOB_PREFIX) else None
