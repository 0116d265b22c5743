"""``monitor import``: other tools' eval formats written out in the monitor's own.

``monitor import lm-eval TASK.yaml DIR`` writes ``evalset.yaml``, ``data.jsonl``
and (for few-shot examples the monitor's format can draw) ``fewshot.jsonl``,
then loads what it wrote and checks that every item's prompt is the task file's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from monitor.cli.output import err, handle_errors
from monitor.errors import InputError
from monitor.evals.evalset import DATA_FILE, SPEC_FILE, FewshotSpec, load_evalset
from monitor.evals.lmeval import LmEvalTask, load_task

POOL_FILE = "fewshot.jsonl"

import_app = typer.Typer(
    help="Write another tool's eval (an lm-eval task file) as a monitor eval set.", no_args_is_help=True
)


@import_app.command("lm-eval")
@handle_errors
def import_lm_eval_command(
    task_file: Annotated[Path, typer.Argument(help="The lm-evaluation-harness task YAML.")],
    directory: Annotated[Path, typer.Argument(help="The eval set folder to write (new or empty).")],
) -> None:
    """Write an lm-eval task file as evalset.yaml + data.jsonl (+ fewshot.jsonl) in DIRECTORY."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise InputError(
            "not empty: the import writes a new eval set and overwrites nothing"
            if directory.is_dir()
            else "not a folder",
            str(directory),
        )
    task = load_task(task_file)
    spec, items, pool, baked = evalset_files(task)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SPEC_FILE).write_text(
        f"# Imported from the lm-eval task file {task_file.name} by `monitor import lm-eval`.\n"
        + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=100),
        encoding="utf-8",
    )
    (directory / DATA_FILE).write_text(_jsonl(items), encoding="utf-8")
    if pool:
        (directory / POOL_FILE).write_text(_jsonl(pool), encoding="utf-8")
    written = load_evalset(directory)
    k, wk = task.default_fewshot, written.default_fewshot
    for item, mine in zip(task.items, written.items, strict=True):
        if written.render_context(mine, wk) != task.render_context(item, k):  # a bug, not an input error
            raise AssertionError(f"item {item.id}: the written eval set renders another prompt")
    note = f"; each item's {k} shots are written into its input (the task's sampler)" if baked else ""
    err(f"wrote {len(items)} items to {directory}{note}")


def evalset_files(
    task: LmEvalTask,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], bool]:
    """The ``evalset.yaml`` mapping, the data lines, the pool lines, and whether the shots were baked in.

    A task drawing its shots from another split (``first_n``, or lm-eval's seeded
    sampler as ``sampler: random``) with one description keeps a pool; otherwise
    (the evaluated split as pool, a per-document description, other few-shot
    delimiters) each item's full lm-eval context is its ``input``.
    """
    spec: dict[str, Any] = task.spec.model_dump(mode="json", exclude_unset=True)
    k = task.default_fewshot
    descriptions = set(task.descriptions.values())
    same_description = len(descriptions) <= 1 and len(task.descriptions) in (0, len(task.items))
    random_supported = "sampler" in FewshotSpec.model_fields
    keeps_pool = (
        (task.sampler == "first_n" or random_supported)
        and not task.exclude_self
        and task.fewshot_target_delimiter == task.spec.target_delimiter
        and same_description
        and (
            task.task != "multiple_choice"
            or all(ex.target in ex.fields.get("choices", ()) for ex in task.pool)
        )
    )
    spec.pop("fewshot", None)
    spec.pop("description", None)
    if keeps_pool:
        items = [dict(item.fields) for item in task.items]
        pool = [dict(ex.fields) for ex in task.pool]
        if descriptions:
            spec["description"] = next(iter(descriptions))
        if pool:
            fewshot: dict[str, Any] = {"k": k, "pool": POOL_FILE, "separator": task.fewshot_delimiter}
            if task.sampler == "default":  # lm-eval's seeded sampler is the monitor's random one
                fewshot.update(sampler="random", seed=task.seed)
            spec["fewshot"] = FewshotSpec.model_validate(fewshot).model_dump(mode="json", exclude_unset=True)
        return _ordered(spec), items, pool, False
    items = []
    for item in task.items:
        fields = dict(item.fields)
        fields["input"] = task.render_context(item, k)
        items.append(fields)
    return _ordered(spec), items, [], k > 0


def _ordered(spec: dict[str, Any]) -> dict[str, Any]:
    first = ("name", "task", "prompt", "description", "target_delimiter", "fewshot", "metrics")
    return {
        **{key: spec[key] for key in first if key in spec},
        **{k: v for k, v in spec.items() if k not in first},
    }


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)
