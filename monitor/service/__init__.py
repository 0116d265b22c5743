"""The service: recorded runs, the daemon and what it does between runs.

===========  ==================================================================
plan         which runs a job asks for: configuration -> model specs and eval sets
runs         the model pool (a context manager) and recorded runs (load, evaluate, store)
after_job    after a run and after a job: analysis, drift, recommendations, events
checks       what ``check-config`` finds beyond the schema (eval sets, paths, secrets)
daemon       the scheduled daemon: lease, queue, worker, resume
releases/    base-model releases: watchers, the effective configuration, challengers
===========  ==================================================================

The daemon *process* (store, collectors, HTTP server, webhook sender, signals) is
assembled one layer up, in :mod:`monitor.api.app`, because it serves the API.
"""
