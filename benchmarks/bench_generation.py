"""Benchmark ``monitor eval`` against lm-evaluation-harness on greedy generation (``generate_until``).

The same seeded GPT-2-shaped model as ``bench_multiple_choice.py`` (its helpers are imported, not
copied: lexicon, tokenizer and model build, thread settings, timing), a seeded generation eval set
(questions from the same lexicon, one-word answers, a 16-item few-shot pool), written twice:

* a monitor eval set folder (``task: generate``, ``prompt: "Question: {input}\\nAnswer:"``,
  ``target_delimiter: " "``, ``fewshot: {k: 5, separator: "\\n\\n"}``, ``stop: ["\\n"]``,
  ``max_new_tokens``, ``metrics: [exact_match]``);
* an lm-eval task (``output_type: generate_until``, the same template in Jinja, ``fewshot_config:
  {sampler: first_n}``, ``generation_kwargs: {until: ["\\n"], do_sample: false, max_gen_toks}``).

lm-eval runs in a fresh process per batch size (HF backend, CPU, float32, ``log_samples``); the
monitor as ``python -m monitor eval ... --output results.jsonl --json``.  Checks: every context lm-eval
logged is the monitor's rendering, and every generation is identical (exit 1 otherwise).

The forward-pass bound: a bare greedy loop over the same prompts with transformers' KV cache and no
tool around it (the few-shot prefix run once and its cache shared by every row, each batch's tails
run once, then one forward per new token), timed in this process with the same threads at each of
``--bound-batches`` and generating the monitor's number of tokens; the fastest is the bound.  The
monitor's tokens per second (completion tokens / its ``eval_s``) is compared with it.

Usage::

    .venv/bin/python benchmarks/bench_generation.py                       # 300 items, 5-shot
    .venv/bin/python benchmarks/bench_generation.py --items 100 --lm-eval-batch-sizes 16
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_multiple_choice as mc

TASK_NAME = "bench_gen"
EVALSET_NAME = "bench-gen"
PROMPT = "Question: {input}\nAnswer:"
TARGET_DELIMITER = " "
SEPARATOR = "\n\n"
STOP = "\n"


@dataclass(frozen=True)
class GenItem:
    id: str
    input: str
    target: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "input": self.input, "target": self.target}


def generation_items(seed: int, n: int, *, prefix: str, lex: Any) -> list[GenItem]:
    """Seeded questions from the multiple-choice benchmark's generator; the answer is one of its choices."""
    rng = random.Random(f"{seed}-gen-{prefix}")
    out = []
    for i in range(n):
        question, choices = mc._question(rng, lex)
        out.append(GenItem(f"{prefix}{i:05d}", question, choices[rng.randrange(len(choices))]))
    return out


def render_context(item: GenItem, pool: Sequence[GenItem], k: int) -> str:
    shots = [PROMPT.format(input=s.input) + TARGET_DELIMITER + s.target for s in pool[:k]]
    return "".join(s + SEPARATOR for s in shots) + PROMPT.format(input=item.input)


