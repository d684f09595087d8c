"""Smoke tests of the Slicer module's Qt layer without the Slicer desktop.

* The panel (BreastTumorSeg/Resources/UI/BreastTumorSeg.ui) loads with PySide6's
  QUiLoader once Slicer's custom widgets are registered as small stand-ins, and every
  widget name the module file uses (``self.ui.<name>`` / ``widget.ui.<name>``) exists in
  it with a sensible class; the widgets bound to the parameter node
  (``SlicerParameterName``) name real fields of ``BreastTumorSegParameterNode`` and have a
  type parameterNodeWrapper can connect to that field, with the field's range.
  This checks the .ui file and the names, not the real Slicer widgets.
* The module must load in Slicer before torch is installed: neither BreastTumorSeg.py nor
  BreastTumorSegLib imports torch (or the other packages installed on the first Segment)
  at module import time, directly or through the backend modules they import.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "BreastTumorSeg"
MODULE_FILE = MODULE_DIR / "BreastTumorSeg.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "BreastTumorSeg.ui"
TOOLBAR_UI_FILE = MODULE_DIR / "Resources" / "UI" / "ReadingToolbar.ui"
LIB_DIR = MODULE_DIR / "BreastTumorSegLib"
WIDGETS_DIR = MODULE_DIR / "BreastTumorSegWidgets"
#: The Qt layer: the module file and its section classes.
QT_FILES = [MODULE_FILE, *sorted(WIDGETS_DIR.glob("*.py"))]
BACKEND_DIR = MODULE_DIR / "breasttumorseg"

#: Packages that Slicer does not ship and the module installs on the first Segment.
INSTALLED_LATER = {"torch", "safetensors", "tqdm", "matplotlib", "monai", "torchvision", "nnunetv2", "highdicom"}


# ----------------------------------------------------------------------------- the .ui file
def ui_tree() -> ET.Element:
    return ET.parse(UI_FILE).getroot()


def ui_names_used(toolbar: bool = False) -> set:
    """Every ``<something>.ui.<name>`` attribute the Qt layer reads: of the panel's .ui, or with
    ``toolbar`` of the reading toolbar's (its names start with "toolbar")."""
    names = set()
    for path in QT_FILES:
        names |= set(re.findall(r"\bui\.([A-Za-z_]\w*)", path.read_text(encoding="utf-8")))
    return {name for name in names if name.startswith("toolbar") == toolbar}


def names_used_by_module() -> set:
    return ui_names_used()


def ui_widget_classes() -> dict:
    """Widget name -> class, from the .ui XML."""
    return {w.get("name"): w.get("class") for w in ui_tree().iter("widget")}


