"""The reading's status in the words the Slicer panel and the browser station show it.

Both read the status dict of the open reading (``ReaderStudyLogic.status()``: case, arm,
position 1-based, total, done, wall_s, active_s, paused, idle, n_edits; ``open`` False when
no case is open) and show it as one line, with times as minutes:seconds.
"""

from __future__ import annotations


def clock_text(seconds: float) -> str:
    """Seconds as minutes:seconds, "12:05" (negative counts as 0; minutes are not wrapped into hours)."""
    whole = int(max(0.0, float(seconds)))
    return f"{whole // 60}:{whole % 60:02d}"


def status_line(status: dict) -> str:
    """"case03 (assisted) 4/12 - active 1:23, wall 2:05 - 7 edits" (+ " - PAUSED" or " - idle")
    while a case is open, else "5/12 cases done" ("12/12 cases done - thank you." at the end)."""
    if not status.get("open"):
        done, total = status.get("done", 0), status.get("total", 0)
        return f"{done}/{total} cases done" + (" - thank you." if total and done >= total else "")
    edits = status.get("n_edits", 0)
    text = (f"{status['case']} ({status['arm']}) {status['position']}/{status['total']} - "
            f"active {clock_text(status['active_s'])}, wall {clock_text(status['wall_s'])} - "
            f"{edits} edit{'' if edits == 1 else 's'}")
    if status.get("paused"):
        return text + " - PAUSED"
    return text + (" - idle" if status.get("idle") else "")
