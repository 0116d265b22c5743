"""Shared fixtures: real tiny models built once per test session, real SQLite files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TICKET_TEXTS = [
    "Ticket: I was charged twice for my subscription\nCategory: billing",
    "Ticket: the app crashes when I open settings\nCategory: technical",
    "Ticket: how do I change the email on my account\nCategory: account",
    "Ticket: my parcel never arrived\nCategory: shipping",
    "Ticket: please refund the last invoice\nCategory: billing",
    "Ticket: password reset link does not work\nCategory: account",
] * 40


@dataclass(frozen=True)
class TinyModels:
    tokenizer: Path
    gpt2: Path
    gpt2_other: Path
    llama: Path
    lora: Path
    llama_lora: Path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """Seeded GPT-2- and Llama-shaped models with random weights, and LoRA adapters for them."""
    from monitor.demo.models import build_base_model, build_random_lora, build_tokenizer

    root = tmp_path_factory.mktemp("models")
    tok = build_tokenizer(TICKET_TEXTS, root / "tokenizer", vocab_size=320)
    gpt2 = build_base_model(root / "gpt2", tokenizer_dir=tok, seed=11)
    gpt2_other = build_base_model(root / "gpt2-other", tokenizer_dir=tok, seed=12, n_layer=3)
    llama = build_base_model(root / "llama", tokenizer_dir=tok, seed=13, arch="llama")
    lora = build_random_lora(gpt2, root / "gpt2-lora", seed=21)
    llama_lora = build_random_lora(llama, root / "llama-lora", seed=22)
    return TinyModels(tok, gpt2, gpt2_other, llama, lora, llama_lora)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo-cache")


@pytest.fixture(scope="session")
def tiny_demo(tiny_cache: Path) -> Any:
    """The demo's whole model pipeline at toy scale (TINY_RECIPE), built once for the session."""
    from monitor.demo.build import TINY_RECIPE, build_demo_models

    return build_demo_models(tiny_cache, recipe=TINY_RECIPE)


@pytest.fixture(scope="session")
def full_demo() -> Any:
    """The demo's real models (FULL_RECIPE, about two minutes to build), cached across sessions."""
    from monitor.demo.build import FULL_RECIPE, build_demo_models

    repo = Path(__file__).resolve().parents[1]
    cache = Path(os.environ.get("MONITOR_TEST_DEMO_CACHE", repo / ".cache" / "test-demo-models"))
    return build_demo_models(cache, recipe=FULL_RECIPE)


@dataclass(frozen=True)
class ChatModels:
    chatml: Path
    no_system: Path
    plain: Path


@pytest.fixture(scope="session")
def chat_models(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> ChatModels:
    """The tiny GPT-2 with a ChatML template (system role), with a Gemma-like one (none), and without."""
    from tests.helpers.chat import CHATML, NO_SYSTEM, with_chat_template

    root = tmp_path_factory.mktemp("chat-models")
    return ChatModels(
        with_chat_template(tiny_models.gpt2, root / "chatml", CHATML),
        with_chat_template(tiny_models.gpt2, root / "no-system", NO_SYSTEM),
        tiny_models.gpt2,
    )
