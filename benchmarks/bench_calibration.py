"""Calibration of the regression decision: false alarms and detection power by simulation.

One "model" is replayed many times.  Each replication samples ``n`` items from a
fixed, seeded pool of items and draws a baseline run and a current run of them:

* **pass/fail** metric: item ``i`` passes with probability ``p_i`` in the
  baseline run and ``q_i = p_i * (1 - change / mean(p))`` in the current run,
  independently; ``p`` is U-shaped (Beta(0.7, 0.3)), as a real model passes most
  items nearly always and some nearly never.  Tested with McNemar's exact test
  (Tango interval), the paired bootstrap (sign-flip p-value, BCa interval) and,
  for comparison, the unpaired two-proportion z-test that ignores the pairing;
* **graded** metric (a score in [0, 1] such as token F1): item ``i`` has a
  quality ``m_i`` ~ Beta(2, 1.2) and scores ~ Beta(10 m_i, 10 (1 - m_i)) in the
  baseline run, with ``m_i`` scaled down the same way in the current run.  Tested
  with the paired bootstrap and, for comparison, Welch's t-test.

``change`` is the true drop of the population mean in points (0, 2, 5, 10, 20):
0 measures false alarms, the rest detection power.  A regression is declared by
``monitor.analysis.stats.regression_decision`` (``delta < -tolerance``, ``p < alpha``,
interval entirely below 0).  Each (metric, size, change) cell has its own seed,
derived from ``--seed``, so results do not depend on the number of workers.

**A year of nightly looks** (``--part year``): the monitor compares one pinned
baseline with a new run every night.  An unchanged model is run 365 nights with
sampled decoding: item ``i`` passes each night, independently, with probability
``p_i`` ~ Beta(0.35, 0.15) (mean 0.70; two runs disagree on 14% of the items),
the baseline run included.  The golden set is refreshed every ``--refresh-days``
(182): ``--year-items`` (500) new items drawn from the pool, a new baseline pinned
on the first run of the new set, and the looks counted again from 1.  Each night
is judged by the monitor's own rule, ``monitor.analysis.regression.decide_look``
on ``mcnemar_exact`` (tolerance 0.02, alpha 0.05, two confirmations), spending
``alpha`` over the looks at each baseline (``look_alpha``) and, for comparison,
testing every look at ``alpha`` (the rule before).  Reported: the share of the
``--years`` (200) simulated years with any false alarm, and, for true drops of
2, 5 and 10 points starting on a given night, the nights until the regression
is confirmed.

Usage::

    python benchmarks/bench_calibration.py                 # about 35 s on 2 idle cores
    python benchmarks/bench_calibration.py --replications 4000 --workers 4
    python benchmarks/bench_calibration.py --part year     # the year only, about 30 s
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import scipy
from scipy import stats as sps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitor.analysis.regression import RegressionPolicy, decide_look
from monitor.analysis.stats import (
    TestResult,
    look_alpha,
    mcnemar_exact,
    minimum_detectable_difference,
    paired_bootstrap,
    regression_decision,
    unpaired_means,
    unpaired_proportions,
)

REPORT_VERSION = 2
SIZES = (50, 100, 200, 500, 1000)
CHANGES_POINTS = (0, 2, 5, 10, 20)
POOL_SIZE = 20_000
PASS_FAIL_BETA = (0.7, 0.3)
QUALITY_BETA = (2.0, 1.2)
SCORE_CONCENTRATION = 10.0

# (metric kind, test name, label): the order of the printed tables.
TESTS = (
    ("pass_fail", "mcnemar_exact", "McNemar exact, Tango score interval"),
    ("pass_fail", "paired_bootstrap", "paired bootstrap: sign-flip p-value, BCa interval"),
    ("pass_fail", "unpaired_proportions", "two-proportion z-test, Newcombe interval (pairing ignored)"),
    ("graded", "paired_bootstrap", "paired bootstrap: sign-flip p-value, BCa interval"),
    ("graded", "unpaired_means", "Welch t-test (pairing ignored)"),
)
KINDS = {"pass_fail": 0, "graded": 1}


def item_pool(kind: str, seed: int) -> np.ndarray:
    """The fixed pool items are sampled from: pass probabilities or qualities."""
    a, b = PASS_FAIL_BETA if kind == "pass_fail" else QUALITY_BETA
    return np.random.default_rng([seed, KINDS[kind]]).beta(a, b, size=POOL_SIZE)


def draw_runs(
    kind: str, pool: np.ndarray, rng: np.random.Generator, n: int, change: float
) -> tuple[np.ndarray, np.ndarray]:
    """One baseline and one current run on ``n`` items sampled from the pool."""
    base = rng.choice(pool, size=n)
    lowered = base * (1.0 - change / pool.mean())
    if kind == "pass_fail":
        return rng.random(n) < base, rng.random(n) < lowered
    k = SCORE_CONCENTRATION
    baseline = rng.beta(k * base + 0.01, k * (1.0 - base) + 0.01)
    current = rng.beta(k * lowered + 0.01, k * (1.0 - lowered) + 0.01)
    return baseline, current


def run_cell(task: dict[str, Any]) -> dict[str, Any]:
    """All replications of one (metric kind, eval set size, change) cell, for every test of that kind."""
    kind, n, points = task["kind"], task["n"], task["points"]
    change = points / 100.0
    pool = item_pool(kind, task["seed"])
    rng = np.random.default_rng([task["seed"], KINDS[kind], n, points])
    tests: dict[str, Callable[[np.ndarray, np.ndarray, int], TestResult]] = {}
    if kind == "pass_fail":
        tests["mcnemar_exact"] = lambda b, c, i: mcnemar_exact(b, c, alpha=task["alpha"])
        tests["unpaired_proportions"] = lambda b, c, i: unpaired_proportions(b, c, alpha=task["alpha"])
    else:
        tests["unpaired_means"] = lambda b, c, i: unpaired_means(b, c, alpha=task["alpha"])
    tests["paired_bootstrap"] = lambda b, c, i: paired_bootstrap(
        b, c, alpha=task["alpha"], n_resamples=task["resamples"], seed=i
    )
    tally = {name: np.zeros(5) for name in tests}  # alarms, rejections, covered, width, delta
    replications = task["replications"]
    started = time.perf_counter()
    for i in range(replications):
        baseline, current = draw_runs(kind, pool, rng, n, change)
        for name, test in tests.items():
            result = test(baseline, current, i)
            declared = regression_decision(result, tolerance=task["tolerance"], alpha=task["alpha"])
            covered = result.ci_low <= -change <= result.ci_high
            width = result.ci_high - result.ci_low
            tally[name] += (declared, result.p_value < task["alpha"], covered, width, result.delta)
    seconds = time.perf_counter() - started
    cells = {}
    for name, (alarms, rejections, covered, width, delta) in tally.items():
        cells[name] = {
            "alarm_rate": alarms / replications,
            "reject_rate": rejections / replications,
            "ci_coverage": covered / replications,
            "mean_ci_width": width / replications,
            "mean_delta": delta / replications,
        }
    return {"kind": kind, "n": n, "points": points, "seconds": seconds, "tests": cells}


def pool_summary(kind: str, seed: int) -> dict[str, float]:
    pool = item_pool(kind, seed)
    if kind == "pass_fail":
        # Share of items two runs of the unchanged model disagree on.
        return {"mean": float(pool.mean()), "discordance": float(2 * np.mean(pool * (1 - pool)))}
    # Standard deviations of a per-item difference between two runs of the unchanged model, and of
    # one score (across items and runs).
    within = pool * (1 - pool) / (SCORE_CONCENTRATION + 1)
    return {
        "mean": float(pool.mean()),
        "sd_difference": float(math.sqrt(2 * np.mean(within))),
        "sd_score": float(math.sqrt(np.var(pool) + np.mean(within))),
    }


def detectable(test: str, summary: dict[str, float], n: int, alpha: float) -> float:
    """The drop :func:`minimum_detectable_difference` predicts is detected with 80% power."""
    if test in ("mcnemar_exact", "paired_bootstrap") and "discordance" in summary:
        return minimum_detectable_difference(
            n, baseline_rate=summary["mean"], discordance=summary["discordance"], alpha=alpha
        )
    if test == "unpaired_proportions":
        return minimum_detectable_difference(n, baseline_rate=summary["mean"], paired=False, alpha=alpha)
    if test == "paired_bootstrap":
        return minimum_detectable_difference(n, sd=summary["sd_difference"], alpha=alpha)
    return minimum_detectable_difference(n, sd=summary["sd_score"], paired=False, alpha=alpha)


def print_table(
    label: str,
    kind: str,
    name: str,
    results: dict[tuple[str, int, int], dict[str, Any]],
    mdd: dict[int, float],
) -> None:
    print(f"\n{label}")
    header = " items | " + " | ".join(f"{p:>4d} pt" for p in CHANGES_POINTS) + " | MDD 80% | CI coverage"
    print(header)
    print("-" * len(header))
    for n in SIZES:
        cells = [results[(kind, n, p)]["tests"][name] for p in CHANGES_POINTS]
        rates = " | ".join(f"{100 * cell['alarm_rate']:6.1f}%" for cell in cells)
        coverage = [cell["ci_coverage"] for cell in cells]
        print(
            f" {n:5d} | {rates} | {100 * mdd[n]:5.1f} pt | "
            f"{100 * min(coverage):4.1f}-{100 * max(coverage):4.1f}%"
        )


# --- a year of nightly looks ---------------------------------------------------------------------

YEAR_BETA = (0.35, 0.15)
YEAR_DROPS_POINTS = (2, 5, 10)
YEAR_ONSETS = (8, 120)


def year_schedule(days: int, refresh_days: int) -> list[int]:
    """For each night 1..days, its look at the current baseline (0: a refresh night, the new baseline's run)."""
    return [0 if night % refresh_days == 0 else night % refresh_days for night in range(1, days + 1)]


def simulate_years(
    *,
    years: int,
    items: int,
    days: int = 365,
    refresh_days: int = 91,
    drop_points: float = 0.0,
    onset: int = 1,
    policy: RegressionPolicy | None = None,
    seed: int = 0,
    beta: tuple[float, float] = YEAR_BETA,
    copies: int = 1,
    count_copies_once: bool = True,
) -> np.ndarray:
    """The night each simulated year first confirms a regression (0: never), by the monitor's own rule.

    ``copies`` > 1 repeats every item that many times in the golden set with the same outcome in a
    run (duplicated prompts answered alike): the items are then not independent.  With
    ``count_copies_once`` the copies count once, as ``monitor.analysis.regression.collapse_duplicates``
    makes them (their mean, here the shared outcome), else as separate items (the rule before).

    Night 0 pins the first baseline.  On a refresh night the golden set is redrawn and the night's
    run becomes the new baseline (no look).  From night ``onset`` on, every item's pass probability
    is scaled down so that the pool's mean drops by ``drop_points``.  ``decide_look`` is called on
    every look whose exact McNemar p-value and drop could be significant (a necessary condition,
    checked for all years at once); every other look is not significant, as ``decide_look`` would find.
    """
    policy = policy or RegressionPolicy()
    if count_copies_once:
        copies = 1  # each group of copies is one unit with the copies' shared outcome
    rng = np.random.default_rng(seed)
    pool = rng.beta(*beta, size=POOL_SIZE)
    scale = 1.0 - drop_points / 100.0 / pool.mean()
    probs = rng.choice(pool, size=(years, items))
    baseline = np.repeat(rng.random((years, items)) < probs, copies, axis=1)
    consecutive = np.zeros(years, dtype=np.int64)
    confirmed = np.zeros(years, dtype=np.int64)
    for night, look in enumerate(year_schedule(days, refresh_days), start=1):
        dropped = night >= onset and drop_points > 0
        if look == 0:
            probs = rng.choice(pool, size=(years, items))
            baseline = np.repeat(
                rng.random((years, items)) < (probs * scale if dropped else probs), copies, axis=1
            )
            continue
        current = np.repeat(
            rng.random((years, items)) < (probs * scale if dropped else probs), copies, axis=1
        )
        b = np.count_nonzero(baseline & ~current, axis=1)
        c = np.count_nonzero(~baseline & current, axis=1)
        level = look_alpha(policy.alpha, look) if policy.sequential else policy.alpha
        p_values = np.minimum(1.0, 2.0 * sps.binom.cdf(np.minimum(b, c), b + c, 0.5))
        p_values[b + c == 0] = 1.0
        possible = (p_values < level) & ((c - b) / (items * copies) < -policy.tolerance) & (confirmed == 0)
        significant = np.zeros(years, dtype=bool)
        for year in np.flatnonzero(possible):
            result = mcnemar_exact(baseline[year], current[year], alpha=policy.alpha)
            decision = decide_look(
                result,
                adjusted_p=result.p_value,
                mode="paired",
                look=look,
                previous_consecutive=int(consecutive[year]),
                policy=policy,
            )
            significant[year] = decision.significant
            if decision.state == "regressed":
                confirmed[year] = night
        consecutive = np.where(significant, consecutive + 1, 0)
        if np.all(confirmed > 0):
            break
    return confirmed


def run_year(args: argparse.Namespace) -> dict[str, Any]:
    """False alarms over a year on an unchanged model, and nights to confirm drops, for both rules."""
    started = time.perf_counter()
    rules = {
        "spent": RegressionPolicy(tolerance=args.year_tolerance, alpha=args.alpha, sequential=True),
        "every_look_at_alpha": RegressionPolicy(
            tolerance=args.year_tolerance, alpha=args.alpha, sequential=False
        ),
    }
    beta = (float(args.year_beta[0]), float(args.year_beta[1]))
    pool = np.random.default_rng(args.seed).beta(*beta, size=POOL_SIZE)
    out: dict[str, Any] = {
        "settings": {
            "years": args.years,
            "items": args.year_items,
            "nights": 365,
            "refresh_days": args.refresh_days,
            "pass_probability_beta": list(beta),
            "pool_mean": float(pool.mean()),
            "run_to_run_discordance": float(2 * np.mean(pool * (1 - pool))),
            "tolerance": args.year_tolerance,
            "alpha": args.alpha,
            "confirmations": rules["spent"].confirmations,
            "onsets": list(YEAR_ONSETS),
        },
        "rules": {},
    }
    for index, (name, policy) in enumerate(rules.items()):
        confirmed = simulate_years(
            years=args.years,
            items=args.year_items,
            refresh_days=args.refresh_days,
            policy=policy,
            seed=args.seed + 1000 * index,
            beta=beta,
        )
        alarms = int(np.count_nonzero(confirmed))
        rule: dict[str, Any] = {
            "false_alarm_years": alarms / args.years,
            "false_alarm_se": math.sqrt(max(alarms, 1) * (args.years - alarms) / args.years**3),
            "detect": {},
        }
        for drop in YEAR_DROPS_POINTS:
            for onset in YEAR_ONSETS:
                nights = simulate_years(
                    years=args.years,
                    items=args.year_items,
                    refresh_days=args.refresh_days,
                    drop_points=drop,
                    onset=onset,
                    policy=policy,
                    seed=args.seed + 1000 * index + 10 * drop + onset,
                    beta=beta,
                )
                caught = nights[nights >= onset] - onset + 1
                rule["detect"][f"{drop}pt@{onset}"] = {
                    "drop_points": drop,
                    "onset_night": onset,
                    "look_at_onset": year_schedule(365, args.refresh_days)[onset - 1],
                    "detected_share": caught.size / args.years,
                    "median_nights": float(np.median(caught)) if caught.size else None,
                    "p90_nights": float(np.quantile(caught, 0.9)) if caught.size else None,
                }
        out["rules"][name] = rule
    # A golden set of 125 prompts, each there 4 times and answered alike: 500 items, 125 observations.
    duplicated: dict[str, Any] = {"unique_items": args.year_items // 4, "copies": 4}
    for label, once in (("copies_counted_once", True), ("copies_counted_as_items", False)):
        confirmed = simulate_years(
            years=args.years,
            items=args.year_items // 4,
            refresh_days=args.refresh_days,
            policy=rules["spent"],
            seed=args.seed + 7,
            beta=beta,
            copies=4,
            count_copies_once=once,
        )
        duplicated[label] = float(np.count_nonzero(confirmed)) / args.years
    out["duplicated"] = duplicated
    out["elapsed_s"] = round(time.perf_counter() - started, 2)
    return out


def print_year(year: dict[str, Any]) -> None:
    cfg = year["settings"]
    print(
        f"\n== a year of nightly looks: {cfg['years']} simulated years of {cfg['nights']} nights, "
        f"{cfg['items']} items, golden set refreshed (and the baseline re-pinned) every "
        f"{cfg['refresh_days']} days; sampled decoding, two runs disagree on "
        f"{100 * cfg['run_to_run_discordance']:.0f}% of items; tolerance {cfg['tolerance']:g}, "
        f"alpha {cfg['alpha']:g}, {cfg['confirmations']} confirmations"
    )
    for name, rule in year["rules"].items():
        label = "alpha spent over looks" if name == "spent" else "every look at alpha (before)"
        print(
            f"\n{label}: years with a false alarm {100 * rule['false_alarm_years']:.1f}% "
            f"(s.e. {100 * rule['false_alarm_se']:.1f} pt)"
        )
        print(" drop | onset night (look) | confirmed within the year | median nights | 90% within")
        for cell in rule["detect"].values():
            median = "-" if cell["median_nights"] is None else f"{cell['median_nights']:.0f}"
            p90 = "-" if cell["p90_nights"] is None else f"{cell['p90_nights']:.0f}"
            print(
                f" {cell['drop_points']:3d} pt | {cell['onset_night']:4d} ({cell['look_at_onset']:3d})"
                f"         | {100 * cell['detected_share']:5.1f}%                    | {median:>6s}"
                f"        | {p90:>5s}"
            )
    dup = year["duplicated"]
    print(
        f"\nduplicated golden set ({dup['unique_items']} prompts x {dup['copies']}, answered alike), alpha spent: "
        f"years with a false alarm {100 * dup['copies_counted_once']:.1f}% with copies counted once (now), "
        f"{100 * dup['copies_counted_as_items']:.1f}% with copies counted as items"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replications", type=int, default=1000, help="replications per pass/fail cell")
    parser.add_argument("--graded-replications", type=int, default=200, help="replications per graded cell")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap and sign-flip resamples")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--tolerance", type=float, default=0.0, help="drop tolerated before an alarm")
    parser.add_argument("--seed", type=int, default=20240521)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--report", type=Path, default=Path(__file__).with_name("calibration.json"))
    parser.add_argument("--part", choices=("all", "cells", "year"), default="all", help="what to simulate")
    parser.add_argument("--years", type=int, default=200, help="simulated years of nightly looks")
    parser.add_argument("--year-items", type=int, default=500, help="items of the golden set in the year")
    parser.add_argument("--refresh-days", type=int, default=182, help="golden set refreshed every N nights")
    parser.add_argument("--year-tolerance", type=float, default=0.02, help="the tolerance in the year")
    parser.add_argument(
        "--year-beta",
        type=float,
        nargs=2,
        default=YEAR_BETA,
        metavar=("A", "B"),
        help="pass probabilities ~ Beta(A, B) in the year (0.02 0.01: runs disagree on 1.3%% of items)",
    )
    args = parser.parse_args(argv)
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
    }
    if args.part in ("all", "cells"):
        report.update(run_cells(args))
    if args.part in ("all", "year"):
        report["year"] = run_year(args)
        print_year(report["year"])
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.report}")
    return 0