def write_eval_sets(
    root: Path, items: Sequence[GenItem], pool: Sequence[GenItem], k: int, max_new_tokens: int
) -> mc.EvalSetPaths:
    import yaml

    monitor_dir, lm_eval_dir = root / "monitor_evalset", root / "lm_eval_task"
    data_file, pool_file = monitor_dir / "data.jsonl", monitor_dir / "fewshot.jsonl"
    mc._write_if_changed(data_file, "".join(json.dumps(i.to_json()) + "\n" for i in items))
    mc._write_if_changed(pool_file, "".join(json.dumps(i.to_json()) + "\n" for i in pool))
    evalset = {
        "name": EVALSET_NAME,
        "task": "generate",
        "prompt": PROMPT,
        "target_delimiter": TARGET_DELIMITER,
        "fewshot": {"k": k, "pool": pool_file.name, "separator": SEPARATOR},
        "metrics": ["exact_match"],
        "max_new_tokens": max_new_tokens,
        "stop": [STOP],
    }
    mc._write_if_changed(monitor_dir / "evalset.yaml", yaml.safe_dump(evalset, sort_keys=False))
    task = {
        "task": TASK_NAME,
        "dataset_path": "json",
        "dataset_kwargs": {
            "data_files": {"test": str(data_file.resolve()), "train": str(pool_file.resolve())}
        },
        "test_split": "test",
        "fewshot_split": "train",
        "fewshot_config": {"sampler": "first_n"},
        "output_type": "generate_until",
        "doc_to_text": mc.python_format_to_jinja(PROMPT),
        "doc_to_target": "target",
        "target_delimiter": TARGET_DELIMITER,
        "fewshot_delimiter": SEPARATOR,
        "generation_kwargs": {"until": [STOP], "do_sample": False, "max_gen_toks": max_new_tokens},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }
    mc._write_if_changed(lm_eval_dir / f"{TASK_NAME}.yaml", yaml.safe_dump(task, sort_keys=False))
    return mc.EvalSetPaths(monitor_dir, lm_eval_dir, data_file, pool_file)


def run_lm_eval(
    *, model_dir: Path, paths: mc.EvalSetPaths, shots: int, batch_size: str, threads: int, workdir: Path
) -> mc.ToolRun:
    out = workdir / "runs" / f"lm-eval-gen-{shots}shot-bs{batch_size}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    spec = {"model_dir": str(model_dir), "include_path": str(paths.lm_eval_dir), "shots": shots,
            "batch_size": batch_size, "threads": threads, "out": str(out)}  # fmt: skip
    cmd = [sys.executable, str(Path(__file__).resolve()), "--lm-eval-worker", json.dumps(spec)]
    log = out.with_suffix(".log")
    cpu_before, start = mc._children_cpu_s(), time.perf_counter()
    with log.open("w") as log_file:
        proc = subprocess.run(
            cmd, env=mc._thread_env(threads), stdout=log_file, stderr=subprocess.STDOUT, check=False
        )
    run = mc.ToolRun(
        "lm-eval", shots, batch_size, time.perf_counter() - start, mc._children_cpu_s() - cpu_before
    )
    if proc.returncode != 0 or not out.exists():
        run.error = f"lm-eval worker exited with {proc.returncode}; see {log}"
        return run
    data = json.loads(out.read_text())
    run.load_s, run.eval_s, run.scoring_s = data["load_s"], data["eval_s"], data["generate_s"]
    run.accuracy = data["exact_match"]
    run.summary = {k: v for k, v in data.items() if k != "samples"}
    run.items = {s["id"]: s for s in data["samples"]}
    return run


