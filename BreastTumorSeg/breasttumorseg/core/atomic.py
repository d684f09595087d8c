"""Atomic writes: a reader never sees a half-written file or output folder.

Files are written to a temporary name in the same folder and renamed into place
(``os.replace`` is atomic on POSIX within one file system). Output folders are built
as a hidden sibling and renamed into place only when everything in them succeeded.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import OutputError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The temporary name keeps the suffixes of ``path`` (writers choose the format by
    extension, e.g. ``.nii.gz``). On error the temporary file is removed and ``path``
    is untouched; a file-system error (a full disk) becomes a one-line :class:`OutputError`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"could not be written (cannot create its folder: {error.strerror})", path) from None
    suffix = "".join(path.suffixes)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}", dir=path.parent)
    except OSError as error:
        raise OutputError(f"could not be written ({error.strerror})", path) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fsync_file(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        os.replace(tmp_path, path)
    except OSError as error:
        raise OutputError(f"could not be written ({error.strerror or error})", path) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, value, indent: int = 2) -> None:
    """Write ``value`` as JSON to ``path`` atomically, after :func:`jsonable`."""
    write_text(path, json.dumps(jsonable(value), indent=indent) + "\n")


def jsonable(value):
    """``value`` in plain JSON types: numpy scalars and arrays to Python, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # numpy scalar or array
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def check_output_dir(path: str | Path, overwrite: bool) -> Path:
    """Refuse an existing non-empty output folder unless ``overwrite``; before any work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError("exists and is not a folder", path)
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputError("output folder exists and is not empty (use --overwrite to replace it)", path)
    return path


@contextlib.contextmanager
def atomic_output_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build an output folder in a hidden sibling; move it into place on success.

    With ``overwrite`` an existing folder is replaced only after the new one is complete.
    On error nothing is left behind and an existing folder is untouched; a file-system
    error (a full disk) becomes a one-line :class:`OutputError`.
    """
    path = check_output_dir(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    except OSError as error:
        raise OutputError(f"could not be written ({error.strerror or error})", path) from None
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "previous")
        os.replace(staging, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as error:
        raise OutputError(f"could not be written ({error.strerror or error})", path) from None
    except OutputError as error:  # name the file in the output folder, not in its staging twin
        if error.path is None or not error.path.startswith(str(staging)):
            raise
        raise OutputError(error.message, path / Path(error.path).relative_to(staging)) from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
