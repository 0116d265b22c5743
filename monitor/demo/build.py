"""Build the demo's models on this machine, reproducibly, and cache them.

The demo tells the story of a fine-tune that ages, so it needs four things that
behave like the real ones:

``tokenizer``
    byte-level BPE trained on generic and ticket text;
``base-v1``
    a small GPT-2 pretrained as a plain causal LM on generic text that includes
    unlabelled tickets, so it knows ticket language but cannot route zero-shot;
``lora-v1``
    a peft LoRA adapter on ``base-v1``, fine-tuned in the demo eval sets' exact
    prompt formats (routing and JSON triage): the production fine-tune;
``base-v2``
    the next base release: ``base-v1`` trained longer on a newer corpus that also
    holds some labelled tickets, mostly as pages of agent-routed examples, so it
    is mediocre zero-shot but close to the fine-tune with a few-shot prompt.

Everything is decided by a :class:`DemoRecipe`.  A build goes to
``<cache_dir>/demo-models-<digest>/`` where the digest covers the recipe, the
build code's format version and the libraries' major versions; an unchanged
recipe is loaded in no time, a changed one builds afresh.  A build is written to
a temporary directory and renamed into place when complete, so a killed build
never leaves a half-written cache (its temporary directory is ignored, and swept
away after a day).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

from monitor.demo import data
from monitor.demo.models import (
    TrainingReport,
    TrainingSpec,
    build_tokenizer,
    new_gpt2_model,
    pretrain_causal_lm,
    save_model,
    train_lora,
    weights_digest,
)
from monitor.errors import MonitorError

logger = logging.getLogger(__name__)

#: Bump when the build code changes what a given recipe produces.
BUILD_FORMAT = 1
MANIFEST_NAME = "manifest.json"
_PREFIX = "demo-models-"
_TMP_PREFIX = ".tmp-demo-models-"
_STALE_TMP_SECONDS = 24 * 3600


@dataclass(frozen=True)
class GPT2Shape:
    """The size of a demo base model."""

    n_layer: int
    n_embd: int
    n_head: int
    n_positions: int = 512


@dataclass(frozen=True)
class DemoRecipe:
    """Every choice that determines the demo models; all of it goes into the cache key."""

    name: str
    data_seed: int
    vocab_size: int
    tokenizer_docs: int
    v1_shape: GPT2Shape
    v1_generic_docs: int
    v1_training: TrainingSpec
    lora_tickets: int
    lora_r: int
    lora_alpha: int
    lora_training: TrainingSpec
    v2_generic_docs: int
    v2_self_filed_docs: int
    v2_routed_docs: int
    v2_training: TrainingSpec
    lora_targets: tuple[str, ...] = field(default=("c_attn", "c_proj", "c_fc"))
    #: Every ticket trains the JSON triage answer, every n-th also the routing answer.
    lora_routing_every: int = 4
    #: How often customers mis-file on help-desk pages (what v2 learns zero-shot).
    v2_self_filed_confusion: float = 0.95
    #: Torch CPU threads; 0 means one per core, at most four (these models gain nothing
    #: from more).  Toy recipes use one: their matrices are too small to split.
    torch_threads: int = 0


#: The recipe the demo uses: about two minutes on two CPU cores.
FULL_RECIPE = DemoRecipe(
    name="full",
    data_seed=7,
    vocab_size=2048,
    tokenizer_docs=4000,
    v1_shape=GPT2Shape(n_layer=4, n_embd=128, n_head=4),
    v1_generic_docs=16000,
    v1_training=TrainingSpec(steps=200, batch_size=16, seq_len=128, lr=3e-3, warmup_steps=15, seed=11),
    lora_tickets=2400,
    lora_r=8,
    lora_alpha=16,
    lora_training=TrainingSpec(steps=450, batch_size=16, seq_len=96, lr=4e-3, warmup_steps=30, seed=12),
    v2_generic_docs=1500,
    v2_self_filed_docs=1500,
    v2_routed_docs=1500,
    v2_training=TrainingSpec(steps=175, batch_size=8, seq_len=256, lr=3e-3, warmup_steps=10, seed=13),
)

#: A much smaller recipe through the same pipeline, for tests (seconds, not minutes).
TINY_RECIPE = replace(
    FULL_RECIPE,
    name="tiny",
    vocab_size=512,
    tokenizer_docs=600,
    v1_shape=GPT2Shape(n_layer=2, n_embd=64, n_head=4, n_positions=256),
    v1_generic_docs=800,
    v1_training=replace(FULL_RECIPE.v1_training, steps=8, batch_size=8),
    lora_tickets=100,
    lora_training=replace(FULL_RECIPE.lora_training, steps=6, batch_size=8),
    v2_generic_docs=200,
    v2_self_filed_docs=100,
    v2_routed_docs=30,
    v2_training=replace(FULL_RECIPE.v2_training, steps=6, batch_size=4),
    torch_threads=1,
)


@dataclass(frozen=True)
class DemoModels:
    """Where a complete build of the demo models lives; every path is an HF-loadable folder."""

    root: Path
    tokenizer: Path
    base_v1: Path
    lora_v1: Path
    base_v2: Path
    manifest: Path
    recipe_digest: str
    #: False when this call built the models, True when it found them cached.
    from_cache: bool

    @classmethod
    def at(cls, root: Path, digest: str, *, from_cache: bool) -> DemoModels:
        """The paths of a build rooted at ``root``."""
        return cls(
            root=root,
            tokenizer=root / "tokenizer",
            base_v1=root / "base-v1",
            lora_v1=root / "lora-v1",
            base_v2=root / "base-v2",
            manifest=root / MANIFEST_NAME,
            recipe_digest=digest,
            from_cache=from_cache,
        )


def library_versions() -> dict[str, str]:
    """The library versions a build depends on, cut to what may change results.

    ``torch`` and ``transformers`` keep formats within a major version; for the
    0.x libraries (peft, tokenizers) a minor release may change them.
    """
    versions = {}
    for name in ("torch", "transformers", "peft", "tokenizers"):
        parts = version(name).split(".")
        versions[name] = parts[0] if parts[0] != "0" else ".".join(parts[:2])
    return versions


def recipe_digest(recipe: DemoRecipe) -> str:
    """A short hash of the recipe, the build format and the library versions: the cache key."""
    key = {
        "recipe": asdict(recipe),
        "build_format": BUILD_FORMAT,
        "data_format": data.GENERATOR_VERSION,
        "libraries": library_versions(),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def build_demo_models(
    cache_dir: Path,
    *,
    force: bool = False,
    recipe: DemoRecipe = FULL_RECIPE,
    progress: Callable[[str], None] | None = None,
) -> DemoModels:
    """Return the demo models for ``recipe``, building them into ``cache_dir`` unless cached.

    With ``force`` the models are rebuilt even when a complete cached build
    exists; the old build is replaced only once the new one is complete.
    Progress lines (``building base v1 ... 23 s``) go to this module's logger
    and, when given, to ``progress``.  A cache directory that cannot be written
    raises :class:`~monitor.errors.MonitorError`.
    """
    say = _Say(progress)
    digest = recipe_digest(recipe)
    final = cache_dir / f"{_PREFIX}{digest}"
    if not force and _is_complete(final, digest):
        say(f"demo models (recipe {recipe.name}, {digest}) loaded from cache {final}")
        return DemoModels.at(final, digest, from_cache=True)

    tmp = cache_dir / f"{_TMP_PREFIX}{digest}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _sweep_stale_tmp(cache_dir)
        _build_into(tmp, recipe, digest, say)
        _publish(tmp, final, digest, replace_existing=force)
    except OSError as exc:
        raise MonitorError(f"cannot build the demo models in {cache_dir}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return DemoModels.at(final, digest, from_cache=False)


def link_stable_paths(models: DemoModels, folder: Path) -> DemoModels:
    """Point ``folder/base-v1``, ``lora-v1``, ``base-v2`` and ``tokenizer`` at ``models`` (symbolic links),
    so that the configuration and the README name paths that do not change with the recipe's digest.

    A link is replaced; anything else already at one of those names is left alone and its cached path kept.
    """
    stable = {}
    for name, target in (
        ("tokenizer", models.tokenizer),
        ("base-v1", models.base_v1),
        ("lora-v1", models.lora_v1),
        ("base-v2", models.base_v2),
    ):
        link = folder / name
        if link.is_symlink():
            link.unlink()
        if not link.exists():
            link.symlink_to(os.path.relpath(target, folder), target_is_directory=True)
        stable[name] = link if link.is_symlink() else target
    return replace(
        models,
        tokenizer=stable["tokenizer"],
        base_v1=stable["base-v1"],
        lora_v1=stable["lora-v1"],
        base_v2=stable["base-v2"],
    )


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest of a build: recipe, versions, timings, training losses and weight digests."""
    result: dict[str, Any] = json.loads((root / MANIFEST_NAME).read_text())
    return result


