"""The headless Slicer core of a station, exposed where ``slicer.util`` looks.

trame-slicer's :class:`~trame_slicer.core.SlicerApp` makes the MRML scene, the application
logic and the module logics (Colors, Volumes, Segmentations, Subject Hierarchy, ...). The
BreastTumorSeg logic reads volumes through ``slicer.util``, which finds the scene as
``slicer.mrmlScene`` and a module's logic as ``slicer.modules.<name>.logic()``: this module
puts them there, as the desktop application does.

The views render offscreen. VTK picks its OpenGL window at run time and on Linux tries X
first: with no display that attempt fails with "bad X server connection. DISPLAY=" before it
falls back to EGL. Without a display the station asks VTK for its EGL window directly
(``VTK_DEFAULT_OPENGL_WINDOW``, VTK's own switch; a value the user set is kept).
"""

from __future__ import annotations

import os
import sys
import types

OPENGL_WINDOW_VARIABLE = "VTK_DEFAULT_OPENGL_WINDOW"


def choose_offscreen_window(environ=os.environ) -> None:
    """Ask VTK for its EGL render window where there is no display to try X on (Linux)."""
    has_display = environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY")
    if sys.platform.startswith("linux") and not has_display:
        environ.setdefault(OPENGL_WINDOW_VARIABLE, "vtkEGLRenderWindow")


def create_slicer_app():
    """A trame-slicer SlicerApp whose scene and logics ``slicer.util`` (and our logic) use."""
    choose_offscreen_window()  # before the first render window is made
    import slicer
    from trame_slicer.core import SlicerApp

    app = SlicerApp()
    slicer.mrmlScene = app.scene
    logics = {"volumes": app.volumes_logic, "segmentations": app.segmentations_logic,
              "subjecthierarchy": app.subject_hierarchy_logic, "colors": app.color_logic}
    slicer.modules = types.SimpleNamespace(**{name: types.SimpleNamespace(logic=(lambda bound=logic: bound))
                                              for name, logic in logics.items()})
    return app