def parameter_fields() -> dict:
    """Field name -> annotation source text of ``BreastTumorSegParameterNode`` (parsed, not imported)."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "BreastTumorSegParameterNode":
            return {item.target.id: ast.unparse(item.annotation) for item in node.body
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)}
    raise AssertionError("BreastTumorSeg.py has no class BreastTumorSegParameterNode")


def test_ui_file_is_well_formed_and_names_are_unique():
    root = ui_tree()
    assert root.tag == "ui"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "duplicate widget names in the .ui file"
    assert root.find("widget").get("class") == "qMRMLWidget"


def test_every_widget_name_the_module_uses_is_in_the_ui_file():
    """Parsed from the XML: does not need PySide6."""
    missing = sorted(names_used_by_module() - set(ui_widget_classes()))
    assert not missing, f"the Qt layer uses widgets the .ui file lacks: {missing}"
    toolbar = {w.get("name") for w in ET.parse(TOOLBAR_UI_FILE).getroot().iter("widget")}
    assert ui_names_used(toolbar=True) and not sorted(ui_names_used(toolbar=True) - toolbar)


def test_the_module_file_is_thin_and_its_sections_hold_no_logic():
    """The module file mounts the sections; MRML work and decisions live in BreastTumorSegLib."""
    assert len(MODULE_FILE.read_text(encoding="utf-8").splitlines()) <= 300
    for path in QT_FILES:
        if path.name == "selftest.py":  # the "Reload and Test" test counts the scene's nodes
            continue
        text = path.read_text(encoding="utf-8")
        for twin in ("hashlib", "GetNumberOfNodes()", "AddNewNodeByClass", "GetAttribute(\"BreastTumorSeg."):
            assert twin not in text, f"{path.name} does MRML or file work the Lib should do: {twin}"


def test_first_open_shows_only_inputs_and_the_model_list_cannot_widen_the_panel():
    root = ui_tree()
    collapsed = {}
    for widget in root.iter("widget"):
        if widget.get("class") == "ctkCollapsibleButton":
            prop = [p for p in widget.findall("property") if p.get("name") == "collapsed"]
            collapsed[widget.get("name")] = bool(prop) and prop[0].findtext("bool") == "true"
    assert [name for name, value in collapsed.items() if not value] == ["inputsCollapsibleButton"]
    combo = next(w for w in root.iter("widget") if w.get("name") == "modelSelector")
    props = {p.get("name"): p for p in combo.findall("property")}
    assert props["sizeAdjustPolicy"].findtext("enum") == "QComboBox::AdjustToMinimumContentsLengthWithIcon"
    assert int(props["minimumContentsLength"].findtext("number")) <= 20


def test_result_section_starts_with_the_tumor_probability_threshold():
    root = ui_tree()
    result = next(w for w in root.iter("widget") if w.get("name") == "resultCollapsibleButton")
    rows = {}
    for item in result.find("layout").findall("item"):
        widget = item.find("widget")
        rows.setdefault(int(item.get("row")), []).append(widget)
    first = rows[0]
    assert [w.get("name") for w in first][1] == "thresholdSlider"
    assert first[0].find("property/string").text == "Tumor probability threshold:"
    order = [w.get("name") for r in sorted(rows) for w in rows[r]]
    assert order.index("thresholdSlider") < order.index("opacitySlider")
    texts = [w.findtext("property/string") for w in root.iter("widget") if w.get("class") in ("QLabel", "QCheckBox")]
    assert "Relative to maximum" not in texts and "Smallest piece:" not in texts


def test_every_node_selector_gets_the_scene():
    """In Slicer a qMRMLNodeComboBox without the scene lists nothing: each needs the top widget's
    mrmlSceneChanged(vtkMRMLScene*) -> setMRMLScene(vtkMRMLScene*) connection."""
    root = ui_tree()
    top = root.find("widget").get("name")
    selectors = {w.get("name") for w in root.iter("widget") if w.get("class") == "qMRMLNodeComboBox"}
    connected = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("sender") == top and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert selectors and selectors <= connected, f"no scene connection for {sorted(selectors - connected)}"


def test_parameter_bound_widgets_name_parameter_fields():
    fields = parameter_fields()
    bound = {}
    for widget in ui_tree().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[widget.get("name")] = (widget.get("class"), prop.findtext("string"))
    assert bound, "no widget is bound to the parameter node"
    # the classes parameterNodeWrapper connects for each field type
    connectable = {"bool": {"QCheckBox"}, "float": {"ctkSliderWidget", "QDoubleSpinBox", "ctkDoubleSpinBox"},
                   "node": {"qMRMLNodeComboBox"}}
    for name, (cls, field) in bound.items():
        assert field in fields, f"{name} is bound to {field!r}, not a field of BreastTumorSegParameterNode"
        annotation = fields[field]
        kind = ("bool" if annotation == "bool" else "float" if "float" in annotation
                else "node" if annotation.startswith("vtkMRML") else annotation)
        assert cls in connectable.get(kind, set()), f"{name} ({cls}) cannot show the {annotation} field {field}"


# ----------------------------------------------------------------------------- QUiLoader
@pytest.fixture(scope="module")
def loaded_ui():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    pytest.importorskip("PySide6.QtUiTools", reason="PySide6 is not installed (pip install PySide6-Essentials)")
    import panel_harness

    custom = {c.findtext("class") for c in ui_tree().iter("customwidget")}
    known = set(panel_harness.standins())
    assert custom <= known, f"add stand-ins for {sorted(custom - known)}"
    widget, standins = panel_harness.load_ui(UI_FILE)
    yield widget, standins
    widget.deleteLater()
    panel_harness.application().processEvents()


def find(widget, name):
    from PySide6.QtCore import QObject

    return widget if widget.objectName() == name else widget.findChild(QObject, name)


def test_ui_loads_and_has_every_widget_the_module_uses(loaded_ui):
    widget, _ = loaded_ui
    assert type(widget).__name__ == "qMRMLWidget"
    missing = sorted(name for name in names_used_by_module() if find(widget, name) is None)
    assert not missing, f"the loaded panel lacks widgets the Qt layer uses: {missing}"


def test_panel_sections_and_widget_kinds(loaded_ui):
    from PySide6.QtWidgets import QComboBox, QLabel, QProgressBar, QPushButton, QTableWidget

    widget, standins = loaded_ui
    sections = [find(widget, name).text for name in (
        "inputsCollapsibleButton", "modelCollapsibleButton", "runCollapsibleButton", "resultCollapsibleButton",
        "refineCollapsibleButton", "measurementsCollapsibleButton", "exportCollapsibleButton")]
    assert sections == ["Inputs", "Model", "Run", "Result", "Refine", "Measurements", "Export"]
    kinds = {
        "dceSourceSelector": standins["qMRMLNodeComboBox"], "segmentationSelector": standins["qMRMLNodeComboBox"],
        "phaseTable": QTableWidget, "measurementsTable": QTableWidget, "modelSelector": QComboBox,
        "deviceSelector": QComboBox, "segmentButton": QPushButton, "progressBar": QProgressBar,
        "statusLabel": QLabel, "phaseWarningLabel": QLabel, "thresholdSlider": standins["ctkSliderWidget"],
        "opacitySlider": standins["ctkSliderWidget"], "refineButton": QPushButton,
        "exportDicomSegButton": QPushButton,
    }
    for name, kind in kinds.items():
        assert isinstance(find(widget, name), kind), f"{name} is not a {kind.__name__}"
    assert find(widget, "phaseTable").columnCount() == 4
    assert find(widget, "measurementsTable").columnCount() == 3
    assert set(find(widget, "dceSourceSelector").property("nodeTypes")) >= {"vtkMRMLSequenceNode",
                                                                            "vtkMRMLScalarVolumeNode"}
    assert list(find(widget, "segmentationSelector").property("nodeTypes")) == ["vtkMRMLSegmentationNode"]
    assert find(widget, "segmentButton").text() == "Segment"


def test_bound_widget_ranges_match_the_parameter_ranges(loaded_ui):
    """A slider whose range differs from the field's WithinRange would clip or reject values."""
    widget, _ = loaded_ui
    fields = parameter_fields()
    for name in ("thresholdSlider", "opacitySlider", "minComponentSpinBox"):
        child = find(widget, name)
        field = child.property("SlicerParameterName")
        match = re.search(r"WithinRange\(([^,]+),\s*([^)]+)\)", fields[field])
        assert match, f"{field} has no WithinRange"
        low, high = float(match.group(1)), float(match.group(2))
        minimum = child.property("minimum") if child.property("minimum") is not None else child.minimum()
        maximum = child.property("maximum") if child.property("maximum") is not None else child.maximum()
        assert (minimum, maximum) == (low, high), f"{name}: range {minimum}..{maximum}, field {field} {low}..{high}"


