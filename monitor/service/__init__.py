"""The service: recorded runs, the daemon and what it does between runs.

===========  ==================================================================
runs         the model pool and recorded runs (load, evaluate, store)
plan         which runs a job asks for: configuration -> model specs and eval sets
after_job    after a run and after a job: analysis, drift, recommendations, events
schedule     (see :mod:`monitor.schedule`, the APScheduler door, kept at the bottom)
daemon       the scheduled daemon: lease, queue, worker, resume
app          assembles the daemon process: store, collectors, HTTP, webhooks, signals
releases/    base-model releases: watchers, the effective configuration, challengers
===========  ==================================================================
"""
