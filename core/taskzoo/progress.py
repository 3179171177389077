"""Whether taskzoo shows progress bars and per-epoch lines: on for the command line and by
default in Python; ``taskzoo.train(..., progress=False)`` turns them off for notebooks and services."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_shown: contextvars.ContextVar[bool] = contextvars.ContextVar("taskzoo_progress", default=True)


def show() -> bool:
    """True when progress bars and epoch lines should be shown."""
    return _shown.get()


@contextlib.contextmanager
def shown(enabled: bool) -> Iterator[None]:
    """Show (or hide) progress inside the ``with`` block."""
    token = _shown.set(bool(enabled))
    try:
        yield
    finally:
        _shown.reset(token)