def _lm_eval_worker(spec: dict[str, Any]) -> None:
    import torch

    torch.set_num_threads(spec["threads"])
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    batch_size: int | str = int(spec["batch_size"]) if spec["batch_size"].isdigit() else spec["batch_size"]
    start = time.perf_counter()
    lm = HFLM(pretrained=spec["model_dir"], dtype="float32", device="cpu", batch_size=batch_size)
    loaded = time.perf_counter()
    spent = {"s": 0.0}
    generate = lm.generate_until

    def timed(requests: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return generate(requests, *args, **kwargs)
        finally:
            spent["s"] += time.perf_counter() - t0

    lm.generate_until = timed  # type: ignore[method-assign]
    task_manager = TaskManager(include_path=spec["include_path"])
    indexed = time.perf_counter()
    results = lm_eval.simple_evaluate(
        model=lm, tasks=[TASK_NAME], task_manager=task_manager, num_fewshot=spec["shots"],
        batch_size=batch_size, device="cpu", log_samples=True,
    )  # fmt: skip
    done = time.perf_counter()
    assert results is not None
    samples = []
    for sample in results["samples"][TASK_NAME]:
        response = sample["filtered_resps"][0]
        samples.append(
            {
                "id": sample["doc"]["id"],
                "context": sample["arguments"][0][0],
                "prediction": response[0] if isinstance(response, list) else response,
            }
        )
    payload = {
        "load_s": loaded - start,
        "task_index_s": indexed - loaded,
        "eval_s": done - indexed,
        "generate_s": spent["s"],
        "exact_match": results["results"][TASK_NAME]["exact_match,none"],
        "samples": samples,
    }
    Path(spec["out"]).write_text(json.dumps(payload))


def run_monitor(
    *, model_dir: Path, paths: mc.EvalSetPaths, shots: int, threads: int, workdir: Path
) -> mc.ToolRun:
    out = workdir / "runs" / f"monitor-gen-{shots}shot.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "monitor", "eval", "--model", str(model_dir), "--evalset", str(paths.monitor_dir),
           "--fewshot", str(shots), "--output", str(out), "--json", "--device", "cpu", "--dtype", "float32"]  # fmt: skip
    cpu_before, start = mc._children_cpu_s(), time.perf_counter()
    proc = subprocess.run(cmd, env=mc._thread_env(threads), capture_output=True, text=True, check=False)
    run = mc.ToolRun("monitor", shots, None, time.perf_counter() - start, mc._children_cpu_s() - cpu_before)
    (workdir / "runs" / f"monitor-gen-{shots}shot.log").write_text(
        proc.stdout + "\n--- stderr\n" + proc.stderr
    )
    if proc.returncode != 0 or not out.exists():
        run.error = f"monitor exited with {proc.returncode}: {proc.stderr.strip()[-500:]}"
        return run
    run.summary = mc._parse_summary(proc.stdout)
    run.accuracy = mc._find_number(run.summary.get("metrics", {}), ("exact_match",))
    timings = run.summary.get("timings", {})
    run.load_s, run.eval_s = timings.get("load_s"), timings.get("eval_s")
    for line in out.read_text(encoding="utf-8").splitlines():
        record = json.loads(line) if line.strip() else {}
        if "id" in record:
            run.items[str(record["id"])] = record
    return run