def run_cells(args: argparse.Namespace) -> dict[str, Any]:
    """Every (metric, size, change) cell: printed, and returned for the report."""

    settings = {
        "seed": args.seed,
        "alpha": args.alpha,
        "tolerance": args.tolerance,
        "replications": {"pass_fail": args.replications, "graded": args.graded_replications},
        "resamples": args.resamples,
        "sizes": list(SIZES),
        "changes_points": list(CHANGES_POINTS),
        "pool_size": POOL_SIZE,
        "pass_fail_pass_probability_beta": list(PASS_FAIL_BETA),
        "graded_quality_beta": list(QUALITY_BETA),
        "graded_score_concentration": SCORE_CONCENTRATION,
    }
    tasks = [
        {
            "kind": kind,
            "n": n,
            "points": points,
            "seed": args.seed,
            "alpha": args.alpha,
            "tolerance": args.tolerance,
            "resamples": args.resamples,
            "replications": args.replications if kind == "pass_fail" else args.graded_replications,
        }
        for kind in KINDS
        for n in reversed(SIZES)  # the slowest first, for an even spread over the workers
        for points in CHANGES_POINTS
    ]
    started = time.perf_counter()
    if args.workers > 1:
        with multiprocessing.get_context("fork").Pool(args.workers) as pool:
            outcomes = pool.map(run_cell, tasks, chunksize=1)
    else:
        outcomes = [run_cell(task) for task in tasks]
    elapsed = time.perf_counter() - started
    results = {(o["kind"], o["n"], o["points"]): o for o in outcomes}

    summaries = {kind: pool_summary(kind, args.seed) for kind in KINDS}
    mdd = {
        f"{kind}/{name}": {n: detectable(name, summaries[kind], n, args.alpha) for n in SIZES}
        for kind, name, _ in TESTS
    }
    print(
        f"Regression decision: delta < -{args.tolerance:g}, p < {args.alpha:g}, interval below 0 "
        f"(two-sided tests, {100 * (1 - args.alpha):g}% intervals).  Seed {args.seed}, "
        f"{args.resamples} resamples for the bootstrap and the sign-flip test."
    )
    print("Cells: share of replications declaring a regression; the 0 pt column is the false-alarm rate.")
    print("MDD 80%: minimum_detectable_difference at 80% power; CI coverage: range over the row's cells.")
    for kind in KINDS:
        summary = summaries[kind]
        reps = settings["replications"][kind]  # type: ignore[index]
        se = math.sqrt(args.alpha * (1 - args.alpha) / reps)
        if kind == "pass_fail":
            print(
                f"\n== pass/fail metric: pass probabilities ~ Beta{PASS_FAIL_BETA}, mean {summary['mean']:.3f}, "
                f"no-change discordance {summary['discordance']:.3f}; {reps} replications per cell "
                f"(s.e. of a {100 * args.alpha:g}% rate: {100 * se:.1f} pt)"
            )
        else:
            print(
                f"\n== graded metric: qualities ~ Beta{QUALITY_BETA}, mean {summary['mean']:.3f}, sd of a "
                f"no-change difference {summary['sd_difference']:.3f}; {reps} replications per cell "
                f"(s.e. of a {100 * args.alpha:g}% rate: {100 * se:.1f} pt)"
            )
        for test_kind, name, label in TESTS:
            if test_kind == kind:
                print_table(label, kind, name, results, mdd[f"{kind}/{name}"])
    print(f"\n{len(tasks)} cells in {elapsed:.1f} s on {args.workers} worker(s)")

    return {
        "settings": settings,
        "pools": summaries,
        "minimum_detectable_difference": {
            key: {str(n): v for n, v in by_n.items()} for key, by_n in mdd.items()
        },
        "cells": [
            {
                "kind": kind,
                "test": name,
                "n": n,
                "change_points": points,
                **results[(kind, n, points)]["tests"][name],
            }
            for kind, name, _ in TESTS
            for n in SIZES
            for points in CHANGES_POINTS
        ],
        "cell_seconds": {f"{o['kind']}/{o['n']}/{o['points']}": round(o["seconds"], 3) for o in outcomes},
        "elapsed_s": round(elapsed, 2),
        "workers": args.workers,
    }


if __name__ == "__main__":
    raise SystemExit(main())
