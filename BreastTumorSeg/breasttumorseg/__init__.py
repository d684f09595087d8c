"""BreastTumorSeg backend: breast cancer segmentation on DCE-MRI.

Pure Python (numpy, SimpleITK, torch). Never imports slicer or qt: the Slicer
logic (BreastTumorSegLib) calls this package, never the other way round.
"""

__version__ = "0.1.0"
