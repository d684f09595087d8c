"""Where the module's bundled files lie, found from this file (no settings, no environment)."""

from pathlib import Path

#: ``BreastTumorSeg/``, the scripted module's folder: parent of the ``breasttumorseg`` package and
#: the folder Slicer puts on ``sys.path`` (a background process needs it on ``PYTHONPATH``)
MODULE_FOLDER = Path(__file__).resolve().parents[2]
RESOURCES = MODULE_FOLDER / "Resources"
#: the bundled model registry (``models.json``, weights and model cards)
BUNDLED_MODELS = RESOURCES / "Models"
#: the bundled sample study: ``phase_*.nii.gz``, ``times.json`` and ``tumor_mask.nii.gz``
SAMPLE_STUDY_FOLDER = RESOURCES / "SampleData" / "SampleBreastDCE"
#: real tumor shapes the phantom draws from (with their licence in ``README.md``)
TUMOR_SHAPES_FOLDER = RESOURCES / "TumorShapes"
