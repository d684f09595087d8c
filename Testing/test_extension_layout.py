"""The extension's build skeleton: what Slicer's build and the ExtensionsIndex check need.

* BreastTumorSeg/CMakeLists.txt lists exactly the module's scripts and resources
  (fix with ``python Testing/cmake_lists.py --write``);
* the top-level CMakeLists declares the extension the way Slicer expects;
* Resources/<project>.json (the ExtensionsIndex entry) agrees with the CMakeLists;
* LICENSE.txt, the 128x128 icon and every URL of the CMakeLists exist in the repository.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cmake_lists

ROOT = Path(__file__).resolve().parents[1]
TOP_CMAKE = ROOT / "CMakeLists.txt"
MODULE_CMAKE = ROOT / "BreastTumorSeg" / "CMakeLists.txt"

# properties allowed by Slicer's catalog entry schema v1.0.1 (Slicer/Slicer: Schemas/)
SCHEMA_URL = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json#"
SCHEMA_PROPERTIES = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
                     "build_subdirectory", "enabled", "tier"}
SCHEMA_REQUIRED = {"$schema", "category", "scm_url"}


def _code(path: Path) -> str:
    """CMake text without comments."""
    return "\n".join(line.split("#", 1)[0] for line in path.read_text(encoding="utf-8").splitlines())


def cmake_set(text: str, variable: str) -> list[str]:
    """The values of ``set(variable ...)``: quoted strings or bare words."""
    match = re.search(r"\bset\s*\(\s*" + re.escape(variable) + r"\b(.*?)\)\s*$", text, re.DOTALL | re.MULTILINE)
    assert match, f"set({variable} ...) not found"
    return [quoted if quoted else bare for quoted, bare in re.findall(r'"([^"]*)"|(\S+)', match.group(1))]


def project_name() -> str:
    match = re.search(r"\bproject\s*\(\s*(\w+)", _code(TOP_CMAKE))
    assert match, "project(...) not found in CMakeLists.txt"
    return match.group(1)


@pytest.fixture(scope="module")
def top() -> str:
    return _code(TOP_CMAKE)


@pytest.fixture(scope="module")
def entry() -> dict:
    path = ROOT / "Resources" / f"{project_name()}.json"
    assert path.is_file(), f"the ExtensionsIndex entry must be named after the CMake project: {path}"
    return json.loads(path.read_text(encoding="utf-8"))


# --- module CMakeLists ---------------------------------------------------------------------------

def test_module_cmakelists_lists_every_script_and_resource():
    found = cmake_lists.differences(MODULE_CMAKE)
    assert not found, ("BreastTumorSeg/CMakeLists.txt is out of date; run `python Testing/cmake_lists.py --write`:\n"
                       + "\n".join(found))


def test_module_cmakelists_builds_the_scripted_module(top):
    text = _code(MODULE_CMAKE)
    assert cmake_set(text, "MODULE_NAME") == [project_name()]
    call = re.search(r"slicerMacroBuildScriptedModule\s*\((.*?)\)", text, re.DOTALL)
    assert call, "slicerMacroBuildScriptedModule(...) missing"
    words = call.group(1).split()
    for expected in ("NAME", "${MODULE_NAME}", "SCRIPTS", "${MODULE_PYTHON_SCRIPTS}", "RESOURCES",
                     "${MODULE_PYTHON_RESOURCES}", "WITH_GENERIC_TESTS"):
        assert expected in words
    scripts, resources = cmake_lists.listed_cmake_entries(MODULE_CMAKE)
    name = project_name()
    assert f"{name}.py" in scripts, "the module file must be a listed script"
    assert f"Resources/Icons/{name}.png" in resources, "the module icon must be a listed resource"


def _fake_module(folder: Path) -> Path:
    files = ["Mod.py", "ModLib/__init__.py", "pkg/sub/deep.py", "Resources/Icons/Mod.png",
             "Resources/Models/w.safetensors", "pkg/registry.json",
             # never listed:
             "pkg/__pycache__/deep.cpython-312.pyc", "pkg/old.pyc", ".hidden.py", "Resources/.DS_Store",
             "Resources/Models/w.safetensors.partial", "out.partial/x.py", "pkg.egg-info/PKG-INFO", "notes.txt~"]
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")
    cmake = folder / "CMakeLists.txt"
    cmake.write_text(f"set(MODULE_NAME Mod)\n{cmake_lists.BEGIN_MARK}\n{cmake_lists.END_MARK}\n"
                     "slicerMacroBuildScriptedModule(NAME ${MODULE_NAME})\n", encoding="utf-8")
    return cmake


def test_generator_lists_scripts_and_resources_and_skips_junk(tmp_path):
    cmake = _fake_module(tmp_path)
    scripts, resources = cmake_lists.expected_cmake_entries(tmp_path)
    assert scripts == ["Mod.py", "ModLib/__init__.py", "pkg/sub/deep.py"]
    assert resources == ["Resources/Icons/Mod.png", "Resources/Models/w.safetensors", "pkg/registry.json"]
    assert cmake_lists.differences(cmake)  # the empty block misses everything
    assert cmake_lists.regenerate(cmake) is True
    assert cmake_lists.differences(cmake) == []
    assert cmake_lists.regenerate(cmake) is False  # idempotent
    assert cmake_lists.listed_cmake_entries(cmake) == (scripts, resources)
    assert "slicerMacroBuildScriptedModule" in cmake.read_text()  # text outside the block is kept


def test_check_fails_on_a_missing_or_a_stale_entry(tmp_path):
    cmake = _fake_module(tmp_path)
    cmake_lists.regenerate(cmake)
    (tmp_path / "pkg" / "new_step.py").write_text("")
    (tmp_path / "Resources" / "UI").mkdir()
    (tmp_path / "Resources" / "UI" / "Mod.ui").write_text("<ui/>")
    (tmp_path / "Resources" / "Icons" / "Mod.png").unlink()
    found = cmake_lists.differences(cmake)
    assert "MODULE_PYTHON_SCRIPTS misses pkg/new_step.py" in found
    assert "MODULE_PYTHON_RESOURCES misses Resources/UI/Mod.ui" in found
    assert any(line.startswith("MODULE_PYTHON_RESOURCES lists Resources/Icons/Mod.png") for line in found)
    assert len(found) == 3
    assert cmake_lists.main(["--cmake-file", str(cmake)]) == 1
    assert cmake_lists.main(["--cmake-file", str(cmake), "--write"]) == 0
    assert cmake_lists.main(["--cmake-file", str(cmake)]) == 0


# --- top-level CMakeLists ---------------------------------------------------------------------------

def test_top_level_cmakelists_declares_the_extension(top):
    assert re.search(r"cmake_minimum_required\s*\(\s*VERSION", top)
    for variable in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                     "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert cmake_set(top, variable) and all(cmake_set(top, variable)), f"{variable} is empty"
    steps = [r"project\s*\(", r"find_package\s*\(\s*Slicer\s+REQUIRED\s*\)",
             r"include\s*\(\s*\$\{Slicer_USE_FILE\}\s*\)",
             r"add_subdirectory\s*\(\s*BreastTumorSeg\s*\)",
             r"include\s*\(\s*\$\{Slicer_EXTENSION_GENERATE_CONFIG\}\s*\)",
             r"include\s*\(\s*\$\{Slicer_EXTENSION_CPACK\}\s*\)"]
    positions = []
    for step in steps:
        match = re.search(step, top)
        assert match, f"missing: {step}"
        positions.append(match.start())
    assert positions == sorted(positions), "the extension's CMake steps are out of order"


# --- ExtensionsIndex entry --------------------------------------------------------------------------

def test_index_entry_follows_the_catalog_schema(entry):
    assert entry["$schema"] == SCHEMA_URL
    assert SCHEMA_REQUIRED <= set(entry), f"missing {SCHEMA_REQUIRED - set(entry)}"
    assert set(entry) <= SCHEMA_PROPERTIES, f"not in the schema: {set(entry) - SCHEMA_PROPERTIES}"
    assert entry["tier"] in (1, 3, 5)
    assert isinstance(entry["build_dependencies"], list) and all(
        isinstance(d, str) for d in entry["build_dependencies"])
    assert entry.get("scm_revision")


def test_index_entry_agrees_with_cmakelists(entry, top):
    depends = [d for value in cmake_set(top, "EXTENSION_DEPENDS") for d in value.split() if d != "NA"]
    assert entry["build_dependencies"] == depends
    assert "PyTorch" in depends  # torch inside Slicer comes from the PyTorch extension
    assert entry["category"] == cmake_set(top, "EXTENSION_CATEGORY")[0]
    homepage = cmake_set(top, "EXTENSION_HOMEPAGE")[0]
    assert entry["scm_url"].removesuffix(".git").rstrip("/") == homepage.rstrip("/")


# --- files the index and the build need ----------------------------------------------------------------

def test_license_is_apache_2():
    text = (ROOT / "LICENSE.txt").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert "Copyright 2026 The BreastTumorSeg authors" in text


@pytest.mark.parametrize("icon", ["BreastTumorSeg.png", "BreastTumorSeg/Resources/Icons/BreastTumorSeg.png"])
def test_icon_is_a_128_pixel_png(icon):
    with Image.open(ROOT / icon) as image:
        assert image.format == "PNG"
        assert image.size == (128, 128)
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
        assert len(np.unique(pixels, axis=0)) > 50  # a picture, not a flat square


def test_urls_point_at_files_in_this_repository(top, entry):
    homepage = cmake_set(top, "EXTENSION_HOMEPAGE")[0].rstrip("/")
    owner_repo = homepage.removeprefix("https://github.com/")
    assert owner_repo != homepage and owner_repo.count("/") == 1, f"homepage is not a GitHub repository: {homepage}"
    prefix = f"https://raw.githubusercontent.com/{owner_repo}/{entry['scm_revision']}/"
    urls = cmake_set(top, "EXTENSION_ICONURL") + [u for value in cmake_set(top, "EXTENSION_SCREENSHOTURLS")
                                                  for u in value.split()]
    assert len(urls) >= 2
    for url in urls:
        assert url.startswith(prefix), f"{url} is not a raw URL of {owner_repo} at {entry['scm_revision']}"
        path = ROOT / url.removeprefix(prefix)
        assert path.is_file(), f"{url} points at {path.relative_to(ROOT)}, which does not exist"
    assert cmake_set(top, "EXTENSION_ICONURL")[0] == prefix + "BreastTumorSeg.png"
