"""Benchmark the ``openai`` backend's throughput against the bound of its concurrency limit.

With at most ``C`` requests in flight and every request taking ``L`` seconds,
no client can finish more than ``C / L`` requests a second (Little's law).
This script serves a tiny seeded model with the project's OpenAI-compatible
server (:mod:`monitor.testing.openai_server`), adds a fixed latency ``L`` to every
inference request, and measures how close the backend gets to that bound
when the runner evaluates an eval set through it (one request an item).

The server runs in its own process (``monitor serve-openai``), as a real one
would, and keeps its answers by request body (``--memoize``; decoding is
greedy, so an answer never changes): a first pass fills it and is also the
agreement check, so the timed passes measure the client, its concurrency and
pacing, not the model's compute on a shared CPU.  The first pass compares the
served predictions and log-likelihoods with the same weights in process.

Throughput is measured with the whole eval set handed to the backend at once
(the bound is then only the concurrency's) and with the runner's chunks of
``--chunk-size`` items, as the daemon commits them (the runner hands a remote
backend the next chunk while the last one's stragglers are in flight, so the
slots do not drain at chunk boundaries).  It prints one row per setting and
writes them to ``--report`` as JSON; it exits 1 when a prediction differs, a
log-likelihood differs by more than 1e-4, or either throughput stays under
``--min-ratio`` of the bound.

Usage::

    python benchmarks/bench_openai_throughput.py                    # C=8, L=50 ms, 400 items
    python benchmarks/bench_openai_throughput.py --concurrency 16 --latency-ms 100
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPORT_VERSION = 1
EXIT_FAILED = 1
TEXTS = [
    "Ticket: I was charged twice for my subscription\nCategory: billing",
    "Ticket: the app crashes when I open settings\nCategory: technical",
    "Ticket: how do I change the email on my account\nCategory: account",
    "Ticket: my parcel never arrived\nCategory: shipping",
    "Ticket: please refund the last invoice\nCategory: billing",
    "Ticket: password reset link does not work\nCategory: account",
] * 40
SUBJECTS = ["invoice", "parcel", "password", "screen", "refund", "email", "login", "order", "card", "update"]
PROBLEMS = ["is wrong", "never came", "does not work", "is frozen", "is late", "was charged twice", "failed"]
CATEGORIES = ["billing", "technical", "account", "shipping"]


def build(workdir: Path, items: int) -> tuple[Path, Path, Path]:
    """A tiny tokenizer, a GPT-2-shaped model with a LoRA adapter, and a routing eval set of ``items`` items."""
    from monitor.demo.models import build_base_model, build_random_lora, build_tokenizer

    tokenizer = build_tokenizer(TEXTS, workdir / "tokenizer", vocab_size=320)
    base = build_base_model(workdir / "base", tokenizer_dir=tokenizer, seed=11)
    adapter = build_random_lora(base, workdir / "adapter", seed=21)
    evalset = workdir / "routing"
    evalset.mkdir(exist_ok=True)
    (evalset / "evalset.yaml").write_text(
        'name: routing\ntask: multiple_choice\nprompt: "Ticket: {input}\\nCategory:"\n'
        "choices: [billing, technical, account, shipping]\nmetrics: [acc]\n"
    )
    with (evalset / "data.jsonl").open("w") as fh:
        for i in range(items):
            text = f"my {SUBJECTS[i % len(SUBJECTS)]} {PROBLEMS[i // len(SUBJECTS) % len(PROBLEMS)]} ({i})"
            fh.write(json.dumps({"id": f"r{i}", "input": text, "target": CATEGORIES[i % 4]}) + "\n")
    return base, adapter, evalset


def serve(base: Path, adapter: Path, latency_s: float) -> tuple[subprocess.Popen[str], str]:
    """``monitor serve-openai`` in its own process (as a real server is): the process and its URL."""
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "monitor", "serve-openai", "--port", "0", "--memoize"),
            *("--latency", str(latency_s), "--model", f"ticket-router={base}:{adapter}"),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    line = ""
    while "serving" not in line:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            raise SystemExit("the server did not start")
    return process, line.split(" at ")[1].split()[0]


def timed_passes(client: Any, es: Any, chunk_size: int, repeats: int) -> list[dict[str, Any]]:
    from monitor.evals.loop import evaluate

    passes = []
    for _ in range(repeats):
        before = client.stats["requests"]
        started = time.perf_counter()
        outcome = evaluate(client, es, chunk_size=chunk_size)
        elapsed = time.perf_counter() - started
        requests = client.stats["requests"] - before
        passes.append(
            {
                "seconds": round(elapsed, 3),
                "requests": requests,
                "requests_per_s": round(requests / elapsed, 1),
                "failed_items": outcome.failed,
            }
        )
    return passes


def run(args: argparse.Namespace) -> int:
    import torch

    from monitor.backends import EndpointSpec
    from monitor.backends.hf.backend import HFBackend
    from monitor.backends.openai import OpenAIBackend
    from monitor.evals.evalset import load_evalset
    from monitor.evals.loop import evaluate

    torch.set_num_threads(args.threads)
    latency = args.latency_ms / 1000
    bound = args.concurrency / latency
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        base, adapter, evalset_dir = build(Path(tmp), args.items)
        es = load_evalset(evalset_dir)
        local = HFBackend.load(str(base), str(adapter), device="cpu", dtype="float32")
        process, url = serve(base, adapter, latency)
        try:
            spec = EndpointSpec(url, max_concurrency=args.concurrency, mc_method="logprobs")
            client = OpenAIBackend.load("ticket-router", spec)
            # Pass 1: agreement with the same weights in process (and the server's memory is filled).
            in_process = evaluate(local, es, chunk_size=len(es.items)).results
            through = evaluate(client, es, chunk_size=len(es.items)).results
            same = sum(a.prediction == b.prediction for a, b in zip(in_process, through, strict=True))
            worst = max(
                abs(x - y)
                for a, b in zip(in_process, through, strict=True)
                for x, y in zip(a.loglikelihoods or [], b.loglikelihoods or [], strict=True)
            )
            errors = sum(1 for r in through if r.error)
            # Timed passes: answers from the server's memory after the added latency.
            for chunk_size in (len(es.items), args.chunk_size):
                passes = timed_passes(client, es, chunk_size, args.repeats)
                median = statistics.median(p["requests_per_s"] for p in passes)
                rows.append(
                    {
                        "chunk_size": chunk_size,
                        "throughput_requests_per_s": median,
                        "ratio": round(median / bound, 3),
                        "passes": passes,
                    }
                )
            client.close()
        finally:
            process.terminate()
            process.wait(timeout=10)
    agree = same == len(in_process) and worst <= 1e-4 and errors == 0
    report: dict[str, Any] = {
        "format_version": REPORT_VERSION,
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "settings": {
            "items": args.items,
            "concurrency": args.concurrency,
            "latency_ms": args.latency_ms,
            "repeats": args.repeats,
            "threads": args.threads,
        },
        "bound_requests_per_s": round(bound, 1),
        "runs": rows,
        "agreement": {
            "items": len(in_process),
            "same_predictions": same,
            "max_abs_loglikelihood_diff": worst,
            "failed_items": errors,
        },
    }
    print(f"bound C/L = {args.concurrency}/{latency:g}s = {bound:.1f} requests/s")
    for row in rows:
        rates = ", ".join(f"{p['requests_per_s']:.1f}" for p in row["passes"])
        print(
            f"chunk {row['chunk_size']:>4}: median {row['throughput_requests_per_s']:.1f} requests/s "
            f"= {row['ratio']:.1%} of the bound (passes: {rates})"
        )
    print(
        f"in process vs served: {same}/{len(in_process)} same predictions, "
        f"max |Δ log-likelihood| {worst:.2e}, {errors} failed items"
    )
    print(f"needs >= {args.min_ratio:.0%} of the bound, in one chunk and in the runner's chunks")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    slowest = min(row["ratio"] for row in rows)
    return 0 if agree and slowest >= args.min_ratio else EXIT_FAILED


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8, help="the backend's max_concurrency C")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="latency L added by the server")
    parser.add_argument(
        "--chunk-size", type=int, default=64, help="also measured: items the runner hands over at a time"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--min-ratio", type=float, default=0.9)
    parser.add_argument("--report", type=Path, default=Path("benchmarks/openai_results.json"))
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(run(parse_args()))
