"""Content fingerprints of model folders: what is hashed, caching, invalidation, hub snapshots."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from monitor.backends.fingerprint import (
    CACHE_FILE_NAME,
    HashCache,
    default_cache_dir,
    fingerprint_model,
    resolve_model_dir,
    sha256_file,
)
from monitor.errors import ModelLoadError
from tests.conftest import ChatModels


class CountingHasher:
    """The real hasher, counting which files it reads."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, path: Path) -> str:
        self.calls.append(path.name)
        return sha256_file(path)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def base(tmp_path: Path) -> Path:
    folder = tmp_path / "base"
    _write(folder / "config.json", b'{"model_type": "gpt2"}')
    _write(folder / "model-00001-of-00002.safetensors", os.urandom(3000))
    _write(folder / "model-00002-of-00002.safetensors", os.urandom(3000))
    _write(folder / "model.safetensors.index.json", b'{"weight_map": {}}')
    _write(folder / "tokenizer.json", b"{}")  # not part of the fingerprint
    _write(folder / "checkpoint-5" / "model.safetensors", b"old")  # sub-folders are not either
    return folder


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    folder = tmp_path / "adapter"
    _write(folder / "adapter_config.json", b'{"peft_type": "LORA"}')
    _write(folder / "adapter_model.safetensors", os.urandom(500))
    _write(folder / "README.md", b"notes")
    return folder


@pytest.fixture
def cache_file(tmp_path: Path) -> Path:
    return tmp_path / "cache" / CACHE_FILE_NAME


def test_hashes_config_and_weights_only(base: Path, adapter: Path, cache_file: Path) -> None:
    fp = fingerprint_model(base, adapter, cache=HashCache(cache_file))
    assert sorted(fp.files) == [
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "base/config.json",
        "base/model-00001-of-00002.safetensors",
        "base/model-00002-of-00002.safetensors",
        "base/model.safetensors.index.json",
    ]
    assert fp.files["base/config.json"] == sha256_file(base / "config.json")
    assert all(d.startswith("sha256:") and len(d) == 71 for d in [fp.digest, fp.base, *fp.files.values()])
    assert fp.adapter is not None and fp.adapter != fp.base != fp.digest


def test_adapter_changes_the_combined_digest_not_the_base_one(
    base: Path, adapter: Path, cache_file: Path
) -> None:
    plain = fingerprint_model(base, cache=HashCache(cache_file))
    adapted = fingerprint_model(base, adapter, cache=HashCache(cache_file))
    assert plain.adapter is None
    assert plain.base == adapted.base
    assert plain.digest != adapted.digest


def test_second_fingerprint_reads_no_file(base: Path, adapter: Path, cache_file: Path) -> None:
    hasher = CountingHasher()
    first = fingerprint_model(base, adapter, cache=HashCache(cache_file, hasher=hasher))
    assert len(hasher.calls) == 6
    again = fingerprint_model(base, adapter, cache=HashCache(cache_file, hasher=hasher))  # from the file
    assert len(hasher.calls) == 6
    assert again == first
    stored = json.loads(cache_file.read_text())
    assert stored["version"] == 1 and str((base / "config.json").resolve()) in stored["files"]


def test_touching_a_file_rehashes_it_and_modifying_it_changes_the_digest(
    base: Path, adapter: Path, cache_file: Path
) -> None:
    hasher = CountingHasher()
    first = fingerprint_model(base, adapter, cache=HashCache(cache_file, hasher=hasher))
    weights = adapter / "adapter_model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    hasher.calls.clear()
    touched = fingerprint_model(base, adapter, cache=HashCache(cache_file, hasher=hasher))
    assert hasher.calls == ["adapter_model.safetensors"]
    assert touched.digest == first.digest  # same bytes, same fingerprint

    # Same size and mtime as before: only the content differs.
    weights.write_bytes(os.urandom(stat.st_size))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000))
    changed = fingerprint_model(base, adapter, cache=HashCache(cache_file, hasher=hasher))
    assert (
        changed.files["adapter/adapter_model.safetensors"] != first.files["adapter/adapter_model.safetensors"]
    )
    assert changed.digest != first.digest and changed.base == first.base


