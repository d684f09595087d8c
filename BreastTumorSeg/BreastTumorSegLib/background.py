"""Running the backend's CLI in a background process, without Qt.

Inside Slicer the segmentation runs as ``python -m breasttumorseg segment ...
--progress-lines`` (Slicer's own Python) so the application stays responsive and Cancel
can stop it at once. This module builds the command line, writes the phases to a
temporary folder, starts the process with :class:`subprocess.Popen`, and parses the JSON
progress lines. It never blocks: the widget's QTimer calls :meth:`BackgroundSegmentation.poll`
and shows ``step`` / ``progress``; :meth:`cancel` kills the process.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Optional

from breasttumorseg.core.errors import BreastTumorSegError, Cancelled
from breasttumorseg.core.resources import MODULE_FOLDER

#: Folder holding the ``breasttumorseg`` package (put on the child's PYTHONPATH).

RUNNING, SUCCEEDED, FAILED, CANCELLED = "running", "succeeded", "failed", "cancelled"


def pythonExecutable() -> str:
    """The Python to run the backend with: Slicer's ``PythonSlicer`` when inside Slicer, else ours."""
    try:
        import slicer

        if hasattr(slicer, "app"):
            found = shutil.which("PythonSlicer", path=os.path.dirname(sys.executable)) or shutil.which("PythonSlicer")
            if found:
                return found
    except ImportError:  # pragma: no cover
        pass
    return sys.executable


def segmentCommand(python: str, request, outputDir) -> list:
    """The argument list of ``python -m breasttumorseg segment`` running ``request`` (a
    :class:`~breasttumorseg.run.request.SegmentationRequest` reading phase files) into ``outputDir``."""
    return [str(python), "-m", "breasttumorseg", "segment", *request.to_args(), "--output", str(outputDir),
            "--quiet", "--progress-lines"]


def parseProgressLine(line: str) -> Optional[tuple]:
    """``(step, fraction)`` from one ``{"step": ..., "progress": ...}`` line, else None."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
        return str(record["step"]), float(record["progress"])
    except (ValueError, KeyError, TypeError):
        return None


class BackgroundSegmentation:
    """One background run of a :class:`~breasttumorseg.run.request.SegmentationRequest` whose
    study is in memory.

    ``start()`` writes the phases (NRRD, on the study's grid) and starts the CLI;
    ``poll()`` returns the state (running / succeeded / failed / cancelled) and updates
    ``step``, ``progress`` (0..1) and, on failure, ``error`` (one line);
    ``cancel()`` kills the process; ``result()`` reads the outputs after success.
    """

    def __init__(self, request, pythonExecutable: Optional[str] = None):
        self.request = request
        self.study = request.study
        self.python = pythonExecutable or globals()["pythonExecutable"]()
        self.state = "not started"
        self.step = ""
        self.progress = 0.0
        self.error = ""
        self.folder: Optional[Path] = None
        self.process: Optional[subprocess.Popen] = None
        self._lines: "queue.Queue[str]" = queue.Queue()
        self._reader: Optional[threading.Thread] = None

    # ------------------------------------------------------------------------- life cycle
    def start(self) -> None:
        from breasttumorseg.reporting.writing import write_image

        self.folder = Path(tempfile.mkdtemp(prefix="BreastTumorSeg-"))
        try:
            files = []
            for index, phase in enumerate(self.study.phases):
                path = self.folder / "phases" / f"phase_{index}.nrrd"
                write_image(path, phase, self.study.geometry)
                files.append(path)
            command = segmentCommand(self.python, self.request.with_phase_files(files), self.outputDir)
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join([str(MODULE_FOLDER)] + [p for p in [env.get("PYTHONPATH")] if p])
            env["PYTHONUNBUFFERED"] = "1"
            self._stderr = open(self.folder / "stderr.txt", "w+", encoding="utf-8")
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self._stderr,
                                            stdin=subprocess.DEVNULL,
                                            text=True, bufsize=1, env=env, cwd=str(self.folder))
        except BaseException:
            self.cleanup()
            raise
        self.command = command
        self.state = RUNNING
        self._reader = threading.Thread(target=self._readLines, daemon=True)
        self._reader.start()

    @property
    def outputDir(self) -> Path:
        return self.folder / "output"

    def _readLines(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line)

    def poll(self) -> str:
        """Drain progress lines and return the state; never blocks."""
        while True:
            try:
                parsed = parseProgressLine(self._lines.get_nowait())
            except queue.Empty:
                break
            if parsed:
                self.step, self.progress = parsed
        if self.state != RUNNING or self.process is None:
            return self.state
        code = self.process.poll()
        if code is None:
            return self.state
        if self._reader is not None:
            self._reader.join(timeout=5)
            self.poll_remaining()
        # imported here: the outputs module pulls the pipeline, which Slicer may not have installed yet
        from breasttumorseg.reporting.outputs import PROBABILITY_FILE

        if code == 0 and (self.outputDir / PROBABILITY_FILE).exists():
            self.state, self.progress = SUCCEEDED, 1.0
        else:
            self.state = FAILED
            self.error = self._errorLine(code)
        return self.state

    def poll_remaining(self) -> None:
        while not self._lines.empty():
            parsed = parseProgressLine(self._lines.get_nowait())
            if parsed:
                self.step, self.progress = parsed

    def wait(self, timeout: Optional[float] = None) -> str:
        """Block until the process ends (scripts and tests); returns the final state."""
        if self.process is not None and self.state == RUNNING:
            self.process.wait(timeout)
        return self.poll()

    def cancel(self) -> None:
        """Stop the process at once (kill) and forget its outputs."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.state in (RUNNING, "not started"):
            self.state = CANCELLED
            self.error = "cancelled by the user"
        self.cleanup()

    def cleanup(self) -> None:
        """Remove the temporary folder (phases and outputs)."""
        stderr = getattr(self, "_stderr", None)
        if stderr is not None and not stderr.closed:
            stderr.close()
        if self.process is not None and self.process.stdout is not None and self.process.poll() is not None:
            self.process.stdout.close()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    # ------------------------------------------------------------------------- results
    def result(self):
        """``(probability, mask, geometry, settings, model name)`` of a succeeded run."""
        from breasttumorseg.reporting.outputs import model_label, read_outputs, settings_from_record

        if self.state == CANCELLED:
            raise Cancelled()
        if self.state != SUCCEEDED:
            # the CLI's own one-line error already names the file or option
            raise BreastTumorSegError(self.error or f"the segmentation did not finish ({self.state})")
        probability, mask, geometry, record = read_outputs(self.outputDir)
        return probability, mask, geometry, settings_from_record(record), model_label(record)

    def _errorLine(self, code: int) -> str:
        """The CLI's one-line error (``breasttumorseg: error: ...``), else the last stderr line."""
        try:
            self._stderr.flush()
            text = (self.folder / "stderr.txt").read_text(encoding="utf-8", errors="replace")
        except (OSError, ValueError):
            text = ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        for line in reversed(lines):
            if line.startswith("breasttumorseg: error: "):
                return line[len("breasttumorseg: error: "):]
        if code < 0:
            return f"the segmentation process was stopped (signal {-code})"
        return lines[-1] if lines else f"the segmentation process failed (exit code {code})"

    @property
    def details(self) -> str:
        """Everything the process wrote on stderr (for the log)."""
        try:
            return (self.folder / "stderr.txt").read_text(encoding="utf-8", errors="replace")
        except (OSError, TypeError):
            return ""


__all__ = ["BackgroundSegmentation", "segmentCommand", "parseProgressLine", "pythonExecutable",
           "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "BreastTumorSegError"]
