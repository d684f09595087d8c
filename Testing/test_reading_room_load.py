"""The reading room's load test: four readers at once, one real station process each.

A real room (``breasttumorseg serve --room``, four station processes) on a small reader
study; every reader's station is driven concurrently at the protocol level
(:mod:`station_client`: what the page sends, without a browser): open a data case, Segment,
move the threshold, export, then read the reader's worklist (start the case, submit). One
reader's station is killed with SIGKILL in the middle of a reading; the test checks the room
starts it again, that reader's reading resumes and is submitted once, the others never
noticed, every journal and result is complete, each reader's files are in their own folders
only, and SIGTERM to the room leaves no process behind. Prints each reader's response times
and each station's memory.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import time

import pytest

from breasttumorseg.readerstudy import definition
from breasttumorseg.readerstudy.session import journal_events

from test_reading_room import (KILLED, READERS, START_TIMEOUT_S, STEP_TIMEOUT_S, alive, memory_mb,  # noqa: E402
                               room_study, start_room, station_pids)


@pytest.mark.slow
def test_four_readers_at_once_and_a_killed_station_comes_back_with_nothing_lost(tmp_path):
    pytest.importorskip("trame_slicer")
    import aiohttp
    from station_client import StationClient, StationError

    study_path = room_study(tmp_path)
    study = definition.read_study(study_path)
    data = tmp_path / "data"
    log = tmp_path / "room.log"
    links_file = tmp_path / "links.txt"
    process, links, ready = start_room(study_path, "--data", str(data), "--links", str(links_file), log=log)
    timings: dict[str, dict] = {reader: {} for reader in READERS}
    try:
        assert set(links) == set(READERS) and ready.startswith("reading room: 4 reader stations ready")
        ports = {reader: int(link.split(":")[2].split("/")[0]) for reader, link in links.items()}
        assert len(set(ports.values())) == 4 and all("?token=" in link for link in links.values())
        assert stat.S_IMODE(links_file.stat().st_mode) == 0o600
        assert links_file.read_text().splitlines() == [f"{r}: {links[r]}" for r in READERS]
        pids = station_pids(process.pid)
        assert set(pids) == set(READERS)

        async def timed(reader, name, action):
            started = time.perf_counter()
            result = await action
            timings[reader].setdefault(name, []).append(time.perf_counter() - started)
            return result

        def connect(reader):
            base, token = links[reader].split("/?token=")
            return StationClient(base, token)

        async def wait_reader(client, reader):
            await client.wait_for(lambda s: s.get("bts_reader") == reader and s.get("bts_worklist"),
                                  STEP_TIMEOUT_S, f"{reader}'s worklist")

        async def case_tab(client, reader):
            """Open the data case, Segment, move the threshold twice, export NIfTI."""
            await client.set(bts_case="tiny")
            await timed(reader, "open", client.click("bts-open-case"))
            await client.wait_for(lambda s: s.get("bts_case_open") == "tiny" or s.get("bts_error"), STEP_TIMEOUT_S,
                                  f"{reader}'s case")
            assert client.state.get("bts_error") == ""
            await client.click("bts-segment")
            await client.wait_for(lambda s: s.get("bts_has_result") and not s.get("bts_running"), STEP_TIMEOUT_S,
                                  f"{reader}'s segmentation")
            for threshold in (0.3, 0.7):  # fractions of the maximum: never an empty segment to export
                await timed(reader, "slider", client.set(bts_relative=True, bts_threshold=threshold))
                assert client.state.get("bts_error") == ""
            await client.click("bts-export-nifti")
            expected = f"exported exports/{reader}/tiny/tumor_label.nii.gz"
            await client.wait_for(lambda s: s.get("bts_message") == expected, STEP_TIMEOUT_S, f"{reader}'s export")

        async def start_reading(client, reader):
            await timed(reader, "start case", client.click("bts-start-case"))
            await client.wait_for(lambda s: s.get("bts_reading"), STEP_TIMEOUT_S, f"{reader}'s reading")

        async def submit(client, reader):
            await timed(reader, "submit", client.click("bts-submit"))
            await client.wait_for(lambda s: str(s.get("bts_message", "")).startswith("submitted"), STEP_TIMEOUT_S,
                                  f"{reader}'s submit")

        async def read_worklist(client, reader):
            while not client.state.get("bts_all_done"):
                await start_reading(client, reader)
                await submit(client, reader)

        async def reader_at_work(reader):
            async with connect(reader) as client:
                await wait_reader(client, reader)
                await case_tab(client, reader)
                await start_reading(client, reader)
                if reader != KILLED:
                    await submit(client, reader)
                    await read_worklist(client, reader)
                    return
                os.kill(pids[KILLED], signal.SIGKILL)                   # mid-reading
            client = await connect_when_back(reader)                    # the page reloaded
            async with client:
                await wait_reader(client, reader)
                rows = [row["status"] for row in client.state["bts_worklist"]]
                assert "in progress" in rows, rows
                await start_reading(client, reader)
                await submit(client, reader)
                await read_worklist(client, reader)

        async def connect_when_back(reader):
            """A client of the reader's station once the room has started it again."""
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                client = connect(reader)
                try:
                    await client.connect()
                    return client
                except (OSError, aiohttp.ClientError, StationError):
                    await client.close()
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(1.0)

        async def everyone():
            await asyncio.gather(*(reader_at_work(reader) for reader in READERS))

        asyncio.run(everyone())
        restarted = station_pids(process.pid)
        assert set(restarted) == set(READERS) and restarted[KILLED] != pids[KILLED]
        assert all(restarted[r] == pids[r] for r in READERS if r != KILLED)      # the others never restarted
        memory = {reader: memory_mb(pid) for reader, pid in restarted.items()}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    text = log.read_text()
    assert f"{KILLED}'s station ended (signal 9)" in text and f"{KILLED}'s station is back" in text, text[-3000:]
    assert not any(alive(pid) for pid in [*pids.values(), *restarted.values()])
    assert not links_file.exists()

    # every reader's journal and results: complete, each reading submitted once, their own only
    results = study.results_dir
    assert sorted(p.name for p in results.iterdir()) == sorted(["_ai", *READERS])
    for reader in READERS:
        events = journal_events(study, reader)
        submitted = [(e["case"], e["arm"]) for e in events if e["event"] == "submitted"]
        assert sorted(submitted) == sorted((c, a) for c in study.case_ids for a in study.arms), reader
        assert {e.get("reader", reader) for e in events} == {reader}
        files = sorted(p.name for p in (results / reader).iterdir())
        assert files == sorted(["journal.jsonl", *(f"{c}.{a}.seg.nrrd" for c in study.case_ids for a in study.arms)])
        opened = [e for e in events if e["event"] == "opened"]
        assert any(e.get("resumed") for e in opened) == (reader == KILLED)
    assert sorted(p.name for p in (data / "exports").iterdir()) == list(READERS)
    for reader in READERS:
        assert [p.name for p in (data / "exports" / reader / "tiny").iterdir()] == ["tumor_label.nii.gz"]
    report = {reader: {name: [round(t, 3) for t in values] for name, values in steps.items()}
              for reader, steps in timings.items()}
    print("per-reader response times (s):", json.dumps(report))
    print("station memory MiB (resident, peak):", json.dumps({r: [round(v) for v in m] for r, m in memory.items()}))