def test_new_weight_file_changes_the_fingerprint(base: Path, cache_file: Path) -> None:
    first = fingerprint_model(base, cache=HashCache(cache_file))
    _write(base / "extra.bin", b"more weights")
    second = fingerprint_model(base, cache=HashCache(cache_file))
    assert "base/extra.bin" in second.files and second.digest != first.digest


@pytest.mark.parametrize("garbage", [b"{not json", b"[1, 2]", b'{"version": 99, "files": {}}', b"\xff\xfe"])
def test_corrupt_cache_is_ignored_and_rebuilt(base: Path, cache_file: Path, garbage: bytes) -> None:
    reference = fingerprint_model(base, cache=HashCache(cache_file))
    cache_file.write_bytes(garbage)
    hasher = CountingHasher()
    again = fingerprint_model(base, cache=HashCache(cache_file, hasher=hasher))
    assert again == reference and len(hasher.calls) == 4
    assert json.loads(cache_file.read_text())["version"] == 1
    assert not [p for p in cache_file.parent.iterdir() if p.name != CACHE_FILE_NAME]  # no temp files left


def test_cache_dir_comes_from_the_environment(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MONITOR_CACHE_DIR", str(tmp_path / "from-env"))
    assert default_cache_dir() == tmp_path / "from-env"
    fingerprint_model(base)
    assert (tmp_path / "from-env" / CACHE_FILE_NAME).is_file()
    monkeypatch.delenv("MONITOR_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "model-aging-monitor"


def test_unwritable_cache_still_fingerprints(base: Path, tmp_path: Path) -> None:
    blocker = _write(tmp_path / "file-not-dir", b"")
    fp = fingerprint_model(base, cache=HashCache(blocker / CACHE_FILE_NAME))
    assert fp.digest.startswith("sha256:")


def test_missing_or_non_model_folders_are_load_errors(tmp_path: Path, base: Path, cache_file: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        fingerprint_model(tmp_path / "nowhere", cache=HashCache(cache_file))
    with pytest.raises(ModelLoadError, match=r"has no adapter_config\.json"):
        fingerprint_model(base, base, cache=HashCache(cache_file))
    with pytest.raises(ModelLoadError, match="local Hugging Face cache"):
        fingerprint_model(
            "no-such-org/no-such-model", hub_cache=tmp_path / "hub", cache=HashCache(cache_file)
        )


def test_hub_id_resolves_to_its_local_snapshot(tmp_path: Path, base: Path, cache_file: Path) -> None:
    # The layout huggingface_hub writes: refs/<revision> names a folder in snapshots/.
    repo = tmp_path / "hub" / "models--acme--tiny"
    snapshot = repo / "snapshots" / ("a" * 40)
    for f in base.iterdir():
        if f.is_file():
            _write(snapshot / f.name, f.read_bytes())
    _write(repo / "refs" / "main", b"a" * 40)
    assert resolve_model_dir("acme/tiny", hub_cache=tmp_path / "hub") == snapshot
    from_hub = fingerprint_model("acme/tiny", hub_cache=tmp_path / "hub", cache=HashCache(cache_file))
    assert from_hub.digest == fingerprint_model(base, cache=HashCache(cache_file)).digest


def test_the_stack_is_hashed_apart_from_the_weights(chat_models: ChatModels, tmp_path: Path) -> None:
    from monitor.backends.base import ModelFingerprint
    from monitor.backends.fingerprint import stack_files

    cache = HashCache(tmp_path / "cache.json")
    chatml, no_system = (
        fingerprint_model(m, cache=cache) for m in (chat_models.chatml, chat_models.no_system)
    )
    # Same weights (the templates were added to copies of one model): the weights' digest agrees.
    assert chatml.digest == no_system.digest
    one, other = (stack_files(m, cache=cache) for m in (chat_models.chatml, chat_models.no_system))
    assert {"stack/tokenizer.json", "stack/tokenizer_config.json", "stack/chat_template.jinja"} <= set(one)
    assert one["stack/tokenizer.json"] == other["stack/tokenizer.json"]
    assert one["stack/chat_template.jinja"] != other["stack/chat_template.jinja"]
    assert "stack/chat_template.jinja" not in stack_files(chat_models.plain, cache=cache)
    with_stack = [ModelFingerprint(chatml.digest, chatml.base, stack=s) for s in (one, other)]
    assert with_stack[0].stack_digest != with_stack[1].stack_digest
    assert ModelFingerprint("d", "b").stack_digest is None
