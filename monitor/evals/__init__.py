"""Eval sets and their evaluation: the set format, scoring, the evaluation loop, per-item results.

============  =================================================================
evalset       ``evalset.yaml`` + ``data.jsonl``: load, validate, render prompts, few-shot samplers and draws
lmeval        lm-evaluation-harness task files read as eval sets (Jinja templates, splits, filters)
filters       extraction before scoring (lm-eval's ``filter_list``): regex, lowercase, strip, json_extract
scorers       the scorer protocol, the built-in scorers by name, custom ones from ``monitor.scorers``
text_metrics  exact match, JSON Schema, ROUGE-L, chrF, BLEU, embedding similarity (the kept packages)
embeddings    all-MiniLM-L6-v2 sentence embeddings (similarity scores, the ``similar`` sampler)
judge         LLM-as-judge: rubric, strict verdict parse, calibration file, the judge's fingerprint
scoring       per-item scores, repeated samples' reducers and aggregates with standard errors
loop          the pure evaluation loop over a backend (chunked, resumable, repeats and draws)
results       :class:`ItemResult`, per-item details, the results JSONL format, the draws' spread
============  =================================================================
"""
