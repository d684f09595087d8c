"""Atomic outputs: nothing partial is ever left behind, an old output survives a failure."""

import pytest

from breasttumorseg.core import atomic
from breasttumorseg.core.errors import OutputError


def test_failed_output_dir_leaves_nothing(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic.atomic_output_dir(target) as staging:
            (staging / "half.txt").write_text("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_non_empty_output_needs_overwrite_and_survives_failure(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(OutputError, match="--overwrite"):
        atomic.check_output_dir(target, overwrite=False)
    with pytest.raises(RuntimeError):
        with atomic.atomic_output_dir(target, overwrite=True) as staging:
            (staging / "new.txt").write_text("new")
            raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (target / "old.txt").read_text() == "old"
    with atomic.atomic_output_dir(target, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_file_write_keeps_old_content_on_error(tmp_path):
    path = tmp_path / "a.json"
    atomic.write_text(path, "one")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(path) as tmp:
            assert tmp.name.endswith(".json")
            tmp.write_text("two")
            raise RuntimeError("boom")
    assert path.read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
