"""A real Slicer core without the desktop application, for tests (PyPI ``slicer-core``).

:func:`create_slicer_core` builds an MRML scene and an application logic with the module
logics that the BreastTumorSeg logic and ``slicer.util`` use (Colors, Volumes, Subject
Hierarchy, Segmentations, Sequences; not Terminologies, whose files slicer-core lacks),
registered on the application logic as the desktop does (the colour logic first: the
volumes logic asks it for default colour nodes). It exposes them where ``slicer.util``
looks: ``slicer.mrmlScene`` and ``slicer.modules.<lowercase name>.logic()``.
``slicer.app`` is not provided: helpers that need it (``slicer.util.loadVolume``,
``saveNode``, ...) cannot be used; use storage nodes and module logics instead.

An ITK exception inside a logic aborts the interpreter: run tests using this in a
child process with :func:`forked` (pytest-forked 1.7.5 cannot be used: it fails every
test under pytest 9, whose reports carry a NodeId that ``marshal`` cannot serialise).
"""

from __future__ import annotations

import functools
import os
import signal
import traceback
import types
from dataclasses import dataclass, field

_SKIPPED = b"SKIPPED:"


def forked(test):
    """Run a pytest test function in a forked child process.

    Fixtures are made in the parent and inherited by the child. A failure or skip in the
    child is reported as such in the parent (with the child's traceback); a child killed
    by a signal (an aborting ITK error) fails the test instead of killing the test run.
    """
    import pytest

    @functools.wraps(test)
    def run_in_child(*args, **kwargs):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: run the test, send back what happened, never return into pytest
            os.close(read_end)
            status, message = 0, b""
            try:
                _single_threaded_torch_after_fork()
                test(*args, **kwargs)
            except pytest.skip.Exception as skipped:
                status, message = 0, _SKIPPED + str(skipped.msg).encode()
            except BaseException:  # noqa: BLE001 - everything is reported to the parent
                status, message = 1, traceback.format_exc().encode()
            try:
                view = memoryview(message)
                while view:
                    view = view[os.write(write_end, view):]
                os.close(write_end)
            finally:
                os._exit(status)
        os.close(write_end)
        chunks = []
        while True:
            chunk = os.read(read_end, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
        message = b"".join(chunks)
        if os.WIFSIGNALED(status):
            name = signal.Signals(os.WTERMSIG(status)).name
            pytest.fail(f"the test's child process died with {name} (an ITK or VTK error aborts the interpreter)",
                        pytrace=False)
        if message.startswith(_SKIPPED):
            pytest.skip(message[len(_SKIPPED):].decode(errors="replace"))
        if os.WEXITSTATUS(status) != 0:
            pytest.fail("in the forked child:\n" + message.decode(errors="replace"), pytrace=False)

    return run_in_child


def _single_threaded_torch_after_fork() -> None:
    """A forked child inherits torch's OpenMP pool without its threads: its first parallel
    region waits forever (seen in ``load_state_dict`` when the pytest worker had run torch
    before forking). One thread runs every parallel region inline."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


@dataclass
class SlicerCore:
    """The scene, the application logic and the module logics by module name."""

    scene: object
    app_logic: object
    logics: dict = field(default_factory=dict)

    def logic(self, module_name: str):
        return self.logics[module_name]

    def node_count(self) -> int:
        return self.scene.GetNumberOfNodes()


def _module(logic):
    """An object like ``slicer.modules.<name>``: has ``logic()``."""
    return types.SimpleNamespace(logic=lambda: logic)


def create_slicer_core(install: bool = True) -> SlicerCore:
    """A scene with the module logics; with ``install`` also set ``slicer.mrmlScene`` and ``slicer.modules``."""
    import slicer

    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)

    logics = {}

    def register(module_name: str, logic):
        if hasattr(logic, "SetMRMLApplicationLogic"):
            logic.SetMRMLApplicationLogic(app_logic)
        logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic(module_name, logic)
        logics[module_name] = logic
        return logic

    # colours first: the volumes logic looks up default colour nodes through the application logic
    colors = register("Colors", slicer.vtkSlicerColorLogic())
    app_logic.SetColorLogic(colors)
    register("Volumes", slicer.vtkSlicerVolumesLogic())
    register("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic())
    register("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic())
    register("Sequences", slicer.vtkSlicerSequencesLogic())

    core = SlicerCore(scene, app_logic, logics)
    if install:
        slicer.mrmlScene = scene
        slicer.modules = types.SimpleNamespace(**{name.lower(): _module(logic) for name, logic in logics.items()})
    return core


def segment_editor(core: SlicerCore, segmentation_node, source_volume_node):
    """Segment Editor's C++ logic on ``segmentation_node`` with its parameter node (as the desktop
    module sets up when the user opens Segment Editor on our segmentation)."""
    import slicer

    editor_node = core.scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode", "SegmentEditor")
    editor = slicer.vtkSlicerSegmentEditorLogic()
    editor.SetMRMLApplicationLogic(core.app_logic)
    editor.SetMRMLScene(core.scene)
    editor.SetSegmentEditorNode(editor_node)
    editor.SetSegmentationNode(segmentation_node)
    editor.SetSourceVolumeNode(source_volume_node)
    return editor, editor_node
