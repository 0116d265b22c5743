"""Eval sets and their evaluation: the set format, scoring, the evaluation loop, per-item results.

==========  ===================================================================
evalset     ``evalset.yaml`` + ``data.jsonl``: load, validate, render prompts
scoring     per-item scores and their aggregates with standard errors
loop        the pure evaluation loop over a backend (chunked, resumable)
results     :class:`ItemResult` and the results JSONL format
==========  ===================================================================
"""
