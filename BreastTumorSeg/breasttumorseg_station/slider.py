"""What a threshold-slider move costs the station, and how it is kept small.

A move re-thresholds the probability map (the Slicer logic's threshold index: only the
voxels that change are written into the segment), then every slice view renders, reads its
pixels back, encodes them as JPEG and streams them (trame-rca). What the station adds:

* **The latest move only.** A drag sends a burst of values; each is recorded and applied on
  the next turn of the event loop, so a burst that arrives together is applied (and rendered)
  once, at its last value.
* **Light frames while the views change.** Frames are encoded at JPEG quality
  :data:`MOVING_QUALITY` while the slider moves, and one frame at :data:`STILL_QUALITY` follows
  once the view has been still for five frame periods (trame-rca's still frame).
* **Measuring gives way.** Measurements wait until the slider rests, run in a child process at
  a lower CPU priority, and are stopped the moment the slider moves again (see
  :mod:`.measuring`), so measuring never holds a frame back.

``BREASTTUMORSEG_STATION_PLAIN_VIEWS=1`` turns all three off (trame-slicer's frame settings,
every value applied as it arrives, measuring on a worker thread): the station benchmark's
"before" (``Testing/benchmarks/bench_station.py``).
"""

from __future__ import annotations

import os
from typing import Callable

from trame.app import asynchronous

PLAIN_VIEWS = os.environ.get("BREASTTUMORSEG_STATION_PLAIN_VIEWS", "") not in ("", "0")
#: JPEG quality (1..100) of the frames streamed while a view changes, and of the frame at rest.
MOVING_QUALITY = 50 if PLAIN_VIEWS else 35
STILL_QUALITY = 90


def register_views(view_manager, server) -> None:
    """Slice views streamed as images (trame-rca), with this module's frame qualities."""
    # trame-slicer waits until a station is made: it loads the Slicer core
    from trame_slicer.rca_view import register_rca_factories

    register_rca_factories(view_manager, server, interactive_quality=MOVING_QUALITY)


class LatestOnly:
    """Calls ``apply(value)`` with the last value submitted since the previous call, on the
    next turn of the event loop (every value at once when :data:`PLAIN_VIEWS`)."""

    def __init__(self, apply: Callable):
        self._apply = apply
        self._pending = None
        self._scheduled = False

    def submit(self, value) -> None:
        if PLAIN_VIEWS:
            self._apply(value)
            return
        self._pending = value
        if not self._scheduled:
            self._scheduled = True
            asynchronous.create_task(self._run())

    async def _run(self) -> None:
        self._scheduled = False
        value, self._pending = self._pending, None
        self._apply(value)
