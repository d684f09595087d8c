"""The headless Slicer core of a station, exposed where ``slicer.util`` looks.

trame-slicer's :class:`~trame_slicer.core.SlicerApp` makes the MRML scene, the application
logic and the module logics (Colors, Volumes, Segmentations, Subject Hierarchy, ...). The
BreastTumorSeg logic reads volumes through ``slicer.util``, which finds the scene as
``slicer.mrmlScene`` and a module's logic as ``slicer.modules.<name>.logic()``: this module
puts them there, as the desktop application does.
"""

from __future__ import annotations

import types


def create_slicer_app():
    """A trame-slicer SlicerApp whose scene and logics ``slicer.util`` (and our logic) use."""
    import slicer
    from trame_slicer.core import SlicerApp

    app = SlicerApp()
    slicer.mrmlScene = app.scene
    logics = {"volumes": app.volumes_logic, "segmentations": app.segmentations_logic,
              "subjecthierarchy": app.subject_hierarchy_logic, "colors": app.color_logic}
    slicer.modules = types.SimpleNamespace(**{name: types.SimpleNamespace(logic=(lambda l=logic: l))
                                              for name, logic in logics.items()})
    return app
