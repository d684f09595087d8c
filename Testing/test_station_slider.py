"""The station's slider helpers: the latest of a burst applied once; measuring in a child that stops."""

from __future__ import annotations

import asyncio
import time

import pytest

pytest.importorskip("trame")

from breasttumorseg.core.errors import BreastTumorSegError, InputError  # noqa: E402
from breasttumorseg_station.measuring import Measuring  # noqa: E402
from breasttumorseg_station.slider import PLAIN_VIEWS, LatestOnly  # noqa: E402

pytestmark = pytest.mark.skipif(PLAIN_VIEWS, reason="BREASTTUMORSEG_STATION_PLAIN_VIEWS is set")


def test_a_burst_of_moves_is_applied_once_at_its_last_value():
    applied = []

    async def burst():
        latest = LatestOnly(applied.append)
        for value in (0.3, 0.35, 0.4):
            latest.submit(value)
        await asyncio.sleep(0.05)
        latest.submit(0.45)
        await asyncio.sleep(0.05)

    asyncio.run(burst())
    assert applied == [0.4, 0.45]


@pytest.mark.skipif(not Measuring.forks(), reason="needs fork")
def test_measuring_in_a_child_returns_its_record_and_its_errors():
    def measured():
        return {"tumor_volume_ml": 10.1, "lesions": [{"centroid_lps_mm": [1.0, 2.0, 3.0]}]}

    def bad():
        raise InputError("holds NaN values", "case/phase_01.nii.gz")

    measuring = Measuring()
    assert asyncio.run(measuring.run(measured)) == measured()
    with pytest.raises(BreastTumorSegError, match="^case/phase_01.nii.gz: holds NaN values$"):
        asyncio.run(measuring.run(bad))


@pytest.mark.skipif(not Measuring.forks(), reason="needs fork")
def test_a_change_stops_the_measuring_at_once():
    measuring = Measuring()

    async def stopped_after(delay_s):
        running = asyncio.ensure_future(measuring.run(lambda: time.sleep(60) or {}))
        await asyncio.sleep(delay_s)
        child = measuring._child
        measuring.stop()
        with pytest.raises(RuntimeError, match="ended"):
            await running
        return child

    started = time.monotonic()
    child = asyncio.run(stopped_after(0.5))
    assert time.monotonic() - started < 10 and not child.is_alive()
