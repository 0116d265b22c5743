"""Database errors and URLs as one line for a message or a log."""

from __future__ import annotations


def describe_db_error(exc: BaseException) -> str:
    """One line for a database error: the driver's own message, without SQLAlchemy's SQL dump."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    return f"{type(orig).__name__}: {text}" if text else type(orig).__name__


def redact_url(url: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"