class _Say:
    """Progress lines to the logger and, optionally, to a caller's callback."""

    def __init__(self, callback: Callable[[str], None] | None) -> None:
        self._callback = callback

    def __call__(self, message: str) -> None:
        logger.info("%s", message)
        if self._callback is not None:
            self._callback(message)


def _is_complete(root: Path, digest: str) -> bool:
    # The manifest is written last and the directory is renamed into place only
    # afterwards, so a readable manifest with our digest means a whole build
    # (unless someone deleted parts of it by hand, hence the folder check).
    paths = DemoModels.at(root, digest, from_cache=True)
    try:
        matches = read_manifest(root).get("recipe_digest") == digest
    except (OSError, ValueError):
        return False
    return matches and all(p.is_dir() for p in (paths.tokenizer, paths.base_v1, paths.lora_v1, paths.base_v2))


def _sweep_stale_tmp(cache_dir: Path) -> None:
    """Remove temporary build directories a killed build left behind more than a day ago.

    Younger ones may belong to a build still running in another process.
    """
    now = time.time()
    for path in cache_dir.glob(f"{_TMP_PREFIX}*"):
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(path, ignore_errors=True)


def _publish(tmp: Path, final: Path, digest: str, *, replace_existing: bool) -> None:
    """Rename the finished build into place; a concurrent complete build wins unless forced."""
    if final.exists():
        if _is_complete(final, digest) and not replace_existing:
            return
        trash = final.with_name(f"{_TMP_PREFIX}old-{uuid.uuid4().hex[:8]}")
        final.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
    tmp.rename(final)


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """Train with ``threads`` CPU threads (0: one per core, at most four), then restore the setting."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads or max(1, min(4, os.cpu_count() or 1)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def stage_work(recipe: DemoRecipe) -> dict[str, float]:
    """Each stage's share of the build, in tokens trained (what the time left is estimated from)."""
    work = {
        "base v1": recipe.v1_training.steps * recipe.v1_training.batch_size * recipe.v1_training.seq_len,
        "lora v1": recipe.lora_training.steps
        * recipe.lora_training.batch_size
        * recipe.lora_training.seq_len,
        "base v2": recipe.v2_training.steps * recipe.v2_training.batch_size * recipe.v2_training.seq_len,
    }
    total = sum(work.values())
    return {"tokenizer": 0.02 * total, **work}


