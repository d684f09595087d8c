"""The Qt sections of the BreastTumorSeg panel, one class per section.

``BreastTumorSeg.py`` builds the panel from ``Resources/UI/BreastTumorSeg.ui`` and mounts these
sections on it: :class:`~.inputs.InputsSection`, :class:`~.run.RunSection` (model, device,
Segment / Cancel), :class:`~.result.ResultSection` (threshold, overlay, refine),
:class:`~.measurements.MeasurementsSection` (measurements and export) and
:class:`~.readerstudy.ReaderStudySection` (with the reading toolbar). Each wires its widgets to
the Qt-free ``BreastTumorSegLib``; decisions that need no Qt live there and are tested there.
"""
