"""The daemon's HTTP surface: ``/metrics``, ``/healthz``, ``/readyz`` and the JSON API (``server``),
and the JSON views of runs and status shared with the CLI (``views``)."""
