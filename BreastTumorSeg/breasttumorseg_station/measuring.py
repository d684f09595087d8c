"""Measuring the tumor segment without holding the views back.

Measuring a clinical-size study takes seconds (every lesion labelled, the functional tumor
volume and the kinetics over the tumor's region of six phases). On a worker thread it
shares the interpreter with the page's event loop and cannot be stopped, so a slider move
made meanwhile waits for it. Here the measuring runs in a child process forked from the
station (it inherits the study and the segment's voxels: nothing is copied), in Linux's idle
scheduling class (``SCHED_IDLE``: the CPU only when nothing else wants it; elsewhere a higher
niceness), and :meth:`Measuring.stop` kills it the moment the segment changes again, without
waiting for it to end: a killed (or finished) child of a clinical-size station takes 0.5-1 s
to give its copy of the station's memory back, and waiting for that held the slider move that
stopped it (a child that has ended is reaped at the next stop or fork). That giving back runs
during the move that killed the child (~50 ms of a core per move on the standard case, perf):
at idle priority it yields to the views' renders and the browser. The child runs numpy
and scipy only: the segment is read from the scene before, on the main thread.

The child sends its measurements back as JSON (:func:`breasttumorseg.reporting.measurements.measure`'s
record is JSON-ready). Where processes cannot be forked (not Linux or macOS), or with
``BREASTTUMORSEG_STATION_PLAIN_VIEWS=1``, the measuring runs on a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import time
from typing import Callable

from .slider import PLAIN_VIEWS

POLL_S = 0.05
CHILD_NICENESS = 10
#: A child still silent after this long is taken to be stuck, killed, and reported.
LONGEST_S = 600.0


class Measuring:
    """One measuring at a time: ``await run(task)`` returns ``task()``'s record; :meth:`stop` ends it."""

    def __init__(self):
        self._child = None
        self._ending = []  # killed children not reaped yet

    @staticmethod
    def forks() -> bool:
        return not PLAIN_VIEWS and "fork" in multiprocessing.get_all_start_methods()

    async def run(self, task: Callable[[], dict]) -> dict:
        """``task()`` in a forked child (or on a worker thread, see the module docstring)."""
        if not self.forks():
            return await asyncio.get_running_loop().run_in_executor(None, task)
        self.stop()
        receiving, sending = multiprocessing.Pipe(duplex=False)
        child = multiprocessing.get_context("fork").Process(target=_measure_child, args=(task, sending),
                                                             daemon=True)
        child.start()
        sending.close()
        self._child = child
        deadline = time.monotonic() + LONGEST_S
        try:
            while not receiving.poll():
                if not child.is_alive() and not receiving.poll():
                    raise RuntimeError(f"the measuring process ended with status {child.exitcode}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"measuring took longer than {LONGEST_S:.0f} s and was stopped")
                await asyncio.sleep(POLL_S)
            reply = json.loads(receiving.recv_bytes())
        except EOFError:
            child.join(timeout=5)  # its pipe closed: it is at the end of its exit
            raise RuntimeError(f"the measuring process ended with status {child.exitcode}") from None
        finally:
            receiving.close()
            self.stop()
        if "error" in reply:
            raise _error(reply["error"])
        return reply["record"]

    def stop(self) -> None:
        """Kill the running measuring, if any; returns at once (see the module docstring)."""
        child, self._child = self._child, None
        if child is not None:
            if child.is_alive():
                child.kill()
            self._ending.append(child)
        self._ending = [ending for ending in self._ending if ending.exitcode is None]  # reaps the ended


def idle_priority() -> str:
    """Give this process the CPU only when nothing else wants it: Linux's idle scheduling class
    (``SCHED_IDLE``), elsewhere :data:`CHILD_NICENESS` more niceness. Returns which was set."""
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return "idle"
        except OSError:
            pass
    os.nice(CHILD_NICENESS)
    return "nice"


def _measure_child(task, sending) -> None:
    """In the child: lower the priority, run ``task``, send its record or its error as JSON."""
    try:
        idle_priority()
        reply = {"record": task()}
    except Exception as error:  # noqa: BLE001 - sent to the parent, which shows it
        reply = {"error": {"kind": type(error).__name__, "message": str(error)}}
    sending.send_bytes(json.dumps(reply).encode())
    sending.close()


def _error(error: dict) -> Exception:
    """The child's error as the parent raises it: a user's error stays one (its one line)."""
    from breasttumorseg.core import errors

    kind = getattr(errors, error["kind"], None)
    if isinstance(kind, type) and issubclass(kind, errors.BreastTumorSegError):
        return errors.BreastTumorSegError(error["message"])
    return RuntimeError(f"measuring failed: {error['kind']}: {error['message']}")
