"""The reading room (``breasttumorseg serve --room``) without stations: its options, its
links file, its ports, a reader's access policy; and the helpers of the load test
(``test_reading_room_load.py``), which starts real stations.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from breasttumorseg.core import atomic
from breasttumorseg.readerstudy import definition
from breasttumorseg.readerstudy.ai import ai_files
from breasttumorseg.reporting.writing import write_segmentation_nrrd

from test_readerstudy_session import GRID, make_study  # noqa: E402
from test_slicer_readerstudy import ai_mask  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
READERS = ("R1", "R2", "R3", "R4")
KILLED = "R2"
START_TIMEOUT_S = 600   # four stations starting at once on two busy cores
STEP_TIMEOUT_S = 300


def room_study(folder: Path, readers=READERS, n_cases: int = 1) -> Path:
    """A study of ``n_cases`` tiny cases (12 x 10 x 6 voxels), both arms, the AI results prepared
    (a known mask stands in for the model), and a data folder ``data/tiny`` with one case."""
    path = make_study(folder, n_cases=n_cases, readers=readers, washout=0)
    study = definition.read_study(path)
    for case in study.case_ids:
        segmentation, metadata = ai_files(study, case)
        write_segmentation_nrrd(segmentation, ai_mask(), GRID)
        atomic.write_json(metadata, {"case": case, "model": "simulated", "seconds": 1.0})
    (folder / "data" / "tiny").mkdir(parents=True)
    for phase in sorted((folder / "case00").glob("phase*.nii.gz")):
        shutil.copy(phase, folder / "data" / "tiny" / phase.name)
    (folder / "data" / "tiny" / "times.json").write_text(json.dumps({"times_s": [0, 90, 180]}))
    return path


def start_room(study: Path, *options: str, log: Path, device: str = "cpu"):
    """``breasttumorseg serve --room`` in a child process; returns (process, {reader: link}, the
    ready line) once it says every station is ready."""
    process = subprocess.Popen([sys.executable, "-m", "breasttumorseg", "serve", "--room", "--study", str(study),
                                "--device", device, *options],
                               stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, cwd=ROOT)
    links = {}
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("reading room:"):
            return process, links, line.strip()
        reader, _, link = line.strip().partition(": ")
        links[reader] = link
    process.kill()
    raise AssertionError(f"the room did not start:\n{log.read_text()[-4000:]}")


def station_pids(room_pid: int) -> dict[str, int]:
    """{reader: pid} of the room's station processes (its children, by their command line)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == room_pid and b"--reader" in argv:
            found[argv[argv.index(b"--reader") + 1].decode()] = int(entry.name)
    return found


def memory_mb(pid: int) -> tuple[float, float]:
    """(resident, peak resident) MiB of a process, from /proc/<pid>/status."""
    values = {}
    for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", float("nan")), values.get("VmHWM", float("nan"))


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# ----------------------------------------------------------------------------- without stations
@pytest.mark.parametrize("options, message", [
    ([], "--room: a reading room serves the readers of a study: give --study FILE"),
    (["--study", "{study}", "--token", "x"], "--token: every reader of a room gets a token and a station of their own"),
    (["--study", "{study}", "--reader", "R1"], "--reader: every reader of a room gets a token and a station"),
    (["--study", "{study}", "--port", "65534"], "--port: --port 65534 leaves no room for 2 ports"),
    (["--study", "{study}", "--data", "{study}"], "study.json: is not a folder"),
    (["--study", "{unprepared}"], "the assisted arm's AI results of 1 case(s) (case00) are not prepared"),
])
def test_a_room_with_bad_options_is_one_line_and_status_2(tmp_path, capsys, options, message):
    from breasttumorseg_station.__main__ import main

    prepared = room_study(tmp_path / "prepared", readers=("R1", "R2"))
    unprepared = make_study(tmp_path / "unprepared", n_cases=1, readers=("R1", "R2"), washout=0)
    assert main(["--room", *(o.format(study=prepared, unprepared=unprepared) for o in options)]) == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and len(lines) == 1, lines
    assert lines[0].startswith("breasttumorseg serve: error: ") and message in lines[0], lines
    assert not (tmp_path / "prepared" / "room-links.txt").exists()


