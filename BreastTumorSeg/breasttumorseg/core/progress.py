"""Progress reporting and cancellation for long steps.

A long step takes ``progress: ProgressCallback | None`` and calls it with the name of
the current step and the fraction done (0..1). Cancellation goes the other way: the
callback raises :class:`~breasttumorseg.core.errors.Cancelled` (or a :class:`CancelToken`
that the step polls says so) and the step stops at its next check point without
leaving partial output.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

from .errors import Cancelled

#: ``progress(step_name, fraction_done)``; may raise :class:`Cancelled`.
ProgressCallback = Callable[[str, float], None]


class CancelToken:
    """A thread-safe flag that a long step polls between units of work."""

    def __init__(self):
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if :meth:`cancel` was called."""
        if self._event.is_set():
            raise Cancelled()


def report(progress: Optional[ProgressCallback], step: str, fraction: float,
           cancel: Optional[CancelToken] = None) -> None:
    """Call ``progress`` if given and honour ``cancel``; the one check point helper."""
    if cancel is not None:
        cancel.check()
    if progress is not None:
        progress(step, min(1.0, max(0.0, float(fraction))))


def scaled(progress: Optional[ProgressCallback], start: float, stop: float,
           prefix: str | None = None) -> Optional[ProgressCallback]:
    """A callback mapping a sub-step's 0..1 onto ``start..stop`` of the parent's progress."""
    if progress is None:
        return None

    def inner(step: str, fraction: float) -> None:
        progress(prefix or step, start + (stop - start) * fraction)

    return inner