class _Progress:
    """The build's progress lines: one as each stage starts and ends, and inside a training stage one
    every ``every`` seconds, each with the time left for the whole build (estimated from the training
    done so far: the tokenizer's speed says nothing about training's)."""

    def __init__(self, say: _Say, work: dict[str, float], *, every: float = 30.0) -> None:
        self.say = say
        self.work = work
        self.every = every
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[Callable[[int, int], None]]:
        """Time one stage; yields ``tick(steps done, steps)`` for its training loop."""
        head = f"[{list(self.work).index(name) + 1}/{len(self.work)}]"
        self.say(f"{head} building {name} ...")
        started = last = time.perf_counter()

        def tick(done: int, steps: int) -> None:
            nonlocal last
            now = time.perf_counter()
            if now - last < self.every or done >= steps:
                return
            last = now
            left = self._left(name, done / steps, now - started)
            self.say(f"{head} {name}: step {done} of {steps} ({done / steps:.0%}){left}")

        yield tick
        self.timings[name] = round(time.perf_counter() - started, 2)
        self.say(f"{head} built {name} in {self.timings[name]:.0f} s{self._left(name, 1.0, 0.0)}")

    def _left(self, name: str, fraction: float, elapsed: float) -> str:
        trained = {n: t for n, t in self.timings.items() if n != "tokenizer"}
        current = name not in self.timings and name != "tokenizer"
        work_done = sum(self.work[n] for n in trained) + (fraction * self.work[name] if current else 0.0)
        seconds = sum(trained.values()) + (elapsed if current else 0.0)
        todo = sum(w for n, w in self.work.items() if n not in self.timings and n not in (name, "tokenizer"))
        todo += (1.0 - fraction) * self.work[name] if current else 0.0
        if work_done <= 0 or todo <= 0:
            return ""
        left = seconds / work_done * todo
        return f"; about {_duration(left)} left" if left >= 1 else ""


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Keep transformers' advice (attention masks, loss types) and its bars off the demo's screen:
    the build pads on the right under causal attention and uses the default loss on purpose."""
    from transformers.utils import logging as hf_logging

    previous, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Writing model shards", "Loading weights": a bar per model saved
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()


def _build_into(root: Path, recipe: DemoRecipe, digest: str, say: _Say) -> None:
    """Run the whole recipe into ``root`` and write the manifest last."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    paths = DemoModels.at(root, digest, from_cache=False)
    seed = recipe.data_seed
    reports: dict[str, TrainingReport] = {}
    started = time.perf_counter()
    work = stage_work(recipe)
    progress = _Progress(say, work)
    timings = progress.timings
    say(f"building demo models (recipe {recipe.name}, {digest}): {len(work)} stages ...")
    with _torch_threads(recipe.torch_threads), _quiet_transformers():
        with progress.stage("tokenizer"):
            build_tokenizer(_tokenizer_texts(recipe), paths.tokenizer, vocab_size=recipe.vocab_size)
        tokenizer = AutoTokenizer.from_pretrained(paths.tokenizer)

        with progress.stage("base v1") as tick:
            shape = recipe.v1_shape
            model = new_gpt2_model(
                paths.tokenizer,
                seed=recipe.v1_training.seed,
                n_layer=shape.n_layer,
                n_embd=shape.n_embd,
                n_head=shape.n_head,
                n_positions=shape.n_positions,
            )
            corpus = data.generic_corpus(recipe.v1_generic_docs, seed=seed)
            reports["base_v1"] = pretrain_causal_lm(
                model, tokenizer, [corpus], recipe.v1_training, on_step=tick
            )
            save_model(model, paths.tokenizer, paths.base_v1)

        with progress.stage("lora v1") as tick:
            reports["lora_v1"] = train_lora(
                paths.base_v1,
                paths.lora_v1,
                fine_tune_pairs(
                    data.generate_tickets(recipe.lora_tickets, seed=seed + 1, id_prefix="ft"),
                    routing_every=recipe.lora_routing_every,
                ),
                recipe.lora_training,
                r=recipe.lora_r,
                alpha=recipe.lora_alpha,
                target_modules=recipe.lora_targets,
                on_step=tick,
            )

        with progress.stage("base v2") as tick:
            # The next release continues from v1's weights ("trained longer") on a
            # newer crawl: fresh generic text, self-filed tickets from help-desk
            # pages, and pages of agent-routed tickets (packed on their own).
            model = AutoModelForCausalLM.from_pretrained(paths.base_v1)
            generic = data.generic_corpus(recipe.v2_generic_docs, seed=seed + 2)
            self_filed = data.self_filed_ticket_corpus(
                recipe.v2_self_filed_docs, seed=seed + 2, confusion_rate=recipe.v2_self_filed_confusion
            )
            routed = data.routed_ticket_corpus(recipe.v2_routed_docs, seed=seed + 2)
            reports["base_v2"] = pretrain_causal_lm(
                model, tokenizer, [generic + self_filed, routed], recipe.v2_training, on_step=tick
            )
            save_model(model, paths.tokenizer, paths.base_v2)

    total = round(time.perf_counter() - started, 2)
    manifest = {
        "manifest_version": 1,
        "recipe_digest": digest,
        "recipe": asdict(recipe),
        "build_format": BUILD_FORMAT,
        "data_format": data.GENERATOR_VERSION,
        "libraries": library_versions(),
        "built_at": datetime.now(timezone.utc).isoformat(),
        "build_seconds": {**timings, "total": total},
        "training": {name: asdict(report) for name, report in reports.items()},
        "weights": {
            "base_v1": weights_digest(paths.base_v1),
            "lora_v1": weights_digest(paths.lora_v1),
            "base_v2": weights_digest(paths.base_v2),
        },
    }
    paths.manifest.write_text(json.dumps(manifest, indent=2) + "\n")


