"""model-aging-monitor: watch fine-tuned language models age.

The public API is small on purpose: load an eval set, load a backend, evaluate,
and keep the history in a store.  The CLI (``monitor``) wires these together.
"""

from __future__ import annotations

from monitor._version import __version__
from monitor.errors import (
    AdapterMismatchError,
    BackendError,
    ConfigError,
    EvalSetError,
    InputError,
    ModelLoadError,
    MonitorError,
    NotFoundError,
    Problem,
    StoreError,
)
from monitor.evals.evalset import EvalItem, EvalSet, load_evalset

__all__ = [
    "AdapterMismatchError",
    "BackendError",
    "ConfigError",
    "EvalItem",
    "EvalSet",
    "EvalSetError",
    "InputError",
    "ModelLoadError",
    "MonitorError",
    "NotFoundError",
    "Problem",
    "StoreError",
    "__version__",
    "load_evalset",
]
