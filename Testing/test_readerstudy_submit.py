"""Submit survives any kill and a full disk at any write: a reading is never lost, never
counted twice, never stuck (reader-study backend, no Slicer).

Kills are real SIGKILLs of a child process stopped at a chosen write of the submit (the
session's ``before_write`` hook tells the parent where it stands, then waits to be killed);
full disks are an ENOSPC raised at each write, and a real write cut short by the file-size
limit (the same partial write a full disk makes).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from breasttumorseg.core.errors import OutputError
from breasttumorseg.readerstudy import definition
from breasttumorseg.readerstudy.journal import read_events
from breasttumorseg.readerstudy.session import SUBMIT_WRITES, ReaderSession, readings_file, replay, staged_file
from breasttumorseg.reporting.writing import write_segmentation_nrrd
from test_readerstudy_session import GRID, Clock, make_study

ROOT = Path(__file__).resolve().parents[1]

#: The reader's work: painted, autosaved, painted more, then submitted.
AUTOSAVED = (slice(1, 3), slice(2, 5), slice(2, 5))
SUBMITTED = (slice(1, 4), slice(2, 8), slice(2, 9))


def masks():
    autosaved = np.zeros(GRID.shape_zyx, np.uint8)
    autosaved[AUTOSAVED] = 1
    submitted = np.zeros(GRID.shape_zyx, np.uint8)
    submitted[SUBMITTED] = 1
    return autosaved, submitted


def read_mask(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def read_and_submit(session: ReaderSession):
    """Open the next reading, paint, autosave, paint more; returns (reading, submitted mask)."""
    autosaved, submitted = masks()
    current = {"mask": autosaved}
    reading = session.open_next(lambda path: write_segmentation_nrrd(path, current["mask"], GRID)).reading
    session.edited("Paint")
    session.autosave()
    current["mask"] = submitted
    session.edited("Paint")
    return reading, submitted


def submitted_events(folder: Path, reading) -> list[dict]:
    return [e for e in read_events(folder / "journal.jsonl")
            if e["event"] == "submitted" and (e["case"], e["arm"]) == reading.key]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or ".unverified" in p.name)


def check_consistent(study, reading, submitted_mask, *, expect_done: bool) -> None:
    """After any interruption: the reading is done exactly once with the submitted mask, or in
    progress with no final file and submittable; and reopening again changes nothing."""
    folder = study.reader_dir("R1")
    warnings = []
    session = ReaderSession(study, "R1", clock=Clock(), warn=warnings.append)
    try:
        final = readings_file(folder, reading.case_id, reading.arm)
        record = session.records[reading.key]
        assert leftovers(folder) == []
        if expect_done:
            assert record.status == "done" and session.next_reading() != reading
            assert np.array_equal(read_mask(final), submitted_mask)
            assert not readings_file(folder, reading.case_id, reading.arm, autosave=True).exists()
        else:
            assert record.status == "in progress" and session.next_reading() == reading and not final.exists()
            resumed = session.open_next(lambda path: write_segmentation_nrrd(path, submitted_mask, GRID))
            assert resumed.reading == reading and resumed.resume_file is not None
            session.submit()
            assert np.array_equal(read_mask(final), submitted_mask)
    finally:
        session.close()
    assert len(submitted_events(folder, reading)) == 1
    lines = (folder / "journal.jsonl").read_bytes()
    ReaderSession(study, "R1", clock=Clock()).close()  # a second replay writes nothing
    assert (folder / "journal.jsonl").read_bytes() == lines
    records = replay(read_events(folder / "journal.jsonl"), schedule_of(study))
    assert sum(r.status == "done" for r in records.values()) == 1


def schedule_of(study):
    from breasttumorseg.readerstudy.schedule import reading_order

    return reading_order(study, "R1")


# ----------------------------------------------------------------------------- the stuck reading of issue 15
def test_a_final_file_without_its_submitted_event_does_not_block_the_reading(tmp_path):
    """The state a kill between the link and the journal left before: the final file is there,
    the journal says in progress. The reading must be submittable, nothing deleted."""
    study = definition.read_study(make_study(tmp_path))
    session = ReaderSession(study, "R1", clock=Clock())
    reading, submitted = read_and_submit(session)
    final = readings_file(study.reader_dir("R1"), reading.case_id, reading.arm)
    write_segmentation_nrrd(final, submitted, GRID)
    session.journal.close()                                  # the kill: no closed, no submitted
    warnings = []
    again = ReaderSession(study, "R1", clock=Clock(), warn=warnings.append)
    try:
        assert again.next_reading() == reading
        again.open_next(lambda path: write_segmentation_nrrd(path, submitted, GRID))
        assert again.submit() == final
        assert again.next_reading() != reading
    finally:
        again.close()
    aside = final.with_name(f"{reading.case_id}.{reading.arm}.unverified-1.seg.nrrd")
    assert np.array_equal(read_mask(aside), submitted)      # moved aside, not deleted
    assert any(aside.name in w for w in warnings)
    assert len(submitted_events(study.reader_dir("R1"), reading)) == 1


# ----------------------------------------------------------------------------- SIGKILL at every write
KILLED_READER = textwrap.dedent("""
    import sys, time
    import numpy as np
    sys.path.insert(0, {backend!r})
    sys.path.insert(0, {testing!r})
    from breasttumorseg.readerstudy.definition import read_study
    from breasttumorseg.readerstudy.session import ReaderSession
    from test_readerstudy_submit import read_and_submit

    def stop_at(step, target={target!r}):
        if step == target:
            print("at " + step, flush=True)
            time.sleep(600)                    # the parent kills us here, before this write

    session = ReaderSession(read_study({study!r}), "R1", before_write=stop_at)
    if {in_submit!r}:
        read_and_submit(session)
        session.submit()
    print("done", flush=True)
    time.sleep(600)
