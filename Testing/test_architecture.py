"""The backend's shape, read from its own imports (ast, nothing is imported).

* Layers: every import of a backend module points to its own subpackage or to one below it in
  :data:`LAYERS`; no cycle between modules (function-level and ``TYPE_CHECKING`` imports count).
* Imports wait inside a function only for a package that is installed later or is heavy
  (:data:`DEFERRABLE`), directly or through a backend module that imports one at its top, and
  each module that defers says why in a comment (on a deferred import or the line above it).
* The backend imports neither slicer nor Qt; the Slicer layer (BreastTumorSegLib) imports no Qt.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "BreastTumorSeg"
BACKEND = "breasttumorseg"

#: The backend's subpackages from the bottom up: a module may import from its own layer and the
#: layers before it. ``breasttumorseg`` itself (the version) is below all, ``__main__`` above all.
LAYERS = ("core", "exam", "phantom", "segmentation", "reporting", "run", "evaluation", "training",
          "readerstudy", "cli")

#: Heavy packages: installed on first use inside Slicer (torch and what needs it) or optional extras.
#: A function may wait to import one, or a backend module that imports one when it is imported.
HEAVY = {"torch", "safetensors", "tqdm", "matplotlib", "monai", "nnunetv2", "highdicom", "trame", "trame_slicer"}
#: Optional or platform-only packages a function may also wait for (they make no module heavy).
OPTIONAL = {"yaml", "fcntl"}
DEFERRABLE = HEAVY | OPTIONAL
#: Imports that would tie a module to the Slicer application or to Qt.
SLICER = {"slicer", "vtk", "mrml", "vtkSegmentationCore", "qt", "ctk", "PythonQt", "PySide2", "PySide6",
          "PyQt5", "PyQt6"}
QT = {"qt", "ctk", "PythonQt", "PySide2", "PySide6", "PyQt5", "PyQt6", "qSlicerSegmentationsModuleWidgetsPythonQt"}


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module (a backend module, or the top-level name of another package)
    line: int
    deferred: bool  # inside a function body
    comment: bool  # the statement's lines, or the line above, carry a comment
    typing_only: bool = False  # under ``if TYPE_CHECKING:`` (never runs)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(MODULE_DIR).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules_under(folder: Path) -> dict[str, Path]:
    return {module_name(path): path for path in sorted(folder.rglob("*.py")) if "__pycache__" not in path.parts}


def imports_of(path: Path, known: set[str]) -> list[Import]:
    return imports_in(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py", known)


def imports_in(text: str, source: str, is_package: bool, known: set[str]) -> list[Import]:
    """Every import statement of module ``source`` (code ``text``), relative ones made absolute;
    ``from package import module`` names the module."""
    lines = text.splitlines()
    package = source if is_package else source.rpartition(".")[0]
    found = []

    def visit(node, deferred, typing_only=False):
        for child in ast.iter_child_nodes(node):
            inner = deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.If) and ast.unparse(child.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                visit(child, inner, True)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                above = lines[child.lineno - 2].strip() if child.lineno > 1 else ""
                own = lines[child.lineno - 1:child.end_lineno]
                comment = above.startswith("#") or any("#" in line for line in own)
                if isinstance(child, ast.Import):
                    targets = [alias.name for alias in child.names]
                else:
                    if child.level:
                        base = package.split(".")[:len(package.split(".")) - (child.level - 1)]
                        module = ".".join(base + ([child.module] if child.module else []))
                    else:
                        module = child.module
                    targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                               for alias in child.names]
                for target in targets:
                    if not target.startswith(BACKEND + ".") and target != BACKEND:
                        target = target.split(".")[0]
                    else:
                        while target not in known:  # a.b.name -> a.b
                            target = target.rpartition(".")[0]
                    found.append(Import(source, target, child.lineno, deferred, comment, typing_only))
            else:
                visit(child, inner, typing_only)

    visit(ast.parse(text), False)
    return found


BACKEND_MODULES = modules_under(MODULE_DIR / BACKEND)
KNOWN = set(BACKEND_MODULES)


def backend_imports() -> list[Import]:
    return [imp for path in BACKEND_MODULES.values() for imp in imports_of(path, KNOWN)]


def layer(module: str) -> int:
    if module == BACKEND:
        return -1
    part = module.split(".")[1]
    if part == "__main__":
        return len(LAYERS)
    assert part in LAYERS, f"{module}: the backend's top level holds only {', '.join(LAYERS)} (declare new ones here)"
    return LAYERS.index(part)


def internal(imports: list[Import]) -> list[Import]:
    return [imp for imp in imports if imp.target in KNOWN and imp.target != imp.source]


def upward_arrows(imports: list[Import]) -> list[str]:
    return [f"{imp.source}:{imp.line} imports {imp.target}" for imp in internal(imports)
            if layer(imp.target) > layer(imp.source)]


def cycles(imports: list[Import]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for imp in internal(imports):
        graph.setdefault(imp.source, set()).add(imp.target)
        # importing a.b.c runs a/__init__ and a/b/__init__ first
        parts = imp.target.split(".")
        for depth in range(2, len(parts)):
            parent = ".".join(parts[:depth])
            if parent in KNOWN and parent != imp.source and not imp.source.startswith(parent + "."):
                graph[imp.source].add(parent)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def connect(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def heavy_at_import(imports: list[Import]) -> set[str]:
    """Backend modules whose import pulls a heavy package (directly or through another module)."""
    top: dict[str, set[str]] = {}
    for imp in imports:
        if not imp.deferred and not imp.typing_only:
            top.setdefault(imp.source, set()).add(imp.target)
    heavy = {module for module, targets in top.items() if targets & HEAVY}
    changed = True
    while changed:
        changed = False
        for module, targets in top.items():
            if module not in heavy and targets & heavy:
                heavy.add(module)
                changed = True
    return heavy


def misplaced_deferred(imports: list[Import]) -> list[str]:
    heavy = heavy_at_import(imports)
    return [f"{imp.source}:{imp.line} waits to import {imp.target}" for imp in imports
            if imp.deferred and imp.target not in DEFERRABLE and imp.target not in heavy]


def uncommented_deferred(imports: list[Import]) -> list[str]:
    first: dict[str, Import] = {}
    for imp in imports:
        if imp.deferred and (imp.source not in first or imp.line < first[imp.source].line):
            first[imp.source] = imp
    return [f"{imp.source}:{imp.line}" for imp in first.values() if not any(
        other.comment for other in imports if other.source == imp.source and other.deferred)]


# ----------------------------------------------------------------------------- the checks themselves
def test_every_backend_module_belongs_to_a_declared_layer():
    for module in KNOWN:
        layer(module)


def test_no_upward_arrows_between_layers():
    arrows = upward_arrows(backend_imports())
    assert not arrows, "imports against the layer order " + " < ".join(LAYERS) + ":\n  " + "\n  ".join(arrows)


def test_no_import_cycles():
    found = cycles(backend_imports())
    assert not found, "import cycles:\n  " + "\n  ".join(" <-> ".join(component) for component in found)


def test_imports_wait_only_for_heavy_or_optional_packages():
    imports = backend_imports()
    assert not misplaced_deferred(imports), "move to the module's top:\n  " + "\n  ".join(misplaced_deferred(imports))
    assert not uncommented_deferred(imports), ("say once per module why its imports wait (a comment on a "
                                               "deferred import): " + ", ".join(uncommented_deferred(imports)))


def test_backend_imports_neither_slicer_nor_qt():
    bad = [f"{imp.source}:{imp.line} imports {imp.target}" for imp in backend_imports() if imp.target in SLICER]
    assert not bad, "\n".join(bad)


def test_slicer_layer_imports_no_qt():
    lib = modules_under(MODULE_DIR / "BreastTumorSegLib")
    known = set(lib) | KNOWN
    bad = [f"{imp.source}:{imp.line} imports {imp.target}" for path in lib.values()
           for imp in imports_of(path, known) if imp.target in QT]
    assert not bad, "\n".join(bad)


# ----------------------------------------------------------------------------- the checks can fail
def _fake(source: str, target: str, deferred: bool = False) -> Import:
    return Import(source, target, 1, deferred, False)


def test_checks_catch_an_injected_cycle_an_upward_arrow_and_a_needless_wait():
    imports = backend_imports()
    loop = [_fake("breasttumorseg.core.errors", "breasttumorseg.core.progress", deferred=True)]
    assert any({"breasttumorseg.core.errors", "breasttumorseg.core.progress"} <= set(c)
               for c in cycles(imports + loop))
    assert upward_arrows(imports + [_fake("breasttumorseg.exam.maps", "breasttumorseg.cli.main")])
    assert misplaced_deferred(imports + loop)
    heavy = heavy_at_import(imports)
    assert "breasttumorseg.segmentation.inference" in heavy          # torch at its top
    assert "breasttumorseg.segmentation.models" not in heavy         # torch only under TYPE_CHECKING


@pytest.mark.parametrize("code", ["import slicer\n", "from qt import QWidget\n", "import ctk\n"])
def test_import_reader_sees_slicer_and_qt(code):
    found = imports_in("def f():\n    " + code, "breasttumorseg.core.errors", False, KNOWN)
    assert [imp.target for imp in found if imp.target in SLICER]


def test_import_reader_resolves_relative_imports():
    code = "from . import errors\nfrom ..exam.maps import dce_in\nfrom .. import __version__\n"
    found = imports_in(code, "breasttumorseg.core.progress", False, KNOWN)
    assert [imp.target for imp in found] == ["breasttumorseg.core.errors", "breasttumorseg.exam.maps", "breasttumorseg"]
