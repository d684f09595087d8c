# Over 500 lines: one reader's state machine (open, pause, autosave, submit, replay) over one journal, kept whole.
"""One reader's session: the worklist, the open case, its timer, journal and autosave.

The session is the whole of the reader-study bookkeeping; the Slicer logic only feeds it
inputs (mouse and keyboard activity, segment edits, button presses) and hands it a function
that writes the current segmentation to a path. Everything the reader does is in the
journal (:mod:`.journal`) before the call returns; the segmentation is written atomically
every ``autosave_every_s`` seconds when it changed, and on submit.

Files in the reader's folder (``<results>/<reader>/``)::

    journal.jsonl                         every event, appended and fsync-ed
    <case>.<arm>.autosave.seg.nrrd        the reading in progress (replaced atomically)
    <case>.<arm>.seg.nrrd                 the submitted reading (written once, never replaced)
    .<case>.<arm>.submitting.seg.nrrd     a submit under way (staged; gone once it completes)

Reopening the session after a crash replays the journal: submitted readings are done, and
the reading that was open resumes with the wall and active seconds of its last event (at most
``autosave_every_s`` seconds before the crash: a checkpoint is journaled that often) and with
its last autosaved segmentation.

**Submit** writes in this order (:data:`SUBMIT_WRITES`): the segmentation to the staged file
(atomically), the intent (``submitting``, with the staged file's SHA-256) to the journal, a
hard link of the staged file as the final file (which never replaces a file), ``submitted`` to
the journal, then the staged file and the autosave are removed. A submit that fails (a full
disk) undoes its files and leaves the reading open, to be submitted again. A submit cut short
by a kill is finished when the session is reopened: an intent whose final or staged file
still has the journaled checksum becomes ``submitted`` (with ``recovered``); an intent without
such a file is dropped and the reading resumes from its autosave. A final file the journal does
not vouch for (none of its intents has that checksum) is moved aside to
``<case>.<arm>.unverified-<n>.seg.nrrd`` with a warning, never deleted, so it cannot keep the
reading from being submitted. A reading is ``submitted`` at most once: later events of a done
reading change nothing.

Events (``event`` field; all carry ``case``, ``arm``, ``position``, ``wall_s``, ``active_s``,
rounded to 0.1 s): ``opened`` (``resumed``: after a restart), ``idle`` (the active clock
stopped at the last input), ``active`` (input after an idle spell), ``paused``, ``resumed``,
``edited`` (``effect``, ``n_edits``), ``autosaved`` (``file``, ``n_edits``), ``checkpoint``, ``flagged``
(``flag``, ``comment``), ``submitting`` (``file``, ``sha256``), ``submitted`` (``file``, ``sha256``,
``recovered``), ``closed`` (the case left unsubmitted).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..core import atomic
from ..core.errors import BreastTumorSegError, InputError, OutputError
from .definition import ReaderStudy
from .journal import Journal, fsync_folder, read_events, utc_now
from .schedule import Reading, reading_order
from .timer import ReadingTimer

_log = logging.getLogger("breasttumorseg")

#: What a reader can flag a case for; "comment" carries only the free text.
FLAGS = ("no_tumor_visible", "image_quality", "comment")
JOURNAL_NAME = "journal.jsonl"

#: ``write_segmentation(path)`` writes the reader's current segmentation to ``path`` (.seg.nrrd).
SegmentationWriter = Callable[[Path], None]
#: The writes of a submit, in order; a submit finished on reopening makes the last four.
SUBMIT_WRITES = ("write staged", "journal intent", "link final", "journal submitted", "remove staged",
                 "remove autosave")
#: ``before_write(step)`` is called before each write of :data:`SUBMIT_WRITES` (fault-injection tests).
WriteHook = Callable[[str], None]


@dataclass
class ReadingRecord:
    """What the journal says about one reading (case x arm) of a reader."""

    case_id: str
    arm: str
    position: int
    status: str = "to do"  # "to do" | "in progress" | "done"
    wall_s: float = 0.0
    active_s: float = 0.0
    n_edits: int = 0
    effects: dict = field(default_factory=dict)
    flags: list = field(default_factory=list)
    n_pauses: int = 0
    n_idle: int = 0
    n_sittings: int = 0
    submitted_at: str | None = None
    #: SHA-256 of every segmentation a submit of this reading announced (``submitting``), last last.
    intents: list = field(default_factory=list)
    #: wall and active seconds of the last intent (a recovered submit journals these).
    intent_times: tuple = (0.0, 0.0)


def readings_file(folder: Path, case_id: str, arm: str, *, autosave: bool = False) -> Path:
    return folder / f"{case_id}.{arm}{'.autosave' if autosave else ''}.seg.nrrd"


def staged_file(folder: Path, case_id: str, arm: str) -> Path:
    """Where a submit stages the final segmentation before linking it into place."""
    return folder / f".{case_id}.{arm}.submitting.seg.nrrd"


def file_sha256(path: Path) -> str | None:
    """SHA-256 (hex) of a regular file; None when it is absent, not a regular file or unreadable."""
    try:
        with open(path, "rb", opener=_open_no_follow) as handle:
            if not _is_regular(handle):
                return None
            digest = hashlib.sha256()
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
            return digest.hexdigest()
    except OSError:
        return None


def journal_events(study: ReaderStudy, reader: str, *, warn=None) -> list[dict]:
    """A reader's journal events, checked against the study: every event must be this reader's
    and name a case and an arm of the study (else the study file changed under the readings,
    or a journal was copied from another reader: a one-line :class:`InputError`)."""
    path = study.reader_dir(reader) / JOURNAL_NAME
    events = read_events(path, warn=warn)
    cases = set(study.case_ids)
    for number, event in enumerate(events, start=1):
        if event.get("reader", reader) != reader:
            raise InputError(f"event {number} is of reader '{event.get('reader')}', not '{reader}'", path)
        if event.get("case") not in cases:
            raise InputError(f"event {number} is a reading of case '{event.get('case')}', which is not in the study "
                             "(was the study file changed after reading began?)", path)
        if event.get("arm") not in study.arms:
            raise InputError(f"event {number} is a reading in arm '{event.get('arm')}', which is not in the study",
                             path)
    return events


def replay(events: list[dict], order: list[Reading]) -> dict[tuple[str, str], ReadingRecord]:
    """The state of every reading in ``order`` after ``events`` (a reader's journal)."""
    records = {r.key: ReadingRecord(r.case_id, r.arm, r.position) for r in order}
    for event in events:
        record = records.get((event.get("case"), event.get("arm")))
        if record is None:
            continue
        kind = event["event"]
        if record.status == "done":
            continue  # nothing after the submit changes a reading
        if "wall_s" in event:
            record.wall_s, record.active_s = float(event["wall_s"]), float(event["active_s"])
        if kind == "opened":
            record.n_sittings += 1
            if record.status == "to do":
                record.status = "in progress"
        elif kind == "edited":
            record.n_edits = int(event.get("n_edits", record.n_edits + 1))
            effect = event.get("effect") or "unknown"
            record.effects[effect] = record.effects.get(effect, 0) + 1
        elif kind == "paused":
            record.n_pauses += 1
        elif kind == "idle":
            record.n_idle += 1
        elif kind == "flagged":
            record.flags.append({"flag": event.get("flag"), "comment": event.get("comment", "")})
        elif kind == "submitting":
            record.intents.append(event.get("sha256"))
            record.intent_times = (record.wall_s, record.active_s)
        elif kind == "submitted":  # a reading counts once: nothing after this changes it
            record.status = "done"
            record.submitted_at = event.get("time")
    return records


class OpenReading:
    """The case on screen: its reading, timer and segmentation writer."""

    def __init__(self, reading: Reading, record: ReadingRecord, timer: ReadingTimer,
                 write_segmentation: SegmentationWriter, resume_file: Path | None):
        self.reading = reading
        self.record = record
        self.timer = timer
        self.write_segmentation = write_segmentation
        self.resume_file = resume_file  # the autosave to load instead of a fresh start, if any
        self.dirty = False
        self.idle_journaled = False
        self.last_save = timer.now()


class ReaderSession:
    """One reader working through a study (see the module docstring)."""

    def __init__(self, study: ReaderStudy, reader: str, *, clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], str] = utc_now, warn=None, before_write: WriteHook | None = None):
        self.study = study
        self.reader = study.check_reader(reader)
        self.folder = study.reader_dir(reader)
        self._clock = clock
        self._warn = warn or _log.warning
        self._before_write = before_write or (lambda step: None)
        self.order = reading_order(study, reader)
        _check_reader_folder(self.folder, study.results_dir)
        self.journal = Journal(self.folder / JOURNAL_NAME, warn=warn, now=now)
        self.current: OpenReading | None = None
        try:
            self.records = replay(journal_events(study, reader, warn=warn), self.order)
            self._finish_interrupted_submits()
            self._remove_interrupted_writes()
        except Exception:
            self.journal.close()
            raise

    # --- the worklist ---------------------------------------------------------------------
    def worklist(self) -> list[ReadingRecord]:
        """Every reading of this reader in reading order, with its status and times."""
        return [self.records[r.key] for r in self.order]

    def next_reading(self) -> Reading | None:
        """The reading to open next: one left in progress first, else the first not done."""
        for status in ("in progress", "to do"):
            for reading in self.order:
                if self.records[reading.key].status == status:
                    return reading
        return None

    @property
    def finished(self) -> bool:
        return self.next_reading() is None

    # --- one case -------------------------------------------------------------------------
    def open_next(self, write_segmentation: SegmentationWriter) -> OpenReading:
        """Open the next reading and start its timer.

        ``resume_file`` of the result is the autosaved segmentation to load when the reading
        resumes after a restart (None for a fresh start: an empty segmentation in the manual
        arm, the AI's in the assisted arm).
        """
        if self.current is not None:
            raise InputError(f"case '{self.current.reading.case_id}' is still open; submit or close it first")
        reading = self.next_reading()
        if reading is None:
            raise InputError(f"reader '{self.reader}' has read every case of the study", self.study.path)
        record = self.records[reading.key]
        resumed = record.status == "in progress"
        timer = ReadingTimer(self.study.idle_after_s, clock=self._clock, wall_s=record.wall_s,
                             active_s=record.active_s)
        resume_file = self.resume_file(reading)
        self.current = OpenReading(reading, record, timer, write_segmentation, resume_file)
        timer.start()
        self._log("opened", resumed=resumed, autosave=resume_file.name if resume_file else None)
        record.status = "in progress"
        record.n_sittings += 1
        return self.current

    def resume_file(self, reading: Reading) -> Path | None:
        """The autosaved segmentation a reading left in progress resumes from (None: start afresh).

        An autosave that is a symbolic link or has other hard links is refused (one line): the
        session wrote it as a plain file, so it is not the reader's work."""
        if self.records[reading.key].status != "in progress":
            return None
        path = readings_file(self.folder, reading.case_id, reading.arm, autosave=True)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise InputError(f"autosave cannot be read ({error.strerror})", path) from None
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            raise InputError("autosave is not a plain file of this session (a link or another file's hard link); "
                             "move it away to start this reading afresh", path)
        return path

    def input(self) -> None:
        """The reader moved the mouse, pressed a key or scrolled (counts as activity)."""
        reading = self._open()
        if reading.timer.input():
            reading.idle_journaled = False
            self._log("active")

    def edited(self, effect: str | None = None) -> None:
        """The segmentation changed (``effect``: the Segment Editor effect that changed it)."""
        reading = self._open()
        self.input()
        reading.record.n_edits += 1
        effect = effect or "unknown"
        reading.record.effects[effect] = reading.record.effects.get(effect, 0) + 1
        reading.dirty = True
        self._log("edited", effect=effect, n_edits=reading.record.n_edits)

    def pause(self) -> None:
        reading = self._open()
        if not reading.timer.paused:
            reading.timer.pause()
            reading.record.n_pauses += 1
            self._log("paused")

    def resume(self) -> None:
        reading = self._open()
        if reading.timer.paused:
            reading.timer.resume()
            reading.idle_journaled = False
            self._log("resumed")

    def flag(self, flag: str, comment: str = "") -> None:
        """Flag the open case: "no_tumor_visible", "image_quality" or "comment" (free text)."""
        if flag not in FLAGS:
            raise InputError(f"unknown flag '{flag}' (flags: {', '.join(FLAGS)})")
        reading = self._open()
        reading.record.flags.append({"flag": flag, "comment": comment})
        self._log("flagged", flag=flag, comment=str(comment))

    def tick(self) -> list[str]:
        """Call about once a second: journals an idle spell once it starts, and autosaves
        (or, with nothing new to save, journals a checkpoint of the times) when due.
        Returns the events journaled."""
        reading = self.current
        if reading is None:
            return []
        events = []
        timer = reading.timer
        if timer.idle() and not reading.idle_journaled:
            reading.idle_journaled = True
            reading.record.n_idle += 1
            self._log("idle")
            events.append("idle")
        if timer.now() - reading.last_save >= self.study.autosave_every_s:
            events.append(self.autosave())
        return events

    def autosave(self) -> str:
        """Write the segmentation in progress now (if it changed) and journal the times."""
        reading = self._open()
        reading.last_save = reading.timer.now()
        if not reading.dirty:
            self._log("checkpoint")
            return "checkpoint"
        path = readings_file(self.folder, reading.reading.case_id, reading.reading.arm, autosave=True)
        with atomic.atomic_path(path) as tmp:
            reading.write_segmentation(tmp)
        reading.dirty = False
        self._log("autosaved", file=path.name, n_edits=reading.record.n_edits)
        return "autosaved"

    def submit(self) -> Path:
        """Write the final segmentation (never replacing one) and close the case as done.

        The order of writes is in the module docstring. On failure (:class:`OutputError`, one
        line) nothing of this submit is left on disk but a journaled intent that no file
        matches, and the reading stays open to be submitted again."""
        reading = self._open()
        case_id, arm = reading.reading.case_id, reading.reading.arm
        final = readings_file(self.folder, case_id, arm)
        staged = staged_file(self.folder, case_id, arm)
        now = reading.timer.now()
        times = (round(reading.timer.wall_s(now), 1), round(reading.timer.active_s(now), 1))
        linked = False
        try:
            self._before_write("write staged")
            with atomic.atomic_path(staged) as tmp:
                reading.write_segmentation(tmp)
            digest = file_sha256(staged)
            self._before_write("journal intent")
            self._append(reading.reading, times, "submitting", file=final.name, sha256=digest)
            self._before_write("link final")
            linked = self._link_final(staged, final, digest)
            self._before_write("journal submitted")
            self._append(reading.reading, times, "submitted", file=final.name, sha256=digest)
        except Exception as error:
            if linked:
                final.unlink(missing_ok=True)
            staged.unlink(missing_ok=True)
            if isinstance(error, BreastTumorSegError):
                raise
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            raise OutputError(f"the reading could not be submitted ({reason}); it is still open: "
                              "submit it again", final) from None
        reading.timer.stop()
        reading.record.wall_s, reading.record.active_s = times
        reading.record.status = "done"
        self.current = None
        self._remove_after_submit(case_id, arm)
        return final

    def close_case(self) -> None:
        """Leave the open case unsubmitted (autosaved first); it resumes next time."""
        reading = self.current
        if reading is None:
            return
        if reading.dirty:
            self.autosave()
        reading.timer.stop()
        self._log("closed")
        self.current = None

    def close(self) -> None:
        """Close the open case (if any) and the journal."""
        try:
            self.close_case()
        finally:
            self.journal.close()

    def status(self) -> dict:
        """The open case for a display: case, arm, position, times (s), state, edits."""
        reading = self.current
        if reading is None:
            return {"open": False, "done": sum(r.status == "done" for r in self.records.values()),
                    "total": len(self.order)}
        timer = reading.timer
        now = timer.now()
        return {"open": True, "case": reading.reading.case_id, "arm": reading.reading.arm,
                "position": reading.reading.position, "total": len(self.order),
                "done": sum(r.status == "done" for r in self.records.values()),
                "wall_s": round(timer.wall_s(now), 1), "active_s": round(timer.active_s(now), 1),
                "paused": timer.paused, "idle": timer.idle(now), "n_edits": reading.record.n_edits}

    # --- internals ------------------------------------------------------------------------
    def _link_final(self, staged: Path, final: Path, digest: str | None) -> bool:
        """Link the staged file as the final one; True when this call made the link. A final
        file already there is this submit's (same checksum: a repeated submit) or refused."""
        try:
            os.link(staged, final)  # never replaces a file
        except FileExistsError:
            if digest is not None and file_sha256(final) == digest:
                return False
            raise OutputError("this reading was already submitted; an earlier result is never replaced",
                              final) from None
        fsync_folder(self.folder)
        return True

    def _finish_interrupted_submits(self) -> None:
        """Finish or drop every submit a kill cut short (see the module docstring)."""
        for reading in self.order:
            record = self.records[reading.key]
            case_id, arm = reading.case_id, reading.arm
            final = readings_file(self.folder, case_id, arm)
            staged = staged_file(self.folder, case_id, arm)
            if record.status == "done":
                self._remove_after_submit(case_id, arm)
                continue
            on_disk = file_sha256(final) if os.path.lexists(final) else None
            if on_disk is None and os.path.lexists(final):
                on_disk = "unreadable"
            intent = record.intents[-1] if record.intents else None
            if on_disk is not None and on_disk in record.intents:
                self._complete(reading, record, on_disk)
            elif on_disk is None and intent is not None and file_sha256(staged) == intent:
                self._before_write("link final")
                self._link_final(staged, final, intent)
                self._complete(reading, record, intent)
            elif on_disk is not None:
                self._set_aside(final)

    def _complete(self, reading: Reading, record: ReadingRecord, digest: str) -> None:
        final = readings_file(self.folder, reading.case_id, reading.arm)
        self._before_write("journal submitted")
        event = self._append(reading, record.intent_times, "submitted", file=final.name, sha256=digest,
                             recovered=True)
        record.status, record.submitted_at = "done", event["time"]
        record.wall_s, record.active_s = record.intent_times
        self._warn(f"{final}: a submit cut short was completed on reopening ({reading.case_id}, {reading.arm})")
        self._remove_after_submit(reading.case_id, reading.arm)

    def _set_aside(self, final: Path) -> None:
        number = 1
        stem = final.name[:-len(".seg.nrrd")]
        while os.path.lexists(aside := final.with_name(f"{stem}.unverified-{number}.seg.nrrd")):
            number += 1
        os.replace(final, aside)
        fsync_folder(self.folder)
        self._warn(f"{final}: no submit in the journal wrote this file; it was moved to {aside.name} "
                   "and the reading can be submitted")

    def _remove_after_submit(self, case_id: str, arm: str) -> None:
        """The staged file and the autosave of a done reading: superseded by the final file.
        Failing here loses nothing (the next session removes them)."""
        for step, path in (("remove staged", staged_file(self.folder, case_id, arm)),
                           ("remove autosave", readings_file(self.folder, case_id, arm, autosave=True))):
            try:
                self._before_write(step)
                path.unlink(missing_ok=True)
            except OSError as error:
                self._warn(f"{path}: could not be removed after the submit ({error.strerror}); "
                           "it is removed when the session is reopened")

    def _remove_interrupted_writes(self) -> None:
        """Temporary files of a write cut short by a crash: incomplete by construction (the
        journal's lock says no other session writes here), and never the only copy (a staged
        file a submit still needed was linked into place by :meth:`_finish_interrupted_submits`)."""
        for leftover in [*self.folder.glob(".*.part*"), *self.folder.glob(".*.submitting.seg.nrrd")]:
            leftover.unlink(missing_ok=True)

    def _open(self) -> OpenReading:
        if self.current is None:
            raise InputError("no case is open; start the next case first")
        return self.current

    def _log(self, event: str, **fields) -> None:
        """Journal an event of the open reading with its times now."""
        reading = self.current
        timer = reading.timer
        now = timer.now()
        wall, active = round(timer.wall_s(now), 1), round(timer.active_s(now), 1)
        reading.record.wall_s, reading.record.active_s = wall, active
        self._append(reading.reading, (wall, active), event, **fields)

    def _append(self, reading: Reading, times: tuple, event: str, **fields) -> dict:
        wall, active = times
        return self.journal.append(event, reader=self.reader, case=reading.case_id, arm=reading.arm,
                                   position=reading.position, wall_s=wall, active_s=active, **fields)


def _check_reader_folder(folder: Path, results: Path) -> None:
    """The reader's folder must be a real folder right inside the results folder (a symbolic
    link could send the journal and segmentations elsewhere)."""
    if os.path.islink(folder) or (folder.exists() and folder.resolve().parent != results.resolve()):
        raise InputError("reader folder is a symbolic link or leads outside the results folder", folder)


def _open_no_follow(path, flags):
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0))


def _is_regular(handle) -> bool:
    return stat.S_ISREG(os.fstat(handle.fileno()).st_mode)
