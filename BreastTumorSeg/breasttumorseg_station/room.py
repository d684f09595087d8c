"""A reading room: several readers at once, one station process per reader, supervised here.

``breasttumorseg serve --room --study FILE`` starts, for every reader of the study, a station
of that reader alone (``python -m breasttumorseg_station --study FILE --reader R``): its own
process, so its own Slicer scene, VTK renderers and model, its own port and its own access
token. One reader's crash, kill or heavy render cannot touch another's reading: they share no
memory and no writable file. What each writes is that reader's own:

* the reader-study journal, autosaves and submitted segmentations in ``<results>/<reader>/``
  (one folder per reader; the journal's lock also refuses a second session of a reader);
* exports of the Case tab in ``<data>/exports/<reader>/``.

The assisted arm's AI results (``<results>/_ai/``) are shared, so they are read only: the
room refuses to start while any is missing (``breasttumorseg study prepare FILE`` computes
them once), so no reader's station ever computes and writes one.

**Addresses.** Each reader gets a port (random free ports unless ``--port`` gives the first,
the others following it) and a token (random, new at every start of the room), on every
address, 127.0.0.1 included: a reader's station lets in that reader's token only. The links
(``R1: http://host:port/?token=...``) are printed once, when every station is ready, and
written atomically to a file only the operator can read (mode 0600; ``--links``, default
``room-links.txt`` beside the study file), which is removed when the room stops. A child gets
its token in its environment (:data:`TOKEN_VARIABLE`), never on its command line, which
other users of the machine can read.

**Supervision.** A station that exits (a crash, a kill, out of memory) is started again on
the same port with the same token, after a pause that doubles with every failure in a row
(1 s to 30 s); the reader reloads the page and reopens the case, which resumes from the
journal and the last autosave (a submit cut short is finished, never counted twice: see
:mod:`breasttumorseg.readerstudy.session`). A station that fails :data:`MAX_FAILURES` times in
a row before it was ever ready is given up, with its messages on the room's stderr. SIGTERM,
SIGINT or SIGHUP stop every station (SIGTERM to its process group, SIGKILL after
:data:`STOP_GRACE_S`); a station whose room dies without stopping it (SIGKILL of the room)
gets SIGTERM from the kernel (``PR_SET_PDEATHSIG``, Linux) and ends too.

Not done here: TLS (put the room behind a TLS-terminating proxy, or keep it on a trusted
network), starting stations on demand (every reader's station runs from the start), and
spreading stations over machines.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from breasttumorseg.core.errors import BreastTumorSegError, InputError

#: The environment variable a reader's station reads its token from.
TOKEN_VARIABLE = "BREASTTUMORSEG_STATION_TOKEN"
#: The environment variable naming the room's process id: the station ends when that process does.
ROOM_VARIABLE = "BREASTTUMORSEG_ROOM_PID"
LINKS_NAME = "room-links.txt"
MAX_FAILURES = 5
FIRST_PAUSE_S = 1.0
LONGEST_PAUSE_S = 30.0
STOP_GRACE_S = 10.0
POLL_S = 0.2
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
PACKAGE_PARENT = Path(__file__).resolve().parents[1]


@dataclass
class ReaderStation:
    """One reader's station: its port and token, and the process serving them now."""

    reader: str
    port: int
    token: str
    process: subprocess.Popen | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    ever_ready: bool = False
    starts: int = 0
    failures: int = 0          # exits in a row before the station was ready
    ready_start: int = 0       # the start whose readiness was last noted
    restart_at: float | None = None
    given_up: bool = False

    def url(self, host: str) -> str:
        return f"http://{url_host(host)}:{self.port}/?token={self.token}"