# ----------------------------------------------------------------------------- no torch at import time
def _module_path(module: str):
    """File of a module of the backend or of BreastTumorSegLib, else None (third-party / stdlib)."""
    parts = module.split(".")
    if parts[0] not in ("breasttumorseg", "BreastTumorSegLib", "BreastTumorSegWidgets"):
        return None
    base = MODULE_DIR.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_of(path: Path) -> str:
    relative = path.relative_to(MODULE_DIR).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
        return ".".join(parts)
    return ".".join(parts[:-1])


def import_time_imports(path: Path) -> list:
    """Modules imported when ``path`` is imported: every import outside function bodies
    (module level, inside if / try / with / class bodies, except ``if TYPE_CHECKING:``),
    relative ones made absolute."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _package_of(path)
    found = []

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue  # runs only when called
            if isinstance(child, ast.If) and ast.unparse(child.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                continue  # read by type checkers only
            if isinstance(child, ast.Import):
                found.extend(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".") if package else []
                    base = base[:len(base) - (child.level - 1)] if child.level > 1 else base
                    module = ".".join(base + ([child.module] if child.module else []))
                else:
                    module = child.module
                found.append(module)
                for alias in child.names:  # "from . import export" imports a submodule
                    found.append(f"{module}.{alias.name}")
            else:
                visit(child)

    visit(tree)
    return found


def torch_import_chains() -> list:
    """Chains ``file -> file -> package`` by which the module's import pulls a later-installed package."""
    starts = QT_FILES + sorted(LIB_DIR.glob("*.py"))
    problems = []
    seen = set()
    stack = [(start, [start.relative_to(MODULE_DIR).as_posix()]) for start in starts]
    while stack:
        path, chain = stack.pop()
        if path in seen:
            continue
        seen.add(path)
        modules = import_time_imports(path)
        for module in modules:
            top = module.split(".")[0]
            if top in INSTALLED_LATER:
                problems.append(" -> ".join(chain + [module]))
            parts = module.split(".")
            for depth in range(1, len(parts) + 1):  # importing a.b.c imports a, a.b and a.b.c
                target = _module_path(".".join(parts[:depth]))
                if target is not None and target not in seen:
                    stack.append((target, chain + [target.relative_to(MODULE_DIR).as_posix()]))
    return sorted(set(problems))


def test_import_scanner_finds_a_module_level_torch_import():
    """The scanner itself: the backend's device module imports torch at module level."""
    assert "torch" in import_time_imports(BACKEND_DIR / "core" / "device.py")
    assert "torch" not in import_time_imports(LIB_DIR / "install.py")