""")


def run_until_killed(tmp_path, study_path, target: str, in_submit: bool = True) -> str:
    """Run a reader in a child, SIGKILL it at the write ``target``; returns where it stood."""
    script = tmp_path / f"reader-{target.replace(' ', '-')}-{in_submit}.py"
    script.write_text(KILLED_READER.format(backend=str(ROOT / "BreastTumorSeg"), testing=str(ROOT / "Testing"),
                                           study=str(study_path), target=target, in_submit=in_submit))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = process.stdout.readline().decode().strip()
    finally:
        os.kill(process.pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert line, stderr.decode()[-2000:]
    return line


@pytest.mark.parametrize("step", [*SUBMIT_WRITES, "after"])
def test_sigkill_at_every_write_of_submit_resumes_to_one_consistent_state(tmp_path, step):
    study_path = make_study(tmp_path)
    where = run_until_killed(tmp_path, study_path, step)
    assert where == ("done" if step == "after" else f"at {step}")
    study = definition.read_study(study_path)
    reading = ReaderSession(study, "R1", clock=Clock())
    try:
        first = reading.order[0]
    finally:
        reading.close()
    _, submitted = masks()
    # a submit whose intent was journaled is finished; one killed before that is not
    expect_done = step not in ("write staged", "journal intent")
    check_consistent(study, first, submitted, expect_done=expect_done)


def test_a_kill_while_a_submit_is_being_finished_on_reopening_is_finished_next_time(tmp_path):
    study_path = make_study(tmp_path)
    assert run_until_killed(tmp_path, study_path, "link final") == "at link final"
    # the reopening session finishes the submit: kill it before it links the staged file
    assert run_until_killed(tmp_path, study_path, "link final", in_submit=False) == "at link final"
    study = definition.read_study(study_path)
    first = schedule_of(study)[0]
    _, submitted = masks()
    check_consistent(study, first, submitted, expect_done=True)


def test_a_kill_between_link_and_journal_on_reopening_counts_the_reading_once(tmp_path):
    study_path = make_study(tmp_path)
    assert run_until_killed(tmp_path, study_path, "journal submitted") == "at journal submitted"
    study = definition.read_study(study_path)
    first = schedule_of(study)[0]
    # reopen, but die before the recovered 'submitted' is journaled: the final file stays, vouched for
    process = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT / 'BreastTumorSeg')!r})
        from breasttumorseg.readerstudy.definition import read_study
        from breasttumorseg.readerstudy.session import ReaderSession
        def die(step):
            if step == "journal submitted":
                os.kill(os.getpid(), signal.SIGKILL)
        ReaderSession(read_study({str(study_path)!r}), "R1", before_write=die)
    """)], capture_output=True, timeout=120, check=False)
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()[-2000:]
    _, submitted = masks()
    check_consistent(study, first, submitted, expect_done=True)


