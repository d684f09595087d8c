"""A reading's status in the words every display shows it (the Slicer panel and toolbar, the station).

The status is the dictionary of :meth:`ReaderSession.status` with ``position`` counted from 1
(case, arm, position, total, done, active_s, wall_s, paused, idle, n_edits; ``open`` False
between cases). Times are shown as minutes:seconds.
"""

from __future__ import annotations

import math


def clock_text(seconds: float) -> str:
    """Seconds as minutes:seconds, "12:05" (negative and non-finite values read 0:00)."""
    seconds = float(seconds) if isinstance(seconds, (int, float)) and math.isfinite(seconds) else 0.0
    whole = int(max(0.0, seconds))
    return f"{whole // 60}:{whole % 60:02d}"


def reading_status_text(status: dict) -> str:
    """One line: "case03 (assisted) 4/12 - active 1:23, wall 2:05 - 7 edits" (+ " - PAUSED" or
    " - idle"); between cases "3/12 cases done.", at the end "12/12 cases done. All read - thank you."."""
    if not status.get("open"):
        done, total = status.get("done", 0), status.get("total", 0)
        return f"{done}/{total} cases done." + (" All read - thank you." if total and done >= total else "")
    edits = status.get("n_edits", 0)
    text = (f"{status['case']} ({status['arm']}) {status['position']}/{status['total']} - "
            f"active {clock_text(status['active_s'])}, wall {clock_text(status['wall_s'])} - "
            f"{edits} edit{'' if edits == 1 else 's'}")
    if status.get("paused"):
        text += " - PAUSED"
    elif status.get("idle"):
        text += " - idle"
    return text
