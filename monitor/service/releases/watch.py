"""Base-model releases: the families' versions, the watchers that find new ones, what a release triggers.

A fine-tune ages when its base model is superseded.  Each ``families:`` entry of
the configuration lists a base model's versions, oldest first, and may *watch*
a source where new versions appear:

* ``directory``: a folder where new model folders appear (a release is a
  sub-folder with a ``config.json`` and weights, untouched for ``settle``);
* ``openai``: an OpenAI-compatible server whose ``/models`` list grows;
* ``hub``: a hub repository whose branch gets new commits.

Every release is stored once (table ``releases``) and becomes a model the
monitor can evaluate, named after it.  For each fine-tune of the family it is a
*challenger*, and the daemon queues, without anyone asking, the challenger
job ``challengers-<release>``: the release and the fine-tune's old base, on the
fine-tune's golden eval sets, under each of its prompt strategies, so that like
is compared with like.  When that job has run, the recommendations are redone
and the release is marked evaluated; a release not yet evaluated is queued
again at the next start.

:func:`effective_config` folds the stored releases into the configuration; the
daemon and the CLI work on that effective configuration, so a discovered
release behaves like a configured model everywhere (runs, resume, metrics).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from monitor import events
from monitor.config import FamilyConfig, JobConfig, ModelConfig, MonitorConfig, WatchConfig
from monitor.errors import WatchError
from monitor.events import Notify

if TYPE_CHECKING:
    from sqlmodel import Session

    from monitor.store import Store
    from monitor.store.tables import ReleaseRecord

log = logging.getLogger("monitor.service.releases.watch")

#: Prefix of the job that evaluates a release against the old base.
CHALLENGER_JOB_PREFIX = "challengers-"
_NOT_NAME = re.compile(r"[^A-Za-z0-9_.-]+")
_WEIGHTS = ("*.safetensors", "*.bin", "*.gguf", "*.pt")


@dataclass(frozen=True)
class Release:
    """A version of a base model, as a watcher found it."""

    family: str
    name: str
    #: ``directory``, ``openai``, ``hub`` or ``config``.
    source: str
    #: What loads it: a folder, a served model id, a hub repository, a configured base.
    location: str
    revision: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class ReleaseSource(Protocol):
    """Lists the releases visible now; the watcher keeps the new ones."""

    def scan(self) -> list[Release]:
        """Every release the source shows, in a stable order.

        Raises:
            WatchError: the source cannot be read (counted and retried at the next scan).
        """
        ...


def release_name(text: str) -> str:
    """A model name made from a folder name, a served model id or a repository and commit."""
    name = _NOT_NAME.sub("-", text).strip("-._")
    if not name:
        raise WatchError(f"cannot make a model name from {text!r}")
    return name[:200]


class DirectorySource:
    """Model folders in ``directory``: each sub-folder with ``config.json`` and weights is a release."""

    def __init__(
        self,
        family: str,
        directory: Path,
        *,
        pattern: str = "*",
        settle_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.family, self.directory, self.pattern = family, directory, pattern
        self.settle_s, self.clock = settle_s, clock

    def scan(self) -> list[Release]:
        try:
            children = sorted(self.directory.iterdir())
        except FileNotFoundError:
            raise WatchError(f"{self.directory}: the watched directory does not exist") from None
        except OSError as exc:
            raise WatchError(f"{self.directory}: cannot list the watched directory: {exc.strerror}") from None
        found = []
        now = self.clock()
        for child in children:
            if (
                not child.is_dir()
                or child.name.startswith(".")
                or not fnmatch.fnmatch(child.name, self.pattern)
            ):
                continue
            files = [p for p in child.rglob("*") if p.is_file()]
            names = {p.name for p in files}
            if "config.json" not in names or not any(fnmatch.filter(names, w) for w in _WEIGHTS):
                continue  # not a model folder, or one still being copied in
            try:
                stats = [p.stat() for p in files]
            except OSError:
                continue  # a file vanished mid-scan: the folder is still changing
            newest = max(s.st_mtime for s in stats)
            if now - newest < self.settle_s:
                log.info(
                    "release folder %s changed %.0f s ago; waiting for it to settle", child, now - newest
                )
                continue
            found.append(
                Release(
                    self.family,
                    release_name(child.name),
                    "directory",
                    str(child.resolve()),
                    details={"files": len(files), "bytes": sum(s.st_size for s in stats)},
                )
            )
        return found


class OpenAIModelsSource:
    """The model list of an OpenAI-compatible server (``GET {base_url}/models``).

    Entries with a ``parent`` (vLLM's LoRA adapters, served on top of a base) are not base releases
    and are left out.
    """

    def __init__(
        self,
        family: str,
        base_url: str,
        *,
        api_key: str | None = None,
        pattern: str = "*",
        timeout_s: float = 30.0,
        transport: Any = None,
    ) -> None:
        self.family, self.base_url, self.pattern = family, base_url.rstrip("/"), pattern
        self._api_key, self.timeout_s, self.transport = api_key, timeout_s, transport

    def scan(self) -> list[Release]:
        url = f"{self.base_url}/models"
        response = _get(url, self._api_key, self.timeout_s, self.transport)
        try:
            models = response.json()["data"]
            ids = [(str(m["id"]), m) for m in models]
        except (ValueError, KeyError, TypeError):
            raise WatchError(f"GET {url}: not an OpenAI model list (no data[].id)") from None
        return [
            Release(
                self.family,
                release_name(model_id),
                "openai",
                model_id,
                details={k: m[k] for k in ("owned_by", "root", "parent", "created") if m.get(k) is not None},
            )
            for model_id, m in ids
            # vLLM lists each LoRA adapter it serves with its base as ``parent``: an adapter is not a base release.
            if fnmatch.fnmatch(model_id, self.pattern) and not (isinstance(m, dict) and m.get("parent"))
        ]


class HubSource:
    """The head commit of a hub repository's branch: every new commit is a release.

    Uses the hub's HTTP API (``GET {endpoint}/api/models/{repo}/revision/{ref}``),
    the endpoint and token that ``huggingface_hub`` would use.  Offline (the
    ``HF_HUB_OFFLINE`` setting), a scan is an error that says so.
    """

    def __init__(
        self,
        family: str,
        repo: str,
        *,
        ref: str = "main",
        endpoint: str | None = None,
        token: str | None = None,
        timeout_s: float = 30.0,
        transport: Any = None,
    ) -> None:
        self.family, self.repo, self.ref = family, repo, ref
        self.endpoint, self._token = endpoint, token
        self.timeout_s, self.transport = timeout_s, transport

    def scan(self) -> list[Release]:
        endpoint = self.endpoint
        if endpoint is None:
            from huggingface_hub import constants

            if constants.HF_HUB_OFFLINE:
                raise WatchError(f"hub repository {self.repo}: the hub is offline (HF_HUB_OFFLINE is set)")
            endpoint = constants.ENDPOINT
        url = f"{endpoint.rstrip('/')}/api/models/{self.repo}/revision/{self.ref}"
        response = _get(url, self._token, self.timeout_s, self.transport)
        try:
            info = response.json()
            sha = str(info["sha"])
        except (ValueError, KeyError, TypeError):
            raise WatchError(f"GET {url}: no commit sha in the answer") from None
        short = self.repo.rsplit("/", 1)[-1]
        details = {
            "ref": self.ref,
            **({"last_modified": info["lastModified"]} if info.get("lastModified") else {}),
        }
        return [Release(self.family, release_name(f"{short}-{sha[:10]}"), "hub", self.repo, sha, details)]


def _get(url: str, token: str | None, timeout_s: float, transport: Any) -> Any:
    """``GET url`` with a bearer token; anything but a 200 is a :class:`WatchError` (never with the token)."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(timeout=timeout_s, transport=transport) as client:
            response = client.get(url, headers=headers)
    except httpx.HTTPError as exc:
        raise WatchError(f"GET {url}: {type(exc).__name__}: {exc}") from None
    if response.status_code != 200:
        raise WatchError(f"GET {url}: HTTP {response.status_code}")
    return response


def source_for(
    cfg: MonitorConfig, family: str, watch: WatchConfig, env: Mapping[str, str] | None = None
) -> ReleaseSource:
    """The source a family's ``watch:`` describes."""
    env = os.environ if env is None else env
    if watch.directory is not None:
        return DirectorySource(
            family,
            cfg.resolve(watch.directory),
            pattern=watch.pattern,
            settle_s=watch.settle.total_seconds(),
        )
    if watch.openai is not None:
        key_env = watch.openai.api_key_env
        return OpenAIModelsSource(
            family,
            watch.openai.base_url,
            api_key=env.get(key_env) if key_env else None,
            pattern=watch.pattern,
            timeout_s=watch.openai.timeout.total_seconds(),
        )
    assert watch.hub is not None
    return HubSource(family, watch.hub, ref=watch.hub_ref, token=env.get("HF_TOKEN"))


# --- releases as models ------------------------------------------------------------------------


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


@dataclass
class ScanState:
    """What the metrics say about one family's watcher."""

    scans: dict[str, int] = field(default_factory=lambda: {"ok": 0, "error": 0})
    last_scan: datetime | None = None
    last_success: datetime | None = None
    last_error: str | None = None
    next_due: float = 0.0


class ReleaseWatcher:
    """Scans the watched families when due and stores what is new; the caller queues the evaluations."""

    def __init__(
        self,
        store: Store,
        config: MonitorConfig,
        *,
        sources: Mapping[str, ReleaseSource] | None = None,
        notify: Notify | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store, self.config, self.notify, self.monotonic = store, config, notify, monotonic
        watched = {name: f.watch for name, f in config.families.items() if f.watch is not None}
        self.sources: dict[str, ReleaseSource] = (
            dict(sources)
            if sources is not None
            else {n: source_for(config, n, w) for n, w in watched.items()}
        )
        self.intervals = {n: w.every.total_seconds() for n, w in watched.items() if n in self.sources}
        self.state = {name: ScanState() for name in self.sources}

    def register_configured(self) -> list[ReleaseRecord]:
        """Store the configured versions newer than a fine-tune's base as releases (new ones only)."""
        return [r for r in (self._store_release(rel) for rel in registered_releases(self.config)) if r]

    def due(self) -> list[str]:
        now = self.monotonic()
        return [name for name, state in self.state.items() if state.next_due <= now]

    def scan(self, family: str, now: datetime) -> list[ReleaseRecord]:
        """Scan one family's source; store and return the releases not seen before."""
        state = self.state[family]
        state.last_scan = now
        state.next_due = self.monotonic() + self.intervals.get(family, 600.0)
        try:
            found = self.sources[family].scan()
        except WatchError as exc:
            state.scans["error"] += 1
            state.last_error = str(exc)
            log.warning("release watcher of %s: %s", family, exc)
            return []
        state.scans["ok"] += 1
        state.last_success, state.last_error = now, None
        return [r for r in (self._store_release(rel) for rel in found) if r is not None]

    def scan_due(self, now: datetime) -> list[ReleaseRecord]:
        new = []
        for family in self.due():
            new += self.scan(family, now)
        return new

    def _store_release(self, release: Release) -> ReleaseRecord | None:
        def event(session: Session, record: ReleaseRecord) -> None:
            if self.notify is not None:
                self.notify(
                    session,
                    events.release_discovered(
                        family=record.family,
                        release=record.name,
                        source=record.source,
                        location=record.location,
                        revision=record.revision,
                        finetunes=sorted(
                            n for n, ft in self.config.finetunes.items() if ft.family == record.family
                        ),
                    ),
                )

        # The old base itself (or a family without fine-tunes): stored, with nothing to evaluate.
        name = model_name(self.config, release)
        members = [ft for ft in self.config.finetunes.values() if ft.family == release.family]
        nothing_to_do = not members or any(name in (ft.base_model, ft.model) for ft in members)
        record = self.store.add_release(
            release, on_new=None if nothing_to_do else event, evaluated=nothing_to_do
        )
        if record is not None:
            log.info(
                "new release %s of %s (%s %s)", record.name, record.family, record.source, record.location
            )
        return record


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
