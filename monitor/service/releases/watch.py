"""The release watcher: scans the watched families when due, stores each new release once, and
raises ``release.discovered`` in the same transaction."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from monitor import events
from monitor.config import MonitorConfig
from monitor.errors import WatchError
from monitor.events import Notify
from monitor.service.releases.effective import model_name, registered_releases
from monitor.service.releases.sources import Release, ReleaseSource, source_for

if TYPE_CHECKING:
    from sqlmodel import Session

    from monitor.store import Store
    from monitor.store.tables import ReleaseRecord

log = logging.getLogger("monitor.service.releases")


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
