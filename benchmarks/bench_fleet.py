"""Benchmark a fleet of served fine-tunes: one fire of every job through the daemon, against the server's bound.

Fifty LoRA adapters behind one OpenAI-compatible server (``monitor serve-openai``
in its own process, a fixed latency ``L`` added to every inference request, at
most ``C`` requests taken at once by the endpoint's ``max_concurrency``), one job
per adapter on three eval sets of 400 items: one fire of every job is 150 runs
and 60,000 requests.  No client can finish them faster than the server's
Little's-law bound, ``requests / (C / L)`` seconds; the benchmark times the
daemon (in process: its workers, run slots, store writes, analysis and after-job
work, all of it) from queueing the fires to the last one closed, and states the
share of the bound it reaches.

Passes, each on a fresh SQLite store:

1. ``warm-up``: every adapter on eval sets of each distinct ticket once; the
   server computes them and keeps the answers (``--memoize``, as the throughput
   benchmark does: decoding is greedy, an answer never changes).  The eval sets
   repeat ``--distinct`` tickets over their items, so that the tiny model's
   compute, paid once per distinct request, stays small on a shared CPU.
2. ``concurrent``: one fire of every job (``daemon.max_concurrent_runs`` runs in
   flight), answers from the server's memory: what is measured is the client,
   its concurrency and its bookkeeping, not the model.
3. ``serial``: ``max_concurrent_runs: 1``, the daemon before this change (one run
   at a time, each run's two overlapped chunks in flight), on the first
   ``--serial-jobs`` jobs; its time for every job is projected from its rate (its
   runs are made one after the other, so the rate does not depend on how many).

Every run of the concurrent pass must succeed with the same predictions as the
serial pass's run of the same adapter and eval set.  It prints a table, writes
the figures to ``--report`` (JSON), and exits 1 when a run failed or disagreed,
or when the concurrent pass stays under ``--min-ratio`` of the bound.

Usage::

    python benchmarks/bench_fleet.py              # 50 adapters, 3 x 400 items, C=128, L=1 s (16 min here)
    python benchmarks/bench_fleet.py --quick      # 6 adapters, 3 x 60 items, C=64, L=200 ms
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
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
#: The eval sets: name, prompt, choices (multiple choice, scored by the server's prompt log-probabilities).
EVALSETS = [
    ("routing", "Ticket: {input}\\nCategory:", ["billing", "technical", "account", "shipping"]),
    ("priority", "Ticket: {input}\\nPriority:", ["low", "normal", "urgent"]),
    ("sentiment", "Ticket: {input}\\nThe customer is", ["calm", "annoyed", "angry"]),
]
QUICK = {"adapters": 6, "items": 60, "concurrency": 64, "latency_ms": 200.0, "serial_jobs": 6, "max_runs": 8}


def build(
    workdir: Path, adapters: int, evalsets: int, items: int, distinct: int
) -> tuple[Path, list[Path], Path, Path]:
    """A tiny tokenizer and GPT-2-shaped base, ``adapters`` seeded LoRA adapters and the eval sets (cached)."""
    from monitor.demo.models import build_base_model, build_random_lora, build_tokenizer

    models = workdir / "models"
    base = models / "base"
    if not (base / "config.json").exists():
        tokenizer = build_tokenizer(TEXTS, models / "tokenizer", vocab_size=320)
        build_base_model(base, tokenizer_dir=tokenizer, seed=11)
    loras = []
    for i in range(adapters):
        lora = models / f"adapter-{i + 1:02d}"
        if not (lora / "adapter_config.json").exists():
            build_random_lora(base, lora, seed=1000 + i)
        loras.append(lora)
    sets = workdir / f"evals-{items}-{distinct}"
    write_evalsets(sets, evalsets, items, distinct)
    warm = workdir / f"evals-{distinct}-{distinct}"  # each distinct ticket once: the server's warm-up
    write_evalsets(warm, evalsets, distinct, distinct)
    return base, loras, sets, warm


def write_evalsets(sets: Path, evalsets: int, items: int, distinct: int) -> None:
    for name, prompt, choices in EVALSETS[:evalsets]:
        folder = sets / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "evalset.yaml").write_text(
            f'name: {name}\ntask: multiple_choice\nprompt: "{prompt}"\nchoices: {json.dumps(choices)}\nmetrics: [acc]\n'
        )
        with (folder / "data.jsonl").open("w") as fh:
            for i in range(items):
                k = i % distinct
                text = (
                    f"my {SUBJECTS[k % len(SUBJECTS)]} {PROBLEMS[k // len(SUBJECTS) % len(PROBLEMS)]} ({k})"
                )
                fh.write(
                    json.dumps({"id": f"{name}-{i}", "input": text, "target": choices[i % len(choices)]})
                    + "\n"
                )


def serve(base: Path, adapters: list[Path], latency_s: float) -> tuple[subprocess.Popen[str], str]:
    """``monitor serve-openai`` in its own process, every adapter under its own name: the process and its URL."""
    models = [arg for lora in adapters for arg in ("--model", f"{lora.name}={base}:{lora}")]
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "monitor", "serve-openai", "--port", "0", "--memoize"),
            *("--latency", str(latency_s), *models),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert process.stderr is not None
    line = ""
    while "serving" not in line:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            raise SystemExit("the server did not start")
    return process, line.split(" at ")[1].split()[0]


def write_config(
    root: Path,
    label: str,
    url: str,
    adapters: list[Path],
    sets: Path,
    args: argparse.Namespace,
    max_runs: int,
) -> Path:
    """A config of one job per adapter on every eval set, its own SQLite store for the pass."""
    endpoint = (
        f"{{base_url: '{url}', max_concurrency: {args.concurrency}, mc_method: logprobs, timeout: 120s}}"
    )
    names = [lora.name for lora in adapters]
    evalsets = [name for name, _, _ in EVALSETS[: args.evalsets]]
    lines = [f'database: "sqlite:///{root / (label + ".db")}"', "models:"]
    lines += [f"  {name}: {{backend: openai, base: {name}, endpoint: {endpoint}}}" for name in names]
    lines += ["evalsets:"] + [f"  {name}: {sets / name}" for name in evalsets]
    lines += ["jobs:"] + [
        f"  {name}: {{models: [{name}], evalsets: [{', '.join(evalsets)}]}}" for name in names
    ]
    lines += [
        "daemon:",
        "  port: 0",
        f"  chunk_size: {args.chunk_size}",
        f"  max_concurrent_runs: {max_runs}",
        f"  max_loaded_models: {len(names) + 1}",
        "  lease_ttl: 60s",
    ]
    config = root / f"{label}.yaml"
    for old in root.glob(f"{label}.db*"):
        old.unlink()
    config.write_text("\n".join(lines) + "\n")
    return config


def one_fire(config: Path, url: str, jobs: list[str], label: str, timeout: float) -> dict[str, Any]:
    """Queue one fire of each of ``jobs`` in a daemon on ``config``, wait for all; its figures and predictions."""
    from monitor.backends import EndpointSpec
    from monitor.backends.openai import endpoint_gate
    from monitor.config import load_config
    from monitor.service.daemon import Daemon, WorkItem
    from monitor.store import Store

    cfg = load_config(config)
    store = Store.open(cfg.database_url())
    daemon = Daemon(cfg, store, manual_timer=True)
    daemon.start()
    try:
        started = time.perf_counter()
        for job in jobs:
            assert daemon.enqueue(WorkItem(job, "manual", None), token=label)
        if not daemon.wait_idle(timeout):
            raise SystemExit(f"{label}: the fires did not finish within {timeout:.0f} s")
        elapsed = time.perf_counter() - started
        gate = endpoint_gate(EndpointSpec(url))
        most_requests = gate.max_in_flight if gate is not None else None
    finally:
        daemon.shutdown()
    runs = store.runs()
    predictions = {}
    for run, model in runs:
        assert run.id is not None
        predictions[f"{model}/{run.evalset_name}"] = [r.prediction for r in store.item_results(run.id)]
    fires = store.fires()
    figures = {
        "jobs": len(jobs),
        "runs": len(runs),
        "requests": sum(run.items_done for run, _ in runs),
        "seconds": round(elapsed, 2),
        "statuses": sorted({run.status for run, _ in runs}),
        "fires_done": sum(f.status == "done" for f in fires),
        "max_requests_in_flight": most_requests,
        "max_runs_in_flight": daemon.slots.max_in_flight,
        "max_concurrent_runs": cfg.daemon.max_concurrent_runs,
    }
    store.close()
    return {"figures": figures, "predictions": predictions}


def run(args: argparse.Namespace) -> int:
    from monitor.service.daemon import Daemon  # noqa: F401  (import cost outside the timings)

    latency = args.latency_ms / 1000
    bound_rps = args.concurrency / latency
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    base, adapters, sets, warm = build(workdir, args.adapters, args.evalsets, args.items, args.distinct)
    print(
        f"built {len(adapters)} adapters and {args.evalsets} eval sets in {time.perf_counter() - t:.1f} s",
        flush=True,
    )
    t = time.perf_counter()
    process, url = serve(base, adapters, latency)
    print(
        f"serving {len(adapters)} adapters at {url} (loaded in {time.perf_counter() - t:.1f} s)", flush=True
    )
    jobs = [lora.name for lora in adapters]
    serial_jobs = jobs[: args.serial_jobs]
    passes: dict[str, dict[str, Any]] = {}
    try:
        plan = [
            ("warm-up", jobs, args.max_runs, warm),
            ("concurrent", jobs, args.max_runs, sets),
            ("serial", serial_jobs, 1, sets),
        ]
        for label, chosen, max_runs, folder in plan:
            config = write_config(workdir, label, url, adapters, folder, args, max_runs)
            passes[label] = one_fire(config, url, chosen, label, args.timeout)
            f = passes[label]["figures"]
            f["requests_per_s"] = round(f["requests"] / f["seconds"], 1)
            f["bound_s"] = round(f["requests"] / bound_rps, 2)
            f["ratio"] = round(f["bound_s"] / f["seconds"], 3)
            print(
                f"{label:>10}: {f['runs']} runs, {f['requests']} requests in {f['seconds']:.1f} s "
                f"({f['requests_per_s']:.1f}/s, {f['ratio']:.1%} of the bound; at most "
                f"{f['max_requests_in_flight']} requests and {f['max_runs_in_flight']} runs in flight)",
                flush=True,
            )
    finally:
        process.terminate()
        process.wait(30)
    concurrent, serial = passes["concurrent"], passes["serial"]
    projected = serial["figures"]["seconds"] * len(jobs) / len(serial_jobs)
    serial["figures"]["projected_all_jobs_s"] = round(projected, 1)
    disagree = [
        key for key, values in serial["predictions"].items() if concurrent["predictions"].get(key) != values
    ]
    problems = []
    for label, found in passes.items():
        f = found["figures"]
        if f["statuses"] != ["succeeded"] or f["fires_done"] != f["jobs"]:
            problems.append(f"{label}: runs {f['statuses']}, {f['fires_done']} of {f['jobs']} fires closed")
        if f["max_requests_in_flight"] is not None and f["max_requests_in_flight"] > args.concurrency:
            problems.append(
                f"{label}: {f['max_requests_in_flight']} requests in flight, over {args.concurrency}"
            )
    if disagree:
        problems.append(f"{len(disagree)} runs predict otherwise concurrently than serially: {disagree[:3]}")
    ratio = concurrent["figures"]["ratio"]
    if ratio < args.min_ratio:
        problems.append(f"the concurrent fire reached {ratio:.1%} of the bound, under {args.min_ratio:.0%}")

    print()
    header = (
        f"| {len(jobs)} adapters x {args.evalsets} sets x {args.items} items, C = {args.concurrency}, "
        f"L = {args.latency_ms:g} ms | runs | requests | wall (s) | bound (s) | requests/s | of the bound "
        "| max requests in flight | max runs in flight |"
    )
    print(header)
    print("|---|---|---|---|---|---|---|---|---|")
    names = {
        "warm-up": f"warm-up: each distinct ticket once ({args.distinct} a set; the server computes)",
        "concurrent": f"concurrent (max_concurrent_runs: {args.max_runs})",
        "serial": f"serial worker (max_concurrent_runs: 1), {len(serial_jobs)} jobs",
    }
    for label, found in passes.items():
        f = found["figures"]
        print(
            f"| {names[label]} | {f['runs']} | {f['requests']:,} | {f['seconds']:.1f} | {f['bound_s']:.1f} "
            f"| {f['requests_per_s']:.1f} | {f['ratio']:.1%} | {f['max_requests_in_flight']} | {f['max_runs_in_flight']} |"
        )
    print(
        f"\nthe serial worker for all {len(jobs)} jobs: {projected:.0f} s projected "
        f"(the concurrent fire: {concurrent['figures']['seconds']:.0f} s, "
        f"{projected / concurrent['figures']['seconds']:.1f}x faster); "
        f"{len(serial['predictions']) - len(disagree)} of {len(serial['predictions'])} serial runs predict the same"
    )
    report = {
        "format_version": REPORT_VERSION,
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "settings": {
            "adapters": len(jobs),
            "evalsets": args.evalsets,
            "items": args.items,
            "distinct": args.distinct,
            "concurrency": args.concurrency,
            "latency_ms": args.latency_ms,
            "chunk_size": args.chunk_size,
            "max_concurrent_runs": args.max_runs,
            "serial_jobs": len(serial_jobs),
            "quick": args.quick,
        },
        "bound_requests_per_s": bound_rps,
        "passes": {label: found["figures"] for label, found in passes.items()},
        "serial_runs_agreeing": len(serial["predictions"]) - len(disagree),
        "problems": problems,
    }
    Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    print(f"report: {args.report}")
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return EXIT_FAILED if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="A small check: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()),
    )
    parser.add_argument("--adapters", type=int, default=50)
    parser.add_argument("--evalsets", type=int, default=3, choices=[1, 2, 3])
    parser.add_argument("--items", type=int, default=400, help="Items per eval set.")
    parser.add_argument(
        "--distinct", type=int, default=10, help="Distinct tickets repeated over each eval set's items."
    )
    parser.add_argument("--concurrency", type=int, default=128, help="The endpoint's max_concurrency (C).")
    parser.add_argument(
        "--latency-ms", type=float, default=1000.0, help="Added to every inference request (L)."
    )
    parser.add_argument("--chunk-size", type=int, default=16, help="daemon.chunk_size (the default).")
    parser.add_argument(
        "--max-runs", type=int, default=16, help="daemon.max_concurrent_runs of the concurrent passes."
    )
    parser.add_argument(
        "--serial-jobs", type=int, default=4, help="Jobs the serial worker runs (its time is projected)."
    )
    parser.add_argument("--min-ratio", type=float, default=0.85)
    parser.add_argument("--timeout", type=float, default=1800.0, help="Seconds a pass may take.")
    parser.add_argument("--workdir", default=".cache/bench-fleet")
    parser.add_argument(
        "--report",
        default=None,
        help="JSON report (default benchmarks/fleet.json; --quick: fleet_quick.json).",
    )
    if parser.parse_known_args(argv)[0].quick:  # the small check's settings, where none is given
        parser.set_defaults(**QUICK)
    args = parser.parse_args(argv)
    if args.report is None:
        name = "fleet_quick.json" if args.quick else "fleet.json"
        args.report = str(Path(__file__).with_name(name) if not args.quick else Path(args.workdir) / name)
    args.serial_jobs = max(1, min(args.serial_jobs, args.adapters))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
