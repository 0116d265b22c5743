"""Verdicts: ``monitor regressions`` and ``monitor recommend``."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated

import typer

from monitor.api.views import clean
from monitor.cli.options import DEFAULT_CONFIG, ConfigOption, DbOption, load_config_file, store_for
from monitor.cli.output import (
    WideOption,
    err,
    handle_errors,
    print_table,
)
from monitor.errors import InputError, NotFoundError


@handle_errors
def regressions_command(
    model: Annotated[str | None, typer.Argument(help="Only this model.")] = None,
    config: ConfigOption = Path(DEFAULT_CONFIG),
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    wide: WideOption = False,
) -> None:
    """The newest verdict against the baseline per model, eval set, strategy and metric."""
    from monitor.analysis.regression import latest_verdicts
    from monitor.service.after_job import latest_findings

    with store_for(config, db) as store:
        model_id = store.get_model(model).id if model else None
        verdicts = latest_verdicts(store, model_id)
        names = {v.model_id: store.model_name(v.model_id) for v in verdicts}
        findings = [(f, n) for f, n in latest_findings(store) if model is None or n == model]
    rows = [
        clean(
            {
                "model": names[v.model_id],
                "evalset": v.evalset_name,
                "strategy": v.strategy,
                "metric": v.metric,
                "state": v.state,
                "mode": v.mode,
                "delta": v.delta,
                "ci_low": v.ci_low,
                "ci_high": v.ci_high,
                "p_value": v.p_value,
                "adjusted_p": v.adjusted_p,
                "min_detectable": v.min_detectable,
                "consecutive": v.consecutive,
                "run": v.run_id,
                "baseline_run": v.baseline_run_id,
                "reason": v.reason,
            }
        )
        for v in sorted(verdicts, key=lambda v: (names[v.model_id], v.evalset_name, v.strategy, v.metric))
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows and not findings:
        print("no verdicts yet: pin a baseline (monitor baseline pin MODEL EVALSET) and run again")
        return

    def num(x: float | None, fmt: str = "+.3f") -> str:
        return "-" if x is None else format(x, fmt)

    print_table(
        "regression verdicts",
        [
            "model",
            "evalset",
            "strategy",
            "metric",
            "state",
            "delta",
            "95% CI",
            "adj. p",
            "MDD",
            "runs",
            "note",
        ],
        [
            [
                r["model"],
                r["evalset"],
                r["strategy"],
                r["metric"],
                r["state"],
                num(r["delta"]),
                f"[{num(r['ci_low'])}, {num(r['ci_high'])}]",
                num(r["adjusted_p"], ".2g"),
                num(r["min_detectable"], ".3f"),
                str(r["consecutive"]),
                r["reason"] or "",
            ]
            for r in rows
        ],
        wide=wide,
    )
    if findings:
        print_table(
            "behaviour and integrity",
            ["model", "kind", "source", "state", "score", "p", "reason"],
            [
                [
                    n,
                    f.kind,
                    f.source,
                    f.state,
                    num(f.score, ".3f"),
                    num(f.p_value, ".2g"),
                    f.reason or "",
                ]
                for f, n in findings
            ],
            wide=wide,
        )


@handle_errors
def recommend_command(
    finetune: Annotated[str | None, typer.Argument(help="One configured fine-tune (default: all).")] = None,
    config: ConfigOption = Path(DEFAULT_CONFIG),
    memo: Annotated[
        Path | None, typer.Option(help="Write a one-page Markdown memo here (a folder for several).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    wide: WideOption = False,
) -> None:
    """Keep, roll back, re-train, re-base or retire each fine-tune, with the evidence and the cost case
    (and records the decision)."""
    from monitor.analysis.recommend import assess_finetune, record_recommendation
    from monitor.service.releases.effective import effective_config
    from monitor.store import Store, utcnow

    cfg = load_config_file(config)
    names = [finetune] if finetune else list(cfg.finetunes)
    unknown = [n for n in names if n not in cfg.finetunes]
    if unknown or not names:
        raise NotFoundError(
            f"unknown fine-tune {', '.join(unknown)}"
            if unknown
            else "no fine-tunes configured (finetunes: in the config)"
        )
    if memo is not None:
        folder = memo if (memo.is_dir() or len(names) > 1) else memo.parent
        if not folder.is_dir():
            raise InputError(f"--memo {memo}: folder {folder} does not exist")
    with Store.open(cfg.database_url(), create=False) as store:
        out = []
        cfg = effective_config(cfg, store.releases())
        for name in names:
            found = assess_finetune(store, cfg, name)
            decision, evidence, case = found.decision, found.evidence, found.costs
            record = None
            with contextlib.suppress(NotFoundError):  # never evaluated: nothing to record yet
                record = record_recommendation(
                    store, cfg.finetunes[name].model, decision, evidence, case.to_dict() if case else None
                )
            out.append((name, decision, evidence, record, case))
            if memo is not None:
                path = memo / f"{name}.md" if (memo.is_dir() or len(names) > 1) else memo
                path.write_text(found.memo(when=utcnow().strftime("%Y-%m-%d %H:%M UTC")))
                err(f"memo written to {path}")
    if as_json:
        print(
            json.dumps(
                [
                    clean(
                        {
                            "finetune": n,
                            "action": d.action,
                            "reasons": list(d.reasons),
                            "release": d.release,
                            "strategy": d.strategy,
                            "changed": r.changed if r else None,
                            "evidence": e.to_dict(),
                            "costs": c.to_dict() if c else None,
                        }
                    )
                    for n, d, e, r, c in out
                ],
                indent=2,
            )
        )
        return
    print_table(
        "recommendations",
        ["fine-tune", "action", "changed", "why"],
        [
            [n, d.action, "-" if r is None else ("yes" if r.changed else "no"), d.reasons[0]]
            for n, d, _, r, _ in out
        ],
        wide=wide,
    )
    for n, _, _, _, c in out:
        if c is not None:
            print(f"{n}: " + " ".join(c.sentences))
