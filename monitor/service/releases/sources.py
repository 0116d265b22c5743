"""Where new base-model releases appear: a watched folder, an OpenAI-compatible server's model list,
a hub repository's branch.  Each source is a one-method protocol (``scan()``) returning releases."""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from monitor.config import MonitorConfig, WatchConfig
from monitor.errors import WatchError

if TYPE_CHECKING:
    pass

log = logging.getLogger("monitor.service.releases")


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
