"""The reading's status line, as the Slicer panel and the browser station show it."""

from __future__ import annotations

import pytest

from breasttumorseg.readerstudy.display import clock_text, reading_status_text


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (59.9, "0:59"), (61, "1:01"), (3725, "62:05"), (-3, "0:00")])
def test_clock_text_is_minutes_and_seconds(seconds, text):
    assert clock_text(seconds) == text


def test_status_line_of_an_open_reading():
    status = {"open": True, "case": "case03", "arm": "assisted", "position": 4, "total": 12, "active_s": 83,
              "wall_s": 125, "n_edits": 7, "paused": False, "idle": False}
    assert reading_status_text(status) == "case03 (assisted) 4/12 - active 1:23, wall 2:05 - 7 edits"
    assert reading_status_text({**status, "n_edits": 1, "idle": True}).endswith("- 1 edit - idle")
    assert reading_status_text({**status, "paused": True, "idle": True}).endswith("- 7 edits - PAUSED")


def test_status_line_between_readings():
    assert reading_status_text({"open": False, "done": 5, "total": 12}) == "5/12 cases done."
    assert reading_status_text({"open": False, "done": 12, "total": 12}) == "12/12 cases done. All read - thank you."
    assert reading_status_text({"open": False, "done": 0, "total": 0}) == "0/0 cases done."