def test_serve_room_from_the_command_line_is_one_line_and_status_2(tmp_path):
    study = make_study(tmp_path, n_cases=1, readers=("R1",), washout=0)      # the AI results not prepared
    done = subprocess.run([sys.executable, "-m", "breasttumorseg", "serve", "--room", "--study", str(study)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [f"breasttumorseg serve: error: {study}: the assisted arm's AI results of 1 "
                                        "case(s) (case00) are not prepared; run 'breasttumorseg study prepare' on it "
                                        "first (in a room no station computes them)"]


def test_a_station_for_one_reader_refuses_a_reader_not_in_the_study(tmp_path, capsys):
    from breasttumorseg_station.__main__ import main

    study = make_study(tmp_path, n_cases=1, readers=("R1",), washout=0)
    assert main(["--study", str(study), "--reader", "R9", "--port", "0"]) == 2
    assert main(["--reader", "R1"]) == 2
    assert main(["--study", str(study), "--links", str(tmp_path / "l.txt")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"breasttumorseg serve: error: {study}: reader 'R9' is not in the study (readers: R1)",
        "breasttumorseg serve: error: --reader: serves one reader of a study: give --study too",
        "breasttumorseg serve: error: --links: is for a reading room (--room) only"]


def test_the_links_file_is_replaced_atomically_and_readable_by_its_owner_only(tmp_path):
    from breasttumorseg_station.room import write_private

    path = tmp_path / "links.txt"
    os.umask(0o022)
    write_private(path, "R1: a\n")
    write_private(path, "R1: b\n")
    assert path.read_text() == "R1: b\n" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["links.txt"]                  # no temporary file left


def test_a_readers_station_lets_in_that_readers_token_only_also_on_loopback():
    from breasttumorseg_station.security import AccessPolicy, token_cookie

    policy = AccessPolicy.for_reader("127.0.0.1", "R2", "secret-of-r2")
    assert policy.require_token and policy.reader_of("secret-of-r2") == "R2"
    for wrong in (None, "", "secret-of-r1"):
        with pytest.raises(PermissionError):
            policy.reader_of(wrong)
    assert policy.addresses("http://127.0.0.1:9000/") == [("R2", "http://127.0.0.1:9000/?token=secret-of-r2")]
    assert token_cookie(9000) != token_cookie(9001)               # two stations of one host, two cookies
    with pytest.raises(ValueError):
        AccessPolicy.for_reader("127.0.0.1", "R2", "")


def test_free_ports_are_distinct_and_bindable():
    import socket

    from breasttumorseg_station.room import free_ports

    ports = free_ports("127.0.0.1", 4)
    assert len(set(ports)) == 4
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))



# ----------------------------------------------------------------------------- the supervisor
#: A stand-in for a station (the supervisor's own test; the load test runs real stations): it
#: binds its port, prints its address as a station does, and serves nothing; reader "BAD" fails.
STAND_IN = """
import os, socket, sys, time
reader, port = sys.argv[1], int(sys.argv[2])
if reader == "BAD":
    sys.exit(3)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", port)); s.listen()
print(f"{reader}: http://127.0.0.1:{port}/?token={os.environ['BREASTTUMORSEG_STATION_TOKEN']}", flush=True)
time.sleep(600)
"""


def test_the_room_restarts_a_killed_station_on_its_port_gives_up_a_failing_one_and_stops_all(tmp_path, monkeypatch):
    import threading

    from breasttumorseg_station import room as room_module
    from breasttumorseg_station.room import TOKEN_VARIABLE, ReadingRoom

    monkeypatch.setattr(room_module, "MAX_FAILURES", 3)
    monkeypatch.setattr(room_module, "FIRST_PAUSE_S", 0.1)
    said = []
    room = ReadingRoom(tmp_path / "study.json", ["R1", "BAD"], links=tmp_path / "links.txt", say=said.append)
    monkeypatch.setattr(room, "command", lambda s: [sys.executable, "-c", STAND_IN, s.reader, str(s.port)])
    r1, bad = room.stations
    stop = threading.Event()
    runner = threading.Thread(target=lambda: said.append(f"exit {room.run(stop)}"))
    runner.start()
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "links.txt").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert bad.given_up and bad.starts == 3 and r1.ever_ready
        assert (tmp_path / "links.txt").read_text() == f"R1: http://127.0.0.1:{r1.port}/?token={r1.token}\n"
        assert stat.S_IMODE((tmp_path / "links.txt").stat().st_mode) == 0o600
        first = r1.process
        environ = Path(f"/proc/{first.pid}/environ").read_bytes().split(b"\0")
        assert f"{TOKEN_VARIABLE}={r1.token}".encode() in environ     # the token in the environment ...
        assert r1.token.encode() not in Path(f"/proc/{first.pid}/cmdline").read_bytes()  # ... not the command line
        os.kill(first.pid, signal.SIGKILL)
        back = f"reading room: R1's station is back on port {r1.port}"
        while back not in said and time.monotonic() < deadline:
            time.sleep(0.1)
        second = r1.process
        assert second is not first and r1.ready.is_set() and r1.starts == 2 and not r1.given_up
        assert f"{TOKEN_VARIABLE}={r1.token}".encode() in Path(f"/proc/{second.pid}/environ").read_bytes().split(b"\0")
    finally:
        stop.set()
        runner.join(timeout=60)
    assert "exit 0" in said
    assert "reading room: R1's station ended (signal 9); starting it again in 0.1 s" in said
    assert any(line.startswith("reading room: BAD's station ended 3 times in a row before it was ready (exit "
                               "status 3)") for line in said)
    assert not alive(first.pid) and not alive(second.pid) and second.poll() is not None
    assert not (tmp_path / "links.txt").exists()
