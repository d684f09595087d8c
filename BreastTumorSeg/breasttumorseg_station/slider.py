"""What a threshold-slider move costs the station, and how it is kept small.

A move re-thresholds the probability map (the Slicer logic's threshold index: only the
voxels that change are written into the segment), then every slice view renders, reads its
pixels back, encodes them as JPEG and streams them (trame-rca). What the station adds:

* **A lone move at once, the latest move of a drag only.** A move with none in the 0.1 s before
  it is applied as it arrives. A drag sends a burst of values; each after the first is recorded and
  applied on the next turn of the event loop, so a burst that arrives together is applied (and
  rendered) once, at its last value.
* **Light frames while the views change.** Frames are encoded at JPEG quality
  :data:`MOVING_QUALITY` while the slider moves, and one frame at :data:`STILL_QUALITY` follows
  once the view has been still for five frame periods (trame-rca's still frame).
* **Each view's frame leaves before the next view renders** (:class:`OneViewAtATime`). trame-rca
  renders every view that changed on the same turn of the event loop and sends their frames
  after the last render: a move showed the axial view only once all three views had rendered.
  Here the views take turns: one renders, encodes its frame (a few ms, on the event loop) and
  hands it to the websocket, then the next view renders.
* **The still frame is not rendered again.** It re-encodes the pixels of the view's last frame
  (nothing asked for a render since), where trame-rca renders and reads back the view a second time.
* **No full garbage collection during a move.** Once a result is shown, the objects alive then
  are collected once and left out of later collections (:func:`settle_heap`): a full collection
  of the station's heap took 0.1-0.4 s on the event loop and could fall on any move.
* **No multisampling.** The slice views are textured images; 4 x multisampling (VTK's default)
  made a software-rendered (Mesa llvmpipe) 764 x 503 slice view 2-3 x slower to render and
  smoothed only the edges of the outline and crosshair lines.
* **Measuring gives way.** Measurements wait until the slider rests, run in a child process at
  idle CPU priority, and are stopped the moment the slider moves again (see
  :mod:`.measuring`), so measuring never holds a frame back.
* **A move does only what its frame needs** (:class:`.case_control.CaseControl`): the Slicer logic
  writes the changed voxels without building a grid-size mask nobody reads (``returnMask=False``),
  and trame-slicer's reactions to a view's change (each view's slice-slider state, the editor's
  effect pipelines) are held back while the threshold changes, which moves no view's slice.

* **The page does only what the move needs** (:mod:`.layout`, measured in headless chromium on the
  same 2 cores as the station: its CPU per move was as much as the station's):

  - a key released in the drawer stays there (:data:`KEEP_KEYS_JS`): trame-rca listens for ``keyup`` on
    the whole document and sent each arrow key released on the slider to all three views as an
    interaction event (three calls a move, each handled by the view's interactor and answered
    before the frame);
  - the sliders' thumb and track jump to the new value (:data:`STILL_SLIDERS_CSS`): Vuetify's
    transitions animated them for ~0.3 s after each move, a frame of style, layout and paint every
    ~10 ms of the page's main thread, on the cores the views render on;
  - the threshold slider reads and writes its value through its own component (trame's
    ``client.Getter``), so a move re-renders the slider only, not the page's whole template (the
    drawer and its tabs, the Edit tab's editor kept with ``v-show``), before the move is sent:
    key press -> sent 8 ms median instead of 35-53.

``BREASTTUMORSEG_STATION_PLAIN_VIEWS=1`` turns all of these off except "a move does only what its
frame needs" (trame-slicer's frame settings, every value applied as it arrives, measuring on a
worker thread, the page's sliders as trame and Vuetify make them): the station benchmark's
"before" (``Testing/benchmarks/bench_station.py``).
"""

from __future__ import annotations

import asyncio
import gc
import os
from time import monotonic
from typing import Callable

from trame.app import asynchronous
from trame_rca.schedulers import RcaImageRenderScheduler

PLAIN_VIEWS = os.environ.get("BREASTTUMORSEG_STATION_PLAIN_VIEWS", "") not in ("", "0")
#: JPEG quality (1..100) of the frames streamed while a view changes, and of the frame at rest.
MOVING_QUALITY = 50 if PLAIN_VIEWS else 35
STILL_QUALITY = 90

