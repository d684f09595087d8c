"""The reading timer: wall time and active time of one case, in seconds.

* **Wall time** runs from the moment the case is opened until it is submitted, explicit
  pauses and idle spells included; time while the case is not open (Slicer closed or
  killed) is not counted.
* **Active time** runs only while the reader works: not during an explicit pause, and not
  while the reader is idle. The reader is idle once ``idle_after_s`` have passed without
  input (mouse, keyboard, segment edit); the idle spell is then taken to have begun at the
  last input, so none of it counts, and it ends with the next input.

Times come from ``clock`` (seconds, monotonic; :func:`time.monotonic` by default), which tests
replace with a controllable one. A resumed reading starts from the wall and active seconds it
had when it was last journaled.
"""

from __future__ import annotations

import time
from typing import Callable


class ReadingTimer:
    """Wall and active seconds of one reading (see the module docstring)."""

    def __init__(self, idle_after_s: float, *, clock: Callable[[], float] = time.monotonic,
                 wall_s: float = 0.0, active_s: float = 0.0):
        if idle_after_s <= 0:
            raise ValueError("idle_after_s must be positive")
        self.idle_after_s = float(idle_after_s)
        self._clock = clock
        self._wall_before = float(wall_s)      # wall seconds of earlier sittings and closed spans
        self._active_before = float(active_s)  # active seconds up to the start of the current span
        self._opened_at: float | None = None   # clock time this sitting began; None when stopped
        self._span_start = 0.0                 # clock time the current active span began
        self._last_input = 0.0
        self.paused = False

    # --- state ----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._opened_at is not None

    def now(self) -> float:
        return self._clock()

    def idle(self, now: float | None = None) -> bool:
        """Whether the reader counts as idle at ``now`` (never while paused or stopped)."""
        now = self.now() if now is None else now
        return self.running and not self.paused and now - self._last_input > self.idle_after_s

    def wall_s(self, now: float | None = None) -> float:
        if not self.running:
            return self._wall_before
        return self._wall_before + ((self.now() if now is None else now) - self._opened_at)

    def active_s(self, now: float | None = None) -> float:
        if not self.running or self.paused:
            return self._active_before
        now = self.now() if now is None else now
        end = self._last_input if self.idle(now) else now
        return self._active_before + max(0.0, end - self._span_start)

    # --- transitions ------------------------------------------------------------------
    def start(self) -> None:
        """Open the case (first time or after a restart): both clocks run."""
        now = self.now()
        self._opened_at = now
        self._span_start = self._last_input = now
        self.paused = False

    def input(self) -> bool:
        """The reader did something; returns True when this ended an idle spell."""
        now = self.now()
        was_idle = self.idle(now)
        if self.running and not self.paused and was_idle:
            self._active_before = self.active_s(now)  # closes the span at the last input
            self._span_start = now
        self._last_input = now
        return was_idle

    def pause(self) -> None:
        """Explicit pause: active time stops now (or at the last input when already idle)."""
        if not self.running or self.paused:
            return
        self._active_before = self.active_s()
        self.paused = True

    def resume(self) -> None:
        if not self.running or not self.paused:
            return
        now = self.now()
        self.paused = False
        self._span_start = self._last_input = now

    def stop(self) -> tuple[float, float]:
        """Close the sitting; returns (wall_s, active_s), which stay fixed until :meth:`start`."""
        if self.running:
            now = self.now()
            active, wall = self.active_s(now), self.wall_s(now)
            self._active_before, self._wall_before = active, wall
            self._opened_at = None
            self.paused = False
        return self._wall_before, self._active_before