class ReadingRoom:
    """The stations of every reader of a study (see the module docstring)."""

    def __init__(self, study_path: Path, readers, *, host: str = "127.0.0.1", first_port: int | None = None,
                 data: Path | None = None, device: str = "auto", links: Path | None = None, say=None):
        self.study_path, self.host, self.data, self.device = Path(study_path), host, data, device
        self.links = Path(links) if links is not None else self.study_path.resolve().parent / LINKS_NAME
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.random_ports = first_port is None
        ports = free_ports(host, len(readers)) if first_port is None else \
            [first_port + index for index in range(len(readers))]
        self.stations = [ReaderStation(reader, port, secrets.token_urlsafe(24)) for reader, port in zip(readers, ports)]
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------------- life cycle
    def run(self, stop: threading.Event) -> int:
        """Start every station, print and write the links once all are ready, keep the stations
        running until ``stop`` is set; then stop them all. Exit status: 0, or 1 when every
        station was given up."""
        try:
            for station in self.stations:
                self._start(station)
            announced = False
            while not stop.is_set():
                self._supervise()
                if not announced and all(s.ever_ready or s.given_up for s in self.stations):
                    self._announce()
                    announced = True
                if all(s.given_up for s in self.stations):
                    self.say("reading room: no station is left running; stopping")
                    return 1
                stop.wait(POLL_S)
            return 0
        finally:
            self.stop()

    def stop(self) -> None:
        """SIGTERM to every station's process group, SIGKILL to what is left after the grace
        period; the links file is removed (its tokens die with the room)."""
        running = [s.process for s in self.stations if s.process is not None and s.process.poll() is None]
        for process in running:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for process in running:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        for thread in self._threads:
            thread.join(timeout=5)
        self.links.unlink(missing_ok=True)

    # ------------------------------------------------------------------------- one station
    def command(self, station: ReaderStation) -> list[str]:
        argv = [sys.executable, "-m", "breasttumorseg_station", "--study", str(self.study_path),
                "--reader", station.reader, "--host", self.host, "--port", str(station.port), "--device", self.device]
        if self.data is not None:
            argv += ["--data", str(self.data)]
        return argv

    def _start(self, station: ReaderStation) -> None:
        """Start the station's process (from this thread: the kernel's parent-death signal
        follows the thread that started a child)."""
        env = dict(os.environ)
        env[TOKEN_VARIABLE] = station.token
        env[ROOM_VARIABLE] = str(os.getpid())
        env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_PARENT)] + [p for p in [env.get("PYTHONPATH")] if p])
        station.ready.clear()
        station.restart_at = None
        station.starts += 1
        station.process = subprocess.Popen(self.command(station), env=env, stdin=subprocess.DEVNULL,
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                           start_new_session=True)  # a terminal's Ctrl-C reaches the room only
        for target in (self._watch_stdout, self._forward_stderr):
            thread = threading.Thread(target=target, args=(station, station.process), daemon=True)
            thread.start()
            self._threads.append(thread)
        self._threads = [t for t in self._threads if t.is_alive()]

    def _supervise(self) -> None:
        """Note stations that became ready; start again, after their pause, those that ended."""
        now = time.monotonic()
        for station in self.stations:
            if station.given_up or station.process is None:
                continue
            if station.ready.is_set() and station.ready_start != station.starts:
                station.ready_start, station.ever_ready, station.failures = station.starts, True, 0
                if station.starts > 1:
                    self.say(f"reading room: {station.reader}'s station is back on port {station.port}")
            if station.restart_at is not None:
                if now >= station.restart_at:
                    self._start(station)
                continue
            status = station.process.poll()
            if status is None:
                continue
            station.failures += 1
            if station.failures >= MAX_FAILURES:
                station.given_up = True
                self.say(f"reading room: {station.reader}'s station ended {station.failures} times in a row before "
                         f"it was ready ({_status_text(status)}); not started again (its messages are above)")
                continue
            if self.random_ports and not station.ever_ready:
                station.port = free_ports(self.host, 1)[0]  # not announced yet: its port may have been taken
            pause = min(LONGEST_PAUSE_S, FIRST_PAUSE_S * 2 ** (station.failures - 1))
            station.restart_at = now + pause
            self.say(f"reading room: {station.reader}'s station ended ({_status_text(status)}); starting it again "
                     f"in {pause:g} s")

    def _watch_stdout(self, station: ReaderStation, process: subprocess.Popen) -> None:
        """The station prints its address (with the token) once it serves: that line means
        ready. Nothing of stdout is repeated (the room prints the links itself)."""
        for line in process.stdout:
            if f":{station.port}/" in line and station.process is process:
                station.ready.set()

    def _forward_stderr(self, station: ReaderStation, process: subprocess.Popen) -> None:
        for line in process.stderr:
            self.say(f"[{station.reader}] {line.rstrip()}")

    def _announce(self) -> None:
        lines = [f"{s.reader}: {s.url(self.host)}" for s in self.stations if not s.given_up]
        write_private(self.links, "".join(line + "\n" for line in lines))
        for line in lines:
            print(line, flush=True)
        print(f"reading room: {len(lines)} reader stations ready; links in {self.links} (readable by you only)",
              flush=True)


