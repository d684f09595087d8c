"""Exceptions the backend raises for problems a user can fix.

Every user-facing failure is a :class:`BreastTumorSegError`; its ``str()`` is one
line that names the file (or option) and the problem. The CLI prints exactly that
line and exits non-zero; the Slicer logic shows it in one message box.
"""

from __future__ import annotations

from pathlib import Path


class BreastTumorSegError(Exception):
    """A problem with the user's input, options or environment (not a bug)."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class InputError(BreastTumorSegError):
    """An input file or folder is missing, unreadable or unsuitable."""


class GeometryError(InputError):
    """Phases or masks cannot be put on one voxel grid."""


class MissingTimesError(BreastTumorSegError):
    """A computation needs acquisition times and none were given."""


class ModelError(BreastTumorSegError):
    """A model, its weights or its card are missing, altered or inconsistent."""


class OutputError(BreastTumorSegError):
    """The output location cannot be written as asked."""


class Cancelled(BreastTumorSegError):
    """The user cancelled a long-running step."""

    def __init__(self, message: str = "cancelled by the user"):
        super().__init__(message)


def itk_error_reason(error: Exception) -> str:
    """The most informative single line of an ITK (SimpleITK) error message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if line.lower().startswith("description:"):
            return line.split(":", 1)[1].strip()
    return lines[-1] if lines else type(error).__name__
