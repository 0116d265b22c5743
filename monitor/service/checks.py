"""What a valid schema can still hide: the cross-checks of a loaded configuration (``monitor check-config``).

Here in the service layer, not in :mod:`monitor.config`, because the checks
load the eval sets (evals) and resolve the webhook secrets (exporters); the
configuration package stays at the bottom and imports nothing above it.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from monitor._yaml import load_yaml, read_text
from monitor.config import MonitorConfig
from monitor.errors import ConfigError, EvalSetError, Problem
from monitor.evals.evalset import EvalSet, load_evalset, parse_strategy
from monitor.exporters.webhooks import resolve_secrets
from monitor.service.plan import chat_template_text, endpoint_tokenizer, for_model


def config_problems(cfg: MonitorConfig, config_path: Path) -> list[Problem]:
    """Problems a valid schema can still hide: missing eval sets, missing model folders, bad strategies."""
    problems: list[Problem] = []
    try:
        resolve_secrets(cfg.webhooks)
    except ConfigError as exc:
        problems.extend(exc.problems)
    loaded: dict[str, EvalSet] = {}
    for name, path in cfg.evalsets.items():
        try:
            es = load_evalset(cfg.resolve(path))
        except EvalSetError as exc:
            problems.extend(exc.problems)
            continue
        loaded[name] = es
        for index, metric in enumerate(es.metric_specs):
            judge = metric.options.get("model") if metric.name == "judge" else None
            if isinstance(judge, str) and judge not in cfg.models:
                problems.append(
                    Problem(
                        str(es.path / "evalset.yaml") if es.path.is_dir() else str(es.path),
                        f"metrics.{index}.model: judge model {judge!r} is not configured; configured models: "
                        f"{', '.join(cfg.models) or 'none'}",
                    )
                )
    for name, model in cfg.models.items():
        key_env = model.endpoint.api_key_env if model.endpoint else None
        if key_env and not os.environ.get(key_env):
            problems.append(
                Problem(
                    str(config_path),
                    f"models.{name}.endpoint.api_key_env: environment variable {key_env} is not set",
                )
            )
    where_is = _locator(config_path)
    for name in cfg.models:
        base, adapter = cfg.model_source(name)
        if base.startswith(("/", ".")) and not Path(base).exists():
            problems.append(
                Problem(where_is("models", name, "base"), f"models.{name}.base: {base} does not exist")
            )
        if adapter is not None and not Path(adapter).exists():
            problems.append(
                Problem(
                    where_is("models", name, "adapter"), f"models.{name}.adapter: {adapter} does not exist"
                )
            )
        elif adapter is not None:
            base_dir = Path(base) if Path(base).is_dir() else None
            problems.extend(
                Problem(where_is("models", name, "adapter"), f"models.{name}.adapter: {message}")
                for message in adapter_problems(Path(adapter), base_dir)
            )
        tokenizer = endpoint_tokenizer(cfg, name)
        if tokenizer is not None and tokenizer.startswith("/") and not Path(tokenizer).is_dir():
            problems.append(
                Problem(
                    where_is("models", name, "endpoint", "tokenizer"),
                    f"models.{name}.endpoint.tokenizer: {tokenizer} is not a tokenizer folder",
                )
            )
        try:
            chat_template_text(cfg, name)
        except ConfigError as exc:
            problems.append(Problem(where_is("models", name, "chat_template"), exc.problems[0].message))
    pairs = {(m, e) for job in cfg.jobs.values() for m in job.models for e in job.evalsets}
    for model_name, es_name in sorted(pairs):
        found = loaded.get(es_name)
        if found is not None and cfg.models[model_name].generation:
            try:
                for_model(cfg, model_name, found)
            except ConfigError as exc:
                problems.append(
                    Problem(where_is("models", model_name, "generation"), exc.problems[0].message)
                )
    for family_name, family in cfg.families.items():
        watch = family.watch
        where = f"families.{family_name}.watch"
        if watch is not None and watch.directory is not None and not cfg.resolve(watch.directory).is_dir():
            problems.append(
                Problem(
                    where_is("families", family_name, "watch", "directory"),
                    f"{where}.directory: {cfg.resolve(watch.directory)} is not a directory",
                )
            )
        key_env = watch.openai.api_key_env if watch is not None and watch.openai is not None else None
        if key_env and not os.environ.get(key_env):
            problems.append(
                Problem(
                    str(config_path), f"{where}.openai.api_key_env: environment variable {key_env} is not set"
                )
            )
    checks = [  # (where, strategies, eval set): every prompt a job or a challenger evaluation renders
        (f"finetunes.{n}.strategies", ft.strategies, e)
        for n, ft in cfg.finetunes.items()
        for e in ft.evalsets
    ]
    checks += [
        (f"jobs.{n}", job.strategies or (cfg.models[m].strategy,), e)
        for n, job in cfg.jobs.items()
        for m in job.models
        for e in job.evalsets
    ]
    for where, strategies, es_name in checks:
        found = loaded.get(es_name)
        for strategy in strategies if found is not None else ():
            try:
                found.render_fewshot_prefix(parse_strategy(strategy, found))  # type: ignore[arg-type,union-attr]
            except EvalSetError as exc:
                problems.append(
                    Problem(str(config_path), f"{where}: {strategy} on {es_name}: {exc.problems[0].message}")
                )
    return problems


def _locator(config_path: Path) -> Any:
    """``where(*keys)``: ``file:line`` of a key path in the configuration file (the file alone if unknown)."""
    text, _ = read_text(config_path)
    located = load_yaml(text, config_path)[0] if text else None

    def where(*keys: str | int) -> str:
        line = located.line_of(tuple(keys)) if located is not None else None
        return f"{config_path}:{line}" if line else str(config_path)

    return where


#: Keys of a model's config.json that give the width of a layer's input.
_WIDTH_KEYS = ("hidden_size", "n_embd", "d_model", "intermediate_size", "n_inner", "ffn_dim")


def adapter_problems(adapter: Path, base: Path | None) -> list[str]:
    """What is wrong with a LoRA adapter folder, read without loading it: no ``adapter_config.json`` (an
    empty folder, or a model given as the adapter), or weights whose input widths the base does not have."""
    if not adapter.is_dir():
        return [f"{adapter} is not a folder (a LoRA adapter is a folder with adapter_config.json)"]
    if not (adapter / "adapter_config.json").is_file():
        if (adapter / "config.json").is_file():
            return [
                f"{adapter} is a model folder, not a LoRA adapter (it has config.json, no adapter_config.json)"
            ]
        return [f"{adapter} is not a LoRA adapter folder: it has no adapter_config.json"]
    try:
        json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"{adapter / 'adapter_config.json'} cannot be read: {exc}"]
    if base is None or not (base / "config.json").is_file():
        return []
    try:
        base_config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    widths = {int(v) for k, v in base_config.items() if k in _WIDTH_KEYS and isinstance(v, int)}
    hidden = base_config.get("hidden_size") or base_config.get("n_embd")
    if isinstance(hidden, int):
        widths.add(4 * hidden)  # GPT-2's MLP when n_inner is null
    shapes = _safetensors_shapes(adapter / "adapter_model.safetensors")
    if not shapes:
        return []
    base_keys: set[str] = set()
    for weights in sorted(base.glob("*.safetensors")):
        base_keys |= set(_safetensors_shapes(weights))
    # a LoRA pair sits on a module of the base: ``...h.0.attn.c_attn.lora_A.weight`` needs ``h.0.attn.c_attn``
    modules = {key.split(".lora_A")[0] for key in shapes if ".lora_A" in key}
    tails = {".".join(m.split(".")[-3:]) for m in modules}
    missing = sorted(t for t in tails if base_keys and not any(f"{t}.weight" in k for k in base_keys))
    if missing:
        return [
            f"{adapter} does not fit the base {base}: the base has no module {missing[0]}"
            + (f" (nor {len(missing) - 1} more the adapter adapts)" if len(missing) > 1 else "")
            + "; was it trained on another base?"
        ]
    if not widths:
        return []
    wrong = sorted(
        {shape[-1] for key, shape in shapes.items() if "lora_A" in key and shape and shape[-1] not in widths}
    )
    if wrong:
        return [
            f"{adapter} does not fit the base {base}: its LoRA weights take inputs of width "
            f"{', '.join(map(str, wrong))}, the base's layers have {', '.join(map(str, sorted(widths)))}"
        ]
    return []


def _safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor shapes from a safetensors file's JSON header (nothing else is read); empty when unreadable."""
    try:
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 100_000_000:
                return {}
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error):
        return {}
    return {k: v["shape"] for k, v in header.items() if isinstance(v, dict) and "shape" in v}
