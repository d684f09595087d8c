"""The Slicer layer of BreastTumorSeg: MRML nodes <-> backend values, no Qt.

Imports point one way: the Qt module (BreastTumorSeg.py) -> this package -> the backend
(``breasttumorseg``). Runs on the Slicer core alone (PyPI ``slicer-core``) for CI.
"""

from .logic import BreastTumorSegLogic
from .phases import TIME_ATTRIBUTE, phasesFromNode

__all__ = ["BreastTumorSegLogic", "TIME_ATTRIBUTE", "phasesFromNode"]
