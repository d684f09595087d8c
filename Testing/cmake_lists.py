"""Keep BreastTumorSeg/CMakeLists.txt listing exactly the module's scripts and resources.

Slicer installs a scripted module by copying the files named in ``MODULE_PYTHON_SCRIPTS``
(compiled Python) and ``MODULE_PYTHON_RESOURCES`` (everything else) from the module folder;
a file missing from those lists is silently absent from the built extension, and a listed
file that does not exist breaks the build. This script derives both lists from the folder:

* scripts: every ``*.py`` file under ``BreastTumorSeg/`` (module file, ``BreastTumorSegLib``,
  the ``breasttumorseg`` backend and its sub-packages);
* resources: every other file (``Resources/Icons``, ``Resources/UI``, ``Resources/Models``,
  ``Resources/TumorShapes``, ``Resources/SampleData``, package data files ...).

Skipped: ``CMakeLists.txt`` itself, ``__pycache__`` folders, ``*.pyc``/``*.pyo``, hidden files
and folders (name starting with ``.``), ``*.partial`` files or folders (unfinished atomic
writes), ``*.egg-info`` folders, editor backups (``*~``), and, when the folder is inside a
git work tree, whatever git ignores (such a file would be missing from a fresh clone).

Usage (from the repository root)::

    python Testing/cmake_lists.py            # report differences, exit 1 if any
    python Testing/cmake_lists.py --write    # rewrite the generated block in place

``--write`` replaces only the text between the ``# BEGIN GENERATED`` and ``# END GENERATED``
lines of ``BreastTumorSeg/CMakeLists.txt``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "BreastTumorSeg"
MODULE_NAME = "BreastTumorSeg"

BEGIN_MARK = "# BEGIN GENERATED FILE LISTS"
END_MARK = "# END GENERATED FILE LISTS"

_SKIP_DIR_NAMES = {"__pycache__"}
_SKIP_SUFFIXES = (".pyc", ".pyo", ".partial", "~")


def _skipped(relative: Path) -> bool:
    for part in relative.parts[:-1]:
        if part in _SKIP_DIR_NAMES or part.startswith(".") or part.endswith((".partial", ".egg-info")):
            return True
    name = relative.name
    if name.startswith(".") or name.endswith(_SKIP_SUFFIXES):
        return True
    return relative.as_posix() == "CMakeLists.txt"


def _git_ignored(module_dir: Path, relatives: list[str]) -> set[str]:
    """The subset of ``relatives`` that git ignores (empty when git or a work tree is absent)."""
    git = shutil.which("git")
    if git is None or not relatives:
        return set()
    try:
        result = subprocess.run([git, "check-ignore", "--no-index", "--stdin"], cwd=module_dir,
                                input="\n".join(relatives) + "\n", capture_output=True, text=True,
                                timeout=30)
    except (OSError, subprocess.SubprocessError):
        return set()
    if result.returncode not in (0, 1):  # 128: not a git work tree
        return set()
    return {line.strip() for line in result.stdout.splitlines() if line.strip()}


def expected_cmake_entries(module_dir: str | Path = MODULE_DIR) -> tuple[list[str], list[str]]:
    """``(scripts, resources)``: the files the module CMakeLists must list, as sorted POSIX
    paths relative to ``module_dir``."""
    module_dir = Path(module_dir)
    files = []
    for path in module_dir.rglob("*"):
        if not path.is_file():
            continue
        relative = path.relative_to(module_dir)
        if not _skipped(relative):
            files.append(relative.as_posix())
    ignored = _git_ignored(module_dir, files)
    files = sorted(f for f in files if f not in ignored)
    scripts = [f for f in files if f.endswith(".py")]
    resources = [f for f in files if not f.endswith(".py")]
    return scripts, resources


# --- reading the CMakeLists ------------------------------------------------------------------

def _strip_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def parse_set_list(cmake_text: str, variable: str, substitutions: dict[str, str] | None = None) -> list[str]:
    """The items of ``set(variable item ...)`` in ``cmake_text`` (comments removed,
    ``${NAME}`` replaced from ``substitutions``); empty when there is no such ``set``.
    Raises ``ValueError`` when the variable is set more than once."""
    text = _strip_comments(cmake_text)
    blocks = re.findall(r"\bset\s*\(\s*" + re.escape(variable) + r"\b([^)]*)\)", text)
    if len(blocks) > 1:
        raise ValueError(f"expected one set({variable} ...) in the CMakeLists, found {len(blocks)}")
    if not blocks:
        return []
    items = blocks[0].split()
    for name, value in (substitutions or {}).items():
        items = [item.replace("${" + name + "}", value) for item in items]
    return [item.strip('"') for item in items]


def listed_cmake_entries(cmake_file: str | Path = MODULE_DIR / "CMakeLists.txt") -> tuple[list[str], list[str]]:
    """``(scripts, resources)`` as listed in the module CMakeLists (in file order)."""
    text = Path(cmake_file).read_text(encoding="utf-8")
    module = re.search(r"\bset\s*\(\s*MODULE_NAME\s+(\S+?)\s*\)", _strip_comments(text))
    subs = {"MODULE_NAME": module.group(1) if module else MODULE_NAME}
    return (parse_set_list(text, "MODULE_PYTHON_SCRIPTS", subs),
            parse_set_list(text, "MODULE_PYTHON_RESOURCES", subs))


# --- writing the generated block --------------------------------------------------------------

def generated_block(scripts: list[str], resources: list[str]) -> str:
    """The text between (and including) the BEGIN/END marker lines."""
    lines = [f"{BEGIN_MARK}: run `python Testing/cmake_lists.py --write`; do not edit by hand",
             "set(MODULE_PYTHON_SCRIPTS"]
    lines += [f"  {item}" for item in scripts]
    lines += ["  )", "", "set(MODULE_PYTHON_RESOURCES"]
    lines += [f"  {item}" for item in resources]
    lines += ["  )", END_MARK]
    return "\n".join(lines)


def regenerate(cmake_file: str | Path = MODULE_DIR / "CMakeLists.txt",
               module_dir: str | Path | None = None) -> bool:
    """Rewrite the generated block of ``cmake_file``; True when its content changed."""
    cmake_file = Path(cmake_file)
    module_dir = Path(module_dir) if module_dir is not None else cmake_file.parent
    text = cmake_file.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(BEGIN_MARK) + r".*?" + re.escape(END_MARK), re.DOTALL)
    if len(pattern.findall(text)) != 1:
        raise SystemExit(f"{cmake_file}: expected exactly one '{BEGIN_MARK}' ... '{END_MARK}' block")
    new_text = pattern.sub(lambda _: generated_block(*expected_cmake_entries(module_dir)), text)
    if new_text == text:
        return False
    tmp = cmake_file.with_name(f".{cmake_file.name}.tmp")
    tmp.write_text(new_text, encoding="utf-8")
    tmp.replace(cmake_file)
    return True


def differences(cmake_file: str | Path = MODULE_DIR / "CMakeLists.txt",
                module_dir: str | Path | None = None) -> list[str]:
    """Human-readable differences between the CMakeLists lists and the module folder."""
    cmake_file = Path(cmake_file)
    module_dir = Path(module_dir) if module_dir is not None else cmake_file.parent
    want_scripts, want_resources = expected_cmake_entries(module_dir)
    have_scripts, have_resources = listed_cmake_entries(cmake_file)
    found = []
    for kind, want, have in (("MODULE_PYTHON_SCRIPTS", want_scripts, have_scripts),
                             ("MODULE_PYTHON_RESOURCES", want_resources, have_resources)):
        found += [f"{kind} misses {item}" for item in want if item not in have]
        found += [f"{kind} lists {item}, which is not a {'script' if 'SCRIPTS' in kind else 'resource'} "
                  f"file in {module_dir.name}/" for item in have if item not in want]
        found += [f"{kind} lists {item} twice" for item in sorted({i for i in have if have.count(i) > 1})]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true",
                        help="rewrite the generated block of BreastTumorSeg/CMakeLists.txt")
    parser.add_argument("--cmake-file", type=Path, default=MODULE_DIR / "CMakeLists.txt",
                        help="the module CMakeLists.txt (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.write:
        changed = regenerate(args.cmake_file)
        scripts, resources = expected_cmake_entries(args.cmake_file.parent)
        print(f"{args.cmake_file}: {'updated' if changed else 'already up to date'} "
              f"({len(scripts)} scripts, {len(resources)} resources)")
        return 0
    found = differences(args.cmake_file)
    for line in found:
        print(line)
    if not found:
        print(f"{args.cmake_file}: lists every script and resource")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