# ----------------------------------------------------------------------------- helpers
def run_room(args) -> int:
    """``serve --room``: check the options and the study, then run the room until a signal."""
    try:
        room = make_room(args)
    except BreastTumorSegError as error:
        print(f"breasttumorseg serve: error: {error}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for number in STOP_SIGNALS:
        signal.signal(number, lambda *_: stop.set())
    return room.run(stop)


def make_room(args) -> ReadingRoom:
    """The room the options describe; a one-line :class:`InputError` for bad options or a study
    whose AI results are not prepared."""
    from breasttumorseg.readerstudy.ai import prepared
    from breasttumorseg.readerstudy.definition import read_study

    if args.study is None:
        raise InputError("a reading room serves the readers of a study: give --study FILE", "--room")
    for option, value in (("--token", args.token), ("--reader", args.reader)):
        if value is not None:
            raise InputError("every reader of a room gets a token and a station of their own; leave it out", option)
    if args.data is not None and not Path(args.data).is_dir():
        raise InputError("is not a folder", args.data)
    study = read_study(args.study)
    if study.assisted is not None:
        missing = [case for case in study.case_ids if prepared(study, case) is None]
        if missing:
            raise InputError(f"the assisted arm's AI results of {len(missing)} case(s) ({', '.join(missing[:3])}"
                             f"{', ...' if len(missing) > 3 else ''}) are not prepared; run 'breasttumorseg study "
                             "prepare' on it first (in a room no station computes them)", args.study)
    if args.port is not None and not 0 < args.port <= 65535 - len(study.readers):
        raise InputError(f"--port {args.port} leaves no room for {len(study.readers)} ports", "--port")
    return ReadingRoom(args.study, study.readers, host=args.host, first_port=args.port, data=args.data,
                       device=args.device, links=args.links)


def follow_room() -> None:
    """In a room's station: end with the room (SIGTERM when the room's process dies; Linux)."""
    room = os.environ.get(ROOM_VARIABLE)
    if not room or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != int(room):  # the room died before the signal was asked for
        raise SystemExit(0)


def free_ports(host: str, count: int) -> list[int]:
    """``count`` distinct ports free on ``host`` now (each bound to port 0, then released)."""
    sockets = []
    try:
        for _ in range(count):
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            s = socket.socket(family, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def url_host(host: str) -> str:
    """The host name readers' links use: a wildcard address becomes this machine's name."""
    if host in ("", "0.0.0.0", "::"):
        return socket.getfqdn()
    return f"[{host}]" if ":" in host else host


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable and writable by this user only (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _signal_group(process: subprocess.Popen, number: int) -> None:
    try:
        os.killpg(process.pid, number)
    except (ProcessLookupError, PermissionError):
        pass


def _status_text(status: int) -> str:
    return f"signal {-status}" if status < 0 else f"exit status {status}"
