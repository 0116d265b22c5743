"""Analysis of the history: baselines (and, next, regression, drift and recommendations)."""