def forward_bound(
    model_dir: Path,
    prefix: str,
    tails: Sequence[str],
    new_tokens: Sequence[int],
    batches: Sequence[int],
    threads: int,
) -> dict[str, Any]:
    """The fastest bare greedy loop over the same prompts: the few-shot prefix run once and its KV cache
    shared by every row, each batch's tails left-padded after it and run once, then one forward per new
    token (as many as the batch's longest answer); no tokenising of outputs, no stop checks, nothing else.
    Tried at each batch size in ``batches`` (0: every item at once); the fastest is the bound."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in tails]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    p = len(prefix_ids)
    tried = []
    with torch.inference_mode():
        model(input_ids=torch.tensor([prefix_ids]), use_cache=True)  # warm-up
        for batch in batches:
            batch = batch or len(order)
            t_start = time.perf_counter()
            shared = model(input_ids=torch.tensor([prefix_ids]), use_cache=True).past_key_values
            prefill_s, decode_s, generated = time.perf_counter() - t_start, 0.0, 0
            for start in range(0, len(order), batch):
                rows = order[start : start + batch]
                width = max(len(encoded[i]) for i in rows)
                t0 = time.perf_counter()
                past = copy.deepcopy(shared)
                past.batch_repeat_interleave(len(rows))
                ids = torch.full((len(rows), width), pad, dtype=torch.long)
                tail_mask = torch.zeros((len(rows), width), dtype=torch.long)
                for b, i in enumerate(rows):
                    ids[b, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                    tail_mask[b, width - len(encoded[i]) :] = 1
                mask = torch.cat([torch.ones((len(rows), p), dtype=torch.long), tail_mask], dim=1)
                positions = p + (tail_mask.cumsum(-1) - 1).clamp(min=0)
                out = model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=past,
                    use_cache=True,
                )
                t1 = time.perf_counter()
                past, last = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                for _ in range(max(new_tokens[i] for i in rows) - 1):
                    mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=torch.long)], dim=1)
                    positions = positions[:, -1:] + 1
                    out = model(
                        input_ids=last,
                        attention_mask=mask,
                        position_ids=positions,
                        past_key_values=past,
                        use_cache=True,
                    )
                    past, last = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                prefill_s += t1 - t0
                decode_s += time.perf_counter() - t1
                generated += sum(new_tokens[i] for i in rows)
            total = prefill_s + decode_s
            tried.append({"batch": batch, "prefill_s": prefill_s, "decode_s": decode_s, "total_s": total,
                          "completion_tokens": generated, "completion_tokens_per_s": generated / total})  # fmt: skip
    best = min(tried, key=lambda t: t["total_s"])
    return {**best, "prefix_tokens": p, "tail_tokens": sum(len(e) for e in encoded), "tried": tried}


def compare(
    lm: mc.ToolRun, mon: mc.ToolRun, items: Sequence[GenItem], pool: Sequence[GenItem], k: int
) -> dict[str, Any]:
    identical, contexts_ok, mismatches = 0, 0, []
    for item in items:
        a, b = lm.items.get(item.id), mon.items.get(item.id)
        if a is None or b is None:
            mismatches.append({"id": item.id, "missing": "lm-eval" if a is None else "monitor"})
            continue
        contexts_ok += a["context"] == render_context(item, pool, k)
        if a["prediction"] == b.get("prediction"):
            identical += 1
        elif len(mismatches) < 10:
            mismatches.append({"id": item.id, "lm_eval": a["prediction"], "monitor": b.get("prediction")})
    return {
        "items": len(items),
        "identical": identical,
        "contexts_identical": contexts_ok,
        "mismatches": mismatches,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lm-eval-worker", help=argparse.SUPPRESS)
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lm-eval-batch-sizes", default="16,64")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--bound-batches", default="32,128,all", help="batch sizes of the bare loop ('all': every item)"
    )
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--positions", type=int, default=1024)
    parser.add_argument("--workdir", type=Path, default=Path(".cache/bench"))
    parser.add_argument("--report", type=Path, default=Path(__file__).resolve().parent / "generation.json")
    args = parser.parse_args(argv)
    if args.lm_eval_worker:
        _lm_eval_worker(json.loads(args.lm_eval_worker))
        return 0
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[name] = "1"
    lex = mc._Lexicon(random.Random(args.seed))
    spec = mc.ModelSpec("gpt2", args.layers, args.hidden, args.heads, args.vocab, args.positions, args.seed)
    model_dir = mc.ensure_model(args.workdir, spec, mc.synthetic_corpus(args.seed, lex))
    items = generation_items(args.seed, args.items, prefix="q", lex=lex)
    pool = generation_items(args.seed, 16, prefix="shot", lex=lex)
    root = args.workdir / "generation" / f"n{args.items}-k{args.shots}-t{args.max_new_tokens}-s{args.seed}"
    paths = write_eval_sets(root, items, pool, args.shots, args.max_new_tokens)
    mc.warm_dataset_cache(paths)
    lm_runs = {}
    for bs in args.lm_eval_batch_sizes.split(","):
        lm_runs[bs] = mc.best_of(
            args.repeats,
            lambda bs=bs: run_lm_eval(model_dir=model_dir, paths=paths, shots=args.shots, batch_size=bs,
                                      threads=args.threads, workdir=root),
        )  # fmt: skip
        print(
            f"lm-eval bs={bs}: {lm_runs[bs].process_s:.1f} s process, eval {lm_runs[bs].eval_s} s, {lm_runs[bs].error or ''}",
            flush=True,
        )
    mon = mc.best_of(
        args.repeats,
        lambda: run_monitor(
            model_dir=model_dir, paths=paths, shots=args.shots, threads=args.threads, workdir=root
        ),
    )
    print(f"monitor: {mon.process_s:.1f} s process, eval {mon.eval_s} s {mon.error or ''}", flush=True)
    ok_runs = {bs: r for bs, r in lm_runs.items() if r.error is None}
    if mon.error or not ok_runs:
        print(mon.error or [r.error for r in lm_runs.values()], file=sys.stderr)
        return mc.EXIT_SETUP
    best_bs = min(ok_runs, key=lambda bs: ok_runs[bs].process_s)
    lm = ok_runs[best_bs]
    agreement = {bs: compare(r, mon, items, pool, args.shots) for bs, r in ok_runs.items()}
    # the results file has no per-item token count: the bound generates the monitor's total, spread evenly
    completion = int((mon.summary.get("tokens") or {}).get("completion") or args.max_new_tokens * len(items))
    share, extra = divmod(completion, len(items))
    new_tokens = [max(1, share + (1 if n < extra else 0)) for n in range(len(items))]
    prefix = render_context(GenItem("", "", ""), pool, args.shots).removesuffix(PROMPT.format(input=""))
    tails = [render_context(i, pool, args.shots).removeprefix(prefix) for i in items]
    batches = [0 if b == "all" else int(b) for b in args.bound_batches.split(",")]
    bound = forward_bound(model_dir, prefix, tails, new_tokens, batches, args.threads)
    mon_tps = completion / mon.eval_s if mon.eval_s else None
    report = {
        "settings": vars(args) | {"workdir": str(args.workdir), "report": str(args.report)},
        "model": str(model_dir),
        "machine": mc._machine(),
        "lm_eval": {bs: mc._run_dict(r) for bs, r in lm_runs.items()},
        "monitor": mc._run_dict(mon),
        "monitor_tokens": mon.summary.get("tokens"),
        "agreement": agreement,
        "bound": bound,
        "monitor_completion_tokens_per_s": mon_tps,
        "speedup_process": lm.process_s / mon.process_s,
        "speedup_eval": (lm.eval_s / mon.eval_s) if lm.eval_s and mon.eval_s else None,
        "speedup_cpu": (lm.process_cpu_s / mon.process_cpu_s)
        if lm.process_cpu_s and mon.process_cpu_s
        else None,
    }
    args.report.write_text(json.dumps(report, indent=2, default=str) + "\n")
    a = agreement[best_bs]
    print(
        f"\n{args.items} items, {args.shots}-shot, max {args.max_new_tokens} new tokens, {args.threads} threads\n"
        f"lm-eval (bs {best_bs}): process {lm.process_s:.1f} s (cpu {lm.process_cpu_s:.1f}), eval {lm.eval_s:.1f} s, "
        f"generate_until {lm.scoring_s:.1f} s\n"
        f"monitor: process {mon.process_s:.1f} s (cpu {mon.process_cpu_s:.1f}), eval {mon.eval_s:.1f} s\n"
        f"speed-up: process {report['speedup_process']:.2f}x, eval {report['speedup_eval']:.2f}x, "
        f"cpu {report['speedup_cpu']:.2f}x\n"
        f"identical generations: {a['identical']}/{a['items']} (contexts {a['contexts_identical']}/{a['items']}); "
        f"every batch size: {[(bs, g['identical']) for bs, g in agreement.items()]}\n"
        f"monitor: {completion} completion tokens, {mon_tps:.0f} tokens/s; bare KV-cached greedy loop (batch "
        f"{bound['batch']}): {bound['completion_tokens_per_s']:.0f} tokens/s (prefill {bound['prefill_s']:.1f} s of "
        f"{bound['prefix_tokens']} + {bound['tail_tokens']} tokens, decode {bound['decode_s']:.1f} s) -> {mon_tps / bound['completion_tokens_per_s']:.2f} of the bound\n"
        f"report: {args.report}"
    )  # fmt: skip
    if a["mismatches"]:
        print("first mismatches:", json.dumps(a["mismatches"][:3], ensure_ascii=False))
    return 0 if all(g["identical"] == g["items"] for g in agreement.values()) else mc.EXIT_DISAGREEMENT


if __name__ == "__main__":
    raise SystemExit(main())
