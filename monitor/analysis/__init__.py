"""Analysis of the history, on plain data the store hands over.

==========  ===================================================================
stats       paired and unpaired tests, intervals, Holm, minimum detectable differences
baselines   pinned baseline files: the versioned format, pin, load, unpin
regression  comparability of two runs, verdicts against a baseline, confirmations
behaviour   agreement with the baseline, label and length drift, integrity and stack canaries
judge       a calibrated judge's agreement with people (accuracy, Cohen's kappa), the judge-drifted canary
label_free  label-free signals of a run (confidence, calibration) when there are no targets
drift/      production inputs against a reference (sources; Evidently behind one door)
costs       the cost case of each option of a fine-tune
recommend   the evidence and the pure ``decide()``: keep, rollback, retrain, rebase or retire
==========  ===================================================================
"""
