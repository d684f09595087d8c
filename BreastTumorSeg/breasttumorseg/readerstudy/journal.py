"""A reader's journal: every timing event of a reader study, one JSON object per line.

Each event is appended, flushed and ``fsync``-ed before :meth:`Journal.append` returns, so an
event that was recorded survives Slicer being killed the instant after. A process killed in
the middle of a write leaves at most a truncated last line: reading skips it with a warning,
and opening the journal for writing moves that fragment to a ``.damaged-<n>`` file beside it
(nothing is deleted) before appending again. A write that fails (a full disk) is cut back to
the end of the last complete line, so the journal never holds a fragment followed by a good
event; if even that fails the journal refuses further events until it is reopened. Lines are
never rewritten. The journal is never opened through a symbolic link.

An exclusive ``flock`` on the journal keeps two sessions of the same reader (two Slicer
windows) from interleaving; the operating system releases it when a process dies.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import logging
import os
from pathlib import Path
from typing import Callable

from ..core.errors import InputError, OutputError

try:
    import fcntl
except ImportError:  # Windows: no advisory lock; one session per reader is then the reader's care
    fcntl = None

Warn = Callable[[str], None]
_log = logging.getLogger("breasttumorseg")


def utc_now() -> str:
    """The current time, ISO 8601 in UTC with milliseconds (the journal's ``time`` field)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def read_events(path, *, warn: Warn | None = None) -> list[dict]:
    """All complete events of a journal (an absent journal has none).

    A last line without its newline (a write cut short) is skipped with a warning; a line
    in the middle that is not a JSON object is an :class:`InputError` naming the line, since
    that is damage this program never makes.
    """
    path = Path(path)
    warn = warn or _log.warning
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as error:
        raise InputError(f"journal cannot be read ({error.strerror})", path) from None
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends in a newline
    if tail.strip():
        warn(f"{path}: last journal line is incomplete (the session was interrupted while writing it); "
             "it is ignored")
    events = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            event = None
        if not isinstance(event, dict) or "event" not in event:
            raise InputError(f"journal line {number} is not a journal event", path)
        events.append(event)
    return events


class Journal:
    """An open journal, appending one durable line per event (see the module docstring)."""

    def __init__(self, path, *, warn: Warn | None = None, now: Callable[[], str] = utc_now):
        self.path = Path(path)
        self._warn = warn or _log.warning
        self._now = now
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "ab+", buffering=0, opener=_open_no_follow)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise OutputError("journal is a symbolic link; a journal is never opened through one",
                                  self.path) from None
            raise OutputError(f"journal cannot be opened for writing ({error.strerror})", self.path) from None
        if fcntl is not None:
            try:
                fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._handle.close()
                raise OutputError("journal is in use by another session of this reader; close that one first",
                                  self.path) from None
        self._set_aside_incomplete_line()
        self._damaged = False
        fsync_folder(self.path.parent)

    def append(self, event: str, **fields) -> dict:
        """Write one event durably; returns it as written (with its ``time``).

        On failure (:class:`OutputError`) the event is not in the journal: whatever part of
        the line reached the file is cut off again."""
        if self._damaged:
            raise OutputError("journal could not be repaired after a failed write; reopen the session", self.path)
        record = {"event": event, "time": self._now(), **fields}
        line = json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"
        handle = self._handle
        end = handle.seek(0, os.SEEK_END)
        data = memoryview(line.encode("utf-8"))
        try:
            while data:  # unbuffered: nothing of a failed line lingers to be written later
                data = data[handle.write(data):]
            os.fsync(handle.fileno())
        except OSError as error:
            self._cut_back(end)
            raise OutputError(f"journal event could not be written ({error.strerror})", self.path) from None
        return record

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()  # also releases the lock

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def _cut_back(self, end: int) -> None:
        """Remove a partly written line (truncating needs no free space)."""
        handle = self._handle
        try:
            os.ftruncate(handle.fileno(), end)
            os.fsync(handle.fileno())
            handle.seek(end)
        except OSError:
            self._damaged = True

    def _set_aside_incomplete_line(self) -> None:
        handle = self._handle
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        if size == 0:
            return
        handle.seek(max(0, size - 65536))
        chunk = handle.read()
        if chunk.endswith(b"\n"):
            return
        cut = chunk.rfind(b"\n")
        if cut < 0 and size > len(chunk):
            raise OutputError("journal's last line is longer than 64 KiB and incomplete; repair it by hand",
                              self.path)
        fragment = chunk[cut + 1:]
        keep = size - len(fragment)
        number = 1
        while (aside := self.path.with_name(f"{self.path.name}.damaged-{number}")).exists():
            number += 1
        with open(aside, "wb") as out:
            out.write(fragment)
            out.flush()
            os.fsync(out.fileno())
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
        self._warn(f"{self.path}: the last journal line was incomplete (interrupted write); "
                   f"it was moved to {aside.name} and the journal continues after it")


def _open_no_follow(path, flags):
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), 0o666)


def fsync_folder(folder: Path) -> None:
    """Make a folder's entries (a rename, a link) durable; best effort where folders cannot be opened."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
