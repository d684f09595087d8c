"""The Slicer layer of BreastTumorSeg: MRML nodes <-> backend values, no Qt.

Imports point one way: the Qt module (BreastTumorSeg.py) -> this package -> the backend
(``breasttumorseg``). Runs on the Slicer core alone (PyPI ``slicer-core``) for CI.
"""

from .logic import BreastTumorSegLogic  # noqa: F401
from .phases import TIME_ATTRIBUTE, phasesFromNode  # noqa: F401