# ----------------------------------------------------------------------------- full disk at every write
@pytest.mark.parametrize("step", SUBMIT_WRITES)
def test_disk_full_at_every_write_of_submit_keeps_the_reading_open_or_done(tmp_path, step):
    study = definition.read_study(make_study(tmp_path))
    folder = study.reader_dir("R1")

    def full_disk(at):
        if at == step and not fired:
            fired.append(at)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    fired = []
    warnings = []
    session = ReaderSession(study, "R1", clock=Clock(), warn=warnings.append, before_write=full_disk)
    try:
        reading, submitted = read_and_submit(session)
        final = readings_file(folder, reading.case_id, reading.arm)
        if step in ("remove staged", "remove autosave"):
            assert session.submit() == final           # durable already: the leftover goes next time
            assert session.current is None and any("could not be removed" in w for w in warnings)
        else:
            with pytest.raises(OutputError) as error:
                session.submit()
            message = str(error.value)
            assert "No space left on device" in message and "still open" in message and "\n" not in message
            assert session.current is not None and session.current.reading == reading
            assert not final.exists() and not staged_file(folder, reading.case_id, reading.arm).exists()
            assert submitted_events(folder, reading) == []
            assert session.submit() == final               # space freed: the same reading, submitted once
        assert fired == [step]
    finally:
        session.close()
    check_consistent(study, reading, submitted, expect_done=True)


JOURNAL_ON_A_FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    sys.path.insert(0, {backend!r})
    from breasttumorseg.core.errors import OutputError
    from breasttumorseg.readerstudy.journal import Journal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # a write past the limit fails with EFBIG instead
    journal = Journal({path!r})
    journal.append("opened", case="c1")
    size = journal.path.stat().st_size
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 20, hard))   # room for 20 bytes of the next line
    try:
        journal.append("edited", case="c1", effect="Paint", padding="x" * 100)
    except OutputError as error:
        print("refused:", error, flush=True)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))        # space again
    journal.append("submitted", case="c1")
    journal.close()
""")


def test_a_journal_line_cut_short_by_a_full_disk_is_removed_before_the_next_event(tmp_path):
    path = tmp_path / "journal.jsonl"
    script = JOURNAL_ON_A_FULL_DISK.format(backend=str(ROOT / "BreastTumorSeg"), path=str(path))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused:" in done.stdout and "journal event could not be written" in done.stdout
    assert [e["event"] for e in read_events(path)] == ["opened", "submitted"]  # no fragment, no glued line


# ----------------------------------------------------------------------------- the reader's files, confined
def test_a_reader_folder_journal_or_autosave_that_is_a_link_is_refused(tmp_path):
    from breasttumorseg.core.errors import InputError

    study = definition.read_study(make_study(tmp_path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder = study.reader_dir("R1")
    folder.parent.mkdir(parents=True)
    os.symlink(elsewhere, folder)                                      # the reader's folder leads out
    with pytest.raises(InputError, match="symbolic link or leads outside the results folder"):
        ReaderSession(study, "R1")
    folder.unlink()
    folder.mkdir()
    os.symlink(elsewhere / "journal.jsonl", folder / "journal.jsonl")  # the journal leads out
    with pytest.raises(OutputError, match="journal is a symbolic link"):
        ReaderSession(study, "R1")
    assert not (elsewhere / "journal.jsonl").exists()
    (folder / "journal.jsonl").unlink()
    session = ReaderSession(study, "R1", clock=Clock())
    reading = session.open_next(lambda path: None).reading
    session.edited("Paint")
    session.journal.close()                                            # killed with the case open
    autosave = readings_file(folder, reading.case_id, reading.arm, autosave=True)
    write_segmentation_nrrd(elsewhere / "other.seg.nrrd", np.zeros(GRID.shape_zyx, np.uint8), GRID)
    for link in (os.symlink, os.link):  # the autosave leads out: a symbolic link, a hard link of a file out
        link(elsewhere / "other.seg.nrrd", autosave)
        again = ReaderSession(study, "R1", clock=Clock())
        try:
            with pytest.raises(InputError, match="autosave is not a plain file"):
                again.open_next(lambda path: None)
        finally:
            again.close()
        autosave.unlink()
