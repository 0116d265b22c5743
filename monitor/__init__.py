"""model-aging-monitor: watch fine-tuned language models age.

The public API is small on purpose: load an eval set, load a backend, evaluate,
and keep the history in a store.  The CLI (``monitor``) wires these together.
"""

from __future__ import annotations

import os

# torch's OpenMP threads spin while they wait for work; beside any other busy process on a small
# machine that turned a 2-minute model build into 16 minutes.  Set before torch is first imported
# (every import of torch in the monitor comes after this package's); the user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
