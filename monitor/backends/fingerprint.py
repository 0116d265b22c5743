"""Content hashes that say exactly which weights produced a run.

A base model is identified by its ``config.json`` and weight files
(``*.safetensors``, ``*.bin``, ``*.pt`` and their ``*.index.json``); an adapter
by its ``adapter_config.json`` and adapter weights.  Each file is hashed with
SHA-256 in streaming chunks.  Hashing a multi-gigabyte model takes a while, so
digests are cached in a JSON file keyed by (absolute path, size, mtime_ns): a
file that is touched or rewritten is hashed again, an unchanged one never is.

The cache lives in ``$MONITOR_CACHE_DIR`` (default ``~/.cache/model-aging-monitor``),
is written atomically, and is ignored and rebuilt if it is unreadable.

This module reads files only: it never imports transformers or peft.  A hub
id is resolved to its snapshot in the local Hugging Face cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from monitor.backends.base import ModelFingerprint
from monitor.errors import ModelLoadError

#: Bumped when the cache file's layout changes; other versions are ignored.
CACHE_FORMAT_VERSION = 1
CACHE_FILE_NAME = "file-hashes.json"
_CHUNK_BYTES = 4 * 1024 * 1024

#: Computes ``sha256:<hex>`` of one file (injectable so tests can count calls).
Hasher = Callable[[Path], str]

_BASE_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.index.json")
#: Files around the weights that decide what the model sees and how it decodes (the serving stack).
STACK_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
_ADAPTER_PATTERNS = ("*.safetensors", "*.bin", "*.pt")


def sha256_file(path: Path) -> str:
    """``sha256:<hex>`` of a file, read in chunks so that memory stays flat."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def default_cache_dir() -> Path:
    """``$MONITOR_CACHE_DIR``, else ``~/.cache/model-aging-monitor``."""
    configured = os.environ.get("MONITOR_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "model-aging-monitor"


class HashCache:
    """File digests remembered by (absolute path, size, mtime_ns) in a JSON file."""

    def __init__(self, path: Path | None = None, *, hasher: Hasher = sha256_file) -> None:
        """Use the cache file at ``path`` (default: in :func:`default_cache_dir`)."""
        self.path = path if path is not None else default_cache_dir() / CACHE_FILE_NAME
        self._hasher = hasher
        self._entries = self._read()
        self._dirty = False

    def digest(self, file: Path) -> str:
        """The SHA-256 of ``file``, hashed only if its size or mtime changed since last time."""
        absolute = file.resolve()
        stat = absolute.stat()
        key = str(absolute)
        entry = self._entries.get(key)
        if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
            return str(entry["sha256"])
        value = self._hasher(absolute)
        self._entries[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": value}
        self._dirty = True
        return value

    def save(self) -> None:
        """Write the cache atomically (a temporary file renamed over the old one), if it changed.

        A cache that cannot be written costs only re-hashing next time, so
        write errors are swallowed.
        """
        if not self._dirty:
            return
        payload = {"version": CACHE_FORMAT_VERSION, "files": self._entries}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".file-hashes.", suffix=".tmp", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w") as handle:
                    json.dump(payload, handle, sort_keys=True)
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError:
            return
        self._dirty = False

    def _read(self) -> dict[str, dict[str, object]]:
        # A corrupt, foreign or old-format cache is ignored and rebuilt.
        try:
            payload = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(payload, dict) or payload.get("version") != CACHE_FORMAT_VERSION:
            return {}
        files = payload.get("files")
        if not isinstance(files, dict):
            return {}
        return {k: v for k, v in files.items() if isinstance(v, dict) and isinstance(v.get("sha256"), str)}


def fingerprint_model(
    base: str | Path,
    adapter: str | Path | None = None,
    *,
    revision: str | None = None,
    cache: HashCache | None = None,
    hub_cache: Path | None = None,
) -> ModelFingerprint:
    """Hash a base model (local folder or cached hub id) and an optional adapter.

    ``files`` maps ``base/<name>`` and ``adapter/<name>`` to file digests;
    ``base`` and ``adapter`` digest their own file lists, and ``digest`` covers
    both, so that the same base with another adapter is another model.  All
    digests read ``sha256:<hex>``.  ``hub_cache`` overrides the Hugging Face
    cache folder where hub ids are looked up.
    """
    cache = cache if cache is not None else HashCache()
    base_dir = resolve_model_dir(base, revision, hub_cache=hub_cache)
    base_files = _model_files(base_dir, "config.json", _BASE_PATTERNS, "base model")
    files = {f"base/{f.name}": cache.digest(f) for f in base_files}
    adapter_digest: str | None = None
    if adapter is not None:
        adapter_dir = resolve_model_dir(adapter, revision, hub_cache=hub_cache)
        adapter_files = _model_files(adapter_dir, "adapter_config.json", _ADAPTER_PATTERNS, "adapter")
        files.update({f"adapter/{f.name}": cache.digest(f) for f in adapter_files})
        adapter_digest = _combine((k, v) for k, v in files.items() if k.startswith("adapter/"))
    cache.save()
    base_digest = _combine((k, v) for k, v in files.items() if k.startswith("base/"))
    return ModelFingerprint(
        digest=_combine(sorted(files.items())),
        base=base_digest,
        adapter=adapter_digest,
        files=dict(sorted(files.items())),
    )


def stack_files(
    base: str | Path,
    *,
    revision: str | None = None,
    cache: HashCache | None = None,
    hub_cache: Path | None = None,
) -> dict[str, str]:
    """Digests of the base's tokenizer, chat template and generation config files (:data:`STACK_FILES`).

    Keys read ``stack/<name>``; a file the model does not have is left out.  Kept
    apart from the weights' digest, so that a changed template or tokenizer is
    told apart from changed weights.
    """
    cache = cache if cache is not None else HashCache()
    folder = resolve_model_dir(base, revision, hub_cache=hub_cache)
    found = {
        f"stack/{name}": cache.digest(folder / name) for name in STACK_FILES if (folder / name).is_file()
    }
    cache.save()
    return found


def resolve_model_dir(
    spec: str | Path, revision: str | None = None, *, hub_cache: Path | None = None
) -> Path:
    """The local folder of a model: ``spec`` itself, or its snapshot in the Hugging Face cache."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path.resolve()
    if isinstance(spec, Path) or path.is_absolute() or str(spec).startswith((".", "~")):
        raise ModelLoadError(f"model folder {spec} does not exist")
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(str(spec), revision=revision, cache_dir=hub_cache, local_files_only=True)
        return Path(folder)
    except Exception as exc:  # huggingface_hub raises several unrelated types here
        raise ModelLoadError(f"model {spec} is neither a folder nor in the local Hugging Face cache") from exc


def _model_files(folder: Path, config_name: str, patterns: Iterable[str], what: str) -> list[Path]:
    config = folder / config_name
    if not config.is_file():
        raise ModelLoadError(f"{what} {folder} has no {config_name}")
    weights = {f for pattern in patterns for f in folder.glob(pattern) if f.is_file()}
    return [config, *sorted(weights)]


def _combine(items: Iterable[tuple[str, str]]) -> str:
    """One SHA-256 over ``name digest`` lines, in the order given."""
    digest = hashlib.sha256()
    for name, value in items:
        digest.update(f"{name} {value}\n".encode())
    return "sha256:" + digest.hexdigest()
