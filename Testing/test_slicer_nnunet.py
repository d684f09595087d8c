"""An nnU-Net v2 model folder run by the Slicer logic (slicer-core): the blocking call (the
station's in-process job goes through the same prepareSegmentation / job.run) and the
background process of the real CLI, with the same probability map."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
import slicer  # the Slicer core from PyPI (slicer-core)
from breasttumorseg.core.errors import InputError
from nnunet_folders import build_model_folder
from slicer_harness import create_slicer_core, forked
from test_slicer_logic import add_phase_volumes, dce_case, oblique_geometry

pytestmark = pytest.mark.slicer


@pytest.fixture
def core():
    return create_slicer_core()


@pytest.fixture
def logic(core):
    from BreastTumorSegLib import BreastTumorSegLogic

    return BreastTumorSegLogic(warn=lambda message: None)


@forked
def test_model_folder_blocking_and_background_runs_agree(core, logic, tmp_path):
    build_model_folder(tmp_path / "archive", folds=(0,), channel_names=("post", "subtraction"))
    options = {"channels": ("post=post1", "subtraction=sub2")}
    geometry = oblique_geometry(size=(40, 36, 14), spacing=(1.5, 1.5, 2.0))
    phases, _ = dce_case(geometry, n_phases=4)
    volumes = add_phase_volumes(core, phases, geometry)
    # a mapping the phases cannot give: one line naming the channel, before anything runs
    with pytest.raises(InputError, match="channel 'subtraction' is mapped to sub5"):
        logic.startSegmentation(volumes, model=str(tmp_path / "archive"), pythonExecutable=sys.executable,
                                nnunetOptions={"channels": ("post=post1", "subtraction=sub5")})
    probability_node, _ = logic.segment(volumes, model=str(tmp_path / "archive"), device="cpu",
                                        nnunetOptions=options)
    blocking = slicer.util.arrayFromVolume(probability_node).copy()
    assert blocking.shape == geometry.shape_zyx and 0.0 <= blocking.min() and blocking.max() <= 1.0
    assert probability_node.GetAttribute("BreastTumorSeg.Model").startswith("TinyBreast nnU-Net v2")
    runner = logic.startSegmentation(volumes, model=str(tmp_path / "archive"), device="cpu",
                                     pythonExecutable=sys.executable, nnunetOptions=options)
    assert "--channel=subtraction=sub2" in runner.command
    deadline = time.time() + 300
    while runner.poll() == "running" and time.time() < deadline:
        time.sleep(0.1)
    assert runner.state == "succeeded", runner.error + "\n" + runner.details
    background_node, _ = logic.finishSegmentation(runner)
    background = slicer.util.arrayFromVolume(background_node)
    # the background process read the phases back from files written in float32: the same map
    assert np.abs(background - blocking).max() < 1e-4


def test_nnunet_is_installed_after_one_confirmation_keeping_slicers_packages(monkeypatch):
    """``slicer.packaging.pip_ensure`` belongs to the desktop application (absent from
    slicer-core): a recorder stands in for it; the constraints file is the real one."""
    import types

    from BreastTumorSegLib import install

    calls = {}

    def pip_ensure(requirements, constraints=None, prompt_install=True, requester=None):
        calls["requirements"] = list(requirements)
        with open(constraints, encoding="utf-8") as handle:
            calls["constraints"] = handle.read().split()
        calls["prompt_install"] = prompt_install

    monkeypatch.setitem(sys.modules, "slicer.packaging", types.SimpleNamespace(pip_ensure=pip_ensure))
    monkeypatch.setattr(slicer, "packaging", sys.modules["slicer.packaging"], raising=False)
    questions = []
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, title: questions.append(text) or True,
                        raising=False)
    monkeypatch.setattr(install, "NNUNET_REQUIREMENTS", (("a_package_that_is_not_installed", "nnunetv2==2.8.1"),))
    with pytest.raises(install.DependencyError, match="still missing: nnunetv2==2.8.1"):
        install.ensureNnUNet()
    assert len(questions) == 1 and "nnunetv2==2.8.1" in questions[0]
    assert calls["requirements"] == ["nnunetv2==2.8.1"] and calls["prompt_install"] is False
    import importlib.metadata

    for kept in ("numpy", "SimpleITK", "torch"):
        assert f"{kept}=={importlib.metadata.version(kept)}" in calls["constraints"]
    # declined: nothing installed, False
    questions.clear()
    calls.clear()
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, title: False, raising=False)
    assert install.ensureNnUNet() is False and not calls
    # already there: no question at all
    monkeypatch.setattr(install, "NNUNET_REQUIREMENTS", (("numpy", "numpy"),))
    assert install.ensureNnUNet() is True
