"""The monitor's exceptions.

Every error the monitor raises on purpose derives from :class:`MonitorError`;
anything else reaching the CLI is a bug and keeps its traceback::

    MonitorError
    ├── InputError                 bad user input, found before anything runs (exit code 2)
    │   ├── ConfigError            monitor.yaml: unknown keys, wrong types, missing ${ENV}
    │   └── EvalSetError           evalset.yaml / data.jsonl: syntax, ids, targets, prompt fields
    ├── ModelLoadError             a model or adapter cannot be loaded (exit code 3)
    │   └── AdapterMismatchError   the adapter does not fit its base (shapes, missing keys)
    ├── BackendError               inference failed inside a run (stored with the run)
    │   └── EndpointError          an OpenAI-compatible server refused or kept failing a request
    │       └── EndpointAuthError  the server refused the API key (401, 403): never retried
    ├── WatchError                 a release watcher cannot read its source (counted, retried)
    ├── StoreError                 the database is unreachable, cannot be written or migrated (exit code 4)
    │   └── DriverMissingError     the database URL needs a driver that is not installed (exit code 2)
    ├── LeaseHeldError             another daemon holds this database (exit code 5)
    │   └── LeaseLostError         a daemon's lease was taken over while it worked: it stops, fenced
    └── NotFoundError              an unknown job, model, eval set or run (exit code 2)

Input errors carry a list of :class:`Problem`, one per finding, each with the
place it was found (``file:line`` or a dotted config path), so that the CLI can
print one line per problem.  Third-party exceptions (transformers, peft,
SQLAlchemy, yaml) are converted where they enter our code with ``raise ... from``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One finding in user input: where it is and what is wrong."""

    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message


class MonitorError(Exception):
    """Base class of every error the monitor raises on purpose."""

    exit_code = 1


class InputError(MonitorError):
    """User input is invalid; carries one :class:`Problem` per finding."""

    exit_code = 2

    def __init__(self, problems: Iterable[Problem] | str, location: str = "") -> None:
        if isinstance(problems, str):
            problems = [Problem(location, problems)]
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ConfigError(InputError):
    """The monitor configuration is invalid."""


class EvalSetError(InputError):
    """An eval set directory is invalid."""


class ModelLoadError(MonitorError):
    """A model, tokenizer or adapter cannot be loaded."""

    exit_code = 3


class AdapterMismatchError(ModelLoadError):
    """A PEFT adapter does not fit its base model."""


class BackendError(MonitorError):
    """Inference failed."""


class EndpointError(BackendError):
    """An OpenAI-compatible server answered with an error, or kept failing past the retries."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        #: The last HTTP status (None: no answer, or an unusable one).
        self.status = status


class EndpointAuthError(EndpointError):
    """The server refused the API key (HTTP 401 or 403): retrying, or asking again for other items,
    cannot help.  The ``openai`` backend stops sending after a few in a row, and the runner stops
    the chunk instead of retrying it item by item."""


class StoreError(MonitorError):
    """The database cannot be reached, created or migrated."""

    exit_code = 4


class DriverMissingError(StoreError):
    """The database URL names a driver that is not installed (an install step, not a broken database)."""

    exit_code = 2


class LeaseHeldError(MonitorError):
    """Another daemon is running against the same database."""

    exit_code = 5


class LeaseLostError(LeaseHeldError):
    """The lease this daemon held was taken over (it was paused past its TTL): its writes are fenced off."""


class NotFoundError(MonitorError):
    """A named job, model, eval set or run does not exist."""

    exit_code = 2


class WatchError(MonitorError):
    """A release watcher could not list its directory, server or hub repository."""


def reason_of(exc: BaseException) -> str:
    """Why something failed, as stored and shown: the monitor's own errors say it in words; another
    exception (a bug, a library's) keeps its class name, which is then the clue."""
    text = str(exc)
    if isinstance(exc, MonitorError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