def _tokenizer_texts(recipe: DemoRecipe) -> list[str]:
    """Generic text, tickets (some from later production), routed pages and triage JSON."""
    seed = recipe.data_seed + 3
    tickets = data.generate_tickets(recipe.tokenizer_docs // 4, seed=seed)
    drifted = data.generate_tickets(recipe.tokenizer_docs // 8, seed=seed, drift=1.0)
    return [
        *data.generic_corpus(recipe.tokenizer_docs, seed=seed),
        *data.routed_ticket_corpus(recipe.tokenizer_docs // 20, seed=seed),
        *(t.text for t in drifted),
        *(data.compact_json(data.triage_target(t)) for t in tickets),
    ]


def fine_tune_pairs(tickets: list[data.Ticket], *, routing_every: int = 1) -> list[tuple[str, str]]:
    """``(prompt, completion)`` pairs in both demo eval formats: JSON triage and routing.

    Every ticket gives a triage pair, every ``routing_every``-th also a routing
    pair: the one-token routing answer is learned from far fewer examples than
    the priority inside the JSON answer.  Completions start with the eval sets'
    target delimiter (a space); the triage completion ends with the newline its
    eval set stops at.
    """
    pairs = []
    for i, ticket in enumerate(tickets):
        target = data.compact_json(data.triage_target(ticket))
        pairs.append((data.TRIAGE_PROMPT.format(input=ticket.text), f" {target}\n"))
        if i % routing_every == 0:
            pairs.append((data.ROUTING_PROMPT.format(input=ticket.text), f" {ticket.category}"))
    return pairs