#: The drawer's ``keyup`` handler: a key released there is not also an interaction in the views.
KEEP_KEYS_JS = "$event.stopPropagation()"
#: CSS: the drawer's sliders move without transitions (Vuetify animates thumb and track ~0.3 s).
STILL_SLIDERS_CSS = (".bts-still-slider *, .bts-still-slider *::before, .bts-still-slider *::after "
                     "{ transition: none !important; animation: none !important; }")


#: A move with none in the seconds before it is applied at once (:class:`LatestOnly`); one that
#: follows another (a drag) waits for the next turn of the event loop, where a burst is applied once.
QUIET_S = 0.1

#: Turns of the event loop a view waits after handing its frame over, so that the websocket
#: sends it (wslink schedules the send, which then writes to the socket) before the next view renders.
SEND_TURNS = 5


def register_views(view_manager, server) -> None:
    """Slice views streamed as images (trame-rca), with this module's frame settings."""
    # trame-slicer waits until a station is made: it loads the Slicer core
    from trame_slicer.rca_view import rca_view_factory, register_rca_factories

    if not PLAIN_VIEWS:
        # trame-slicer makes each view's frame scheduler from this module's name (no option for it)
        rca_view_factory.RcaImageRenderScheduler = OneViewAtATime
    register_rca_factories(view_manager, server, interactive_quality=MOVING_QUALITY)


class OneViewAtATime(RcaImageRenderScheduler):
    """trame-rca's image frames, with the views taking turns, the still frame re-encoded from the
    last frame's pixels and no multisampling (see the module docstring)."""

    _turn: asyncio.Lock | None = None  # shared by all views of the event loop it was made on
    _turn_loop = None

    def __init__(self, window, **options):
        super().__init__(window, **options)
        self.rca.render_window.SetMultiSamples(0)
        self._pixels = None  # the last frame's (image, columns, rows)

    @classmethod
    def turn(cls) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if cls._turn is None or cls._turn_loop is not loop:
            cls._turn, cls._turn_loop = asyncio.Lock(), loop
        return cls._turn

    async def _render(self):
        while not self._is_closing:
            await self._request_event.wait()
            if self._is_closing:
                break
            async with self.turn():
                self._request_event.clear()  # a change from here on asks for another frame
                started = monotonic()
                self._send(self._pixels_now(), self._interactive_quality)
                for _ in range(SEND_TURNS):
                    await asyncio.sleep(0)
            if await self._still_since(started):
                self._send(self._pixels, self._still_quality)

    async def _still_since(self, started: float) -> bool:
        """Whether no frame was asked for during the five frame periods since ``started``."""
        for period in range(1, self._n_period_until_still_render + 1):
            await asyncio.sleep(max(0.0, started + period * self._target_period_s - monotonic()))
            if self._request_event.is_set() or self._is_closing:
                return False
        return True

    def _pixels_now(self):
        self._pixels = self._rca.img_cols_rows  # renders the view and reads its pixels back
        return self._pixels

    def _send(self, pixels, quality: int) -> None:
        image, meta, _ = self._rca_encoder.encode(*pixels, quality)
        if self._push_callback is not None:
            self._push_callback(image, meta)


def settle_heap() -> None:
    """Collect garbage once (also what an earlier call froze), then freeze what is alive (gc.freeze):
    later collections only look at newer objects (see the module docstring)."""
    if PLAIN_VIEWS:
        return
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class LatestOnly:
    """Calls ``apply(value)`` with the latest value submitted (every value at once when :data:`PLAIN_VIEWS`).

    A lone move (none submitted in the :data:`QUIET_S` before it) is applied at once, in the call
    that submits it; a move that follows another within :data:`QUIET_S` (a drag) is applied on
    the next turn of the event loop, so that the values of a burst arriving together are applied
    (and rendered) once, at the last one."""

    def __init__(self, apply: Callable):
        self._apply = apply
        self._pending = None
        self._scheduled = False
        self._submitted = float("-inf")  # when the previous value was submitted (monotonic s)

    def submit(self, value) -> None:
        if PLAIN_VIEWS:
            self._apply(value)
            return
        now = monotonic()
        lone, self._submitted = now - self._submitted >= QUIET_S, now
        self._pending = value
        if self._scheduled:
            return
        if lone:
            self._apply_pending()
            return
        self._scheduled = True
        asynchronous.create_task(self._run())

    def _apply_pending(self) -> None:
        value, self._pending = self._pending, None
        self._apply(value)

    async def _run(self) -> None:
        self._scheduled = False
        self._apply_pending()