def test_module_and_slicer_layer_do_not_import_torch_at_import_time():
    chains = torch_import_chains()
    assert not chains, ("the module would not load in Slicer before torch is installed; move these imports "
                        "into the functions that need them:\n  " + "\n  ".join(chains))


def test_slicer_layer_imports_with_torch_blocked():
    """Runtime check on the real Slicer core (PyPI slicer-core), in a fresh interpreter where
    importing torch, safetensors, tqdm or matplotlib raises ImportError."""
    probe = subprocess.run([sys.executable, "-c", "import slicer, vtk"], capture_output=True, text=True,
                           cwd=str(ROOT), timeout=120)
    if probe.returncode != 0:
        pytest.skip("needs the Slicer core (pip install slicer-core)")
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        BLOCKED = {sorted(INSTALLED_LATER)!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is blocked: not installed yet")
                return None
        sys.meta_path.insert(0, Block())
        sys.path.insert(0, {str(MODULE_DIR)!r})
        import BreastTumorSegLib
        from BreastTumorSegLib import install, background, export, nodes, phases, logic
        assert not any(name.split(".")[0] in BLOCKED for name in sys.modules), sorted(sys.modules)
        assert "torch>=2.1" in install.missingDependencies()
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=str(ROOT),
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


# ----------------------------------------------------------------------------- the panel rendered
@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """The panel rendered in its three states (Testing/tools/render_panel.py) into a temporary folder."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    pytest.importorskip("PySide6.QtUiTools", reason="PySide6 is not installed (pip install PySide6-Essentials)")
    sys.path.insert(0, str(ROOT / "Testing" / "tools"))
    try:
        import render_panel
    finally:
        sys.path.remove(str(ROOT / "Testing" / "tools"))
    folder = tmp_path_factory.mktemp("panel")
    return folder, render_panel.render_all(folder)


def test_the_rendered_panel_fits_the_module_panel_in_every_state(rendered):
    folder, sizes = rendered
    for name in ("1-first-open.png", "2-after-result.png", "3-reading.png"):
        width, height, hint = sizes[name]
        assert hint <= 440, f"{name}: the panel asks for {hint} px; Slicer's module panel is about 420 px"
        assert width == 420 and height > 200 and (folder / name).stat().st_size > 5000


def test_first_open_says_what_to_do_and_hides_what_has_nothing_to_show():
    import panel_harness
    from BreastTumorSegLib.panelstate import PanelFacts

    panel, _ = panel_harness.load_ui()
    panel_harness.apply_state(panel, PanelFacts())
    panel_harness.lay_out(panel)
    assert find(panel, "loadSampleButton").isVisible()
    assert "Load sample study" in find(panel, "firstStepHintLabel").text()
    assert not find(panel, "phaseTable").isVisible()
    assert not find(panel, "segmentButton").isEnabled()
    assert "Choose a DCE series" in find(panel, "segmentButton").toolTip()
    assert not find(panel, "thresholdSlider").isVisible()          # inside the collapsed Result section


def test_every_measurement_row_is_visible_after_a_result():
    import panel_harness
    from BreastTumorSegLib.panelstate import PanelFacts

    panel, _ = panel_harness.load_ui()
    record = panel_harness.sample_measurements()
    panel_harness.apply_state(panel, PanelFacts(hasSource=True, includedPhases=4, hasResult=True,
                                                hasMeasurements=True), rows=panel_harness.sample_rows(),
                              measurements=record)
    panel_harness.lay_out(panel)
    table = find(panel, "measurementsTable")
    assert table.rowCount() >= 9
    rows_height = sum(table.rowHeight(row) for row in range(table.rowCount()))
    assert table.viewport().height() >= rows_height, "the measurements table hides rows"
    assert not table.verticalScrollBar().isVisible()
    labels = [table.item(row, 0).text() for row in range(table.rowCount())]
    assert labels[:3] == ["Tumor volume", "Longest diameter", "T category (size)"]
    info = find(panel, "modelInfoLabel").text()
    assert "first_post_contrast" not in info and "dce_in" not in info and "first post-contrast" in info


def test_the_reading_toolbar_shows_the_clock_and_every_action(rendered):
    import panel_harness

    folder, sizes = rendered
    assert (folder / "3-reading-toolbar.png").stat().st_size > 1000
    toolbar = panel_harness.reading_toolbar({"case": "case03 (assisted) 2/4", "clock": "1:23", "paused": True,
                                             "idle": False, "status": ""})
    assert find(toolbar, "toolbarClockLabel").text() == "1:23 paused"
    assert find(toolbar, "toolbarPauseButton").text() == "Resume" and find(toolbar, "toolbarPauseButton").isChecked()
    for name in ("toolbarSubmitButton", "toolbarFlagNoTumorButton", "toolbarFlagQualityButton", "toolbarCloseButton"):
        assert find(toolbar, name) is not None
