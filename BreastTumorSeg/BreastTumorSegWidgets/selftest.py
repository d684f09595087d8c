"""The whole workflow on the synthetic sample study inside a real Slicer ("Reload and Test")."""

from __future__ import annotations

import os
import tempfile
import time
import unittest

import numpy as np
import qt
import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from BreastTumorSegLib import BreastTumorSegLogic, install, nodes

from .inputs import PHASE_COLUMNS
from .sampledata import loadSampleStudy, registerSampleData


class BreastTumorSegTest(ScriptedLoadableModuleTest):
    """Sample study -> segmentation -> threshold -> measurements -> export; then the panel itself."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_workflow()
        self.setUp()
        self.test_panel()

    def _requireBackend(self):
        missing = install.missingDependencies()
        if missing:
            raise unittest.SkipTest(f"BreastTumorSeg test needs {', '.join(missing)} in Slicer's Python "
                                    f"(press Segment once to install them)")

    def test_workflow(self):
        """Sample study -> phases -> blocking segmentation -> threshold -> measurements -> export, reload."""
        self._requireBackend()
        self.delayDisplay("Loading the sample study")
        registerSampleData()
        sample = loadSampleStudy()
        logic = BreastTumorSegLogic()

        phases = logic.phasesFromNode(sample["proxy"])  # the series the user sees: the whole sequence
        self.assertGreaterEqual(len(phases), 2)
        times = [time for _, time in phases]
        self.assertTrue(all(time is not None for time in times))
        self.assertEqual(times, sorted(times))

        self.delayDisplay("Segmenting (blocking)")
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        probability, segmentation = logic.segment(sample["proxy"])
        self.assertGreater(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        reference = nodes.geometryFromVolumeNode(phases[1][0])  # the result lies on the first post-contrast grid
        self.assertTrue(nodes.geometryFromVolumeNode(probability).same_grid(reference))
        geometryNode = segmentation.GetNodeReference(
            slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())
        self.assertIsNotNone(geometryNode)
        self.assertTrue(nodes.geometryFromVolumeNode(geometryNode).same_grid(reference))
        mask = logic.segmentMask(segmentation, reference)
        self.assertGreater(int(mask.sum()), 0)
        if sample["truth"] is not None:  # overlap with the phantom's true tumor (a flipped axis would fail)
            truth = nodes.segmentArray(sample["truth"], sample["truth"].GetSegmentation().GetNthSegmentID(0),
                                       reference) > 0
            dice = 2.0 * np.logical_and(mask > 0, truth).sum() / max(1, (mask > 0).sum() + truth.sum())
            self.assertGreater(dice, 0.5, f"Dice with the phantom's true tumor is {dice:.2f}")

        measurements = logic.measure(segmentation, phases)
        for key in ("tumor_volume_ml", "longest_diameter_mm", "t_category", "functional_tumor_volume_ml",
                    "kinetic_curve_type"):
            self.assertIn(key, measurements)
        self.assertGreater(measurements["tumor_volume_ml"], 0.0)
        index = measurements["lesions"][0]  # the largest lesion gives the diameter; the total is all lesions
        self.assertEqual(measurements["longest_diameter_mm"], index["longest_diameter_mm"])
        self.assertAlmostEqual(measurements["tumor_volume_ml"],
                               sum(lesion["volume_ml"] for lesion in measurements["lesions"]), places=6)

        self.delayDisplay("Threshold changes")
        low = logic.updateSegmentation(probability, segmentation, 0.2)
        high = logic.updateSegmentation(probability, segmentation, 0.8)
        self.assertLessEqual(int(high.sum()), int(low.sum()))
        np.testing.assert_array_equal(logic.segmentMask(segmentation, reference), high)
        logic.updateSegmentation(probability, segmentation, 0.5)

        self.delayDisplay("Export and reload")
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "tumor.seg.nrrd")
            logic.export(segmentation, path)
            reloaded = logic.loadSegmentation(path)
            np.testing.assert_array_equal(logic.segmentMask(reloaded, reference),
                                          logic.segmentMask(segmentation, reference))
            labelmapPath = os.path.join(folder, "tumor.nii.gz")
            logic.export(segmentation, labelmapPath)
            self.assertTrue(os.path.isfile(labelmapPath))
        self.delayDisplay("Workflow test passed")

    def test_panel(self):
        """The panel: first-open state, sample button, phase table, bad input, background run, live threshold."""
        self._requireBackend()
        slicer.util.selectModule("BreastTumorSeg")
        widget = slicer.modules.breasttumorseg.widgetRepresentation().self()
        widget.quietErrors = True
        ui = widget.ui
        self.assertTrue(ui.loadSampleButton.visible)  # first open: the hint and the sample button
        self.assertIn("Load sample study", ui.firstStepHintLabel.text)
        self.assertTrue(ui.resultCollapsibleButton.collapsed)
        self.assertLessEqual(widget.parent.sizeHint.width(), 440)
        ui.loadSampleButton.click()
        slicer.app.processEvents()
        pn = widget._parameterNode
        self.assertIsNotNone(pn.dceSource)
        count = pn.dceSource.GetNumberOfDataNodes()
        self.assertEqual(ui.phaseTable.rowCount, count)
        self.assertEqual(ui.phaseTable.item(0, PHASE_COLUMNS["role"]).text(), "pre-contrast")
        self.assertFalse(ui.modelCollapsibleButton.collapsed)

        self.delayDisplay("Bad input: one phase")
        include = PHASE_COLUMNS["include"]
        for row in range(1, count):
            ui.phaseTable.item(row, include).setCheckState(qt.Qt.Unchecked)
            slicer.app.processEvents()
        self.assertFalse(ui.segmentButton.enabled)
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        self.assertFalse(widget.run.start())
        self.assertIn("pre-contrast", ui.statusLabel.text)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        for row in range(count):
            ui.phaseTable.item(row, include).setCheckState(qt.Qt.Checked)
            slicer.app.processEvents()
        self.assertEqual(len(widget.inputs.selectedPhases()), count)

        self.delayDisplay("Background run")
        self.assertTrue(widget.run.start())
        self.assertEqual(ui.segmentButton.text, "Cancel")
        deadline = time.time() + 600
        while widget.run.isRunning() and time.time() < deadline:
            slicer.app.processEvents()
            time.sleep(0.05)
        self.assertFalse(widget.run.isRunning(), "the background segmentation did not finish in 10 minutes")
        self.assertIsNotNone(pn.segmentation, ui.statusLabel.text)
        self.assertIsNotNone(pn.probabilityVolume)
        self.assertEqual(ui.segmentButton.text, "Segment")
        self.assertFalse(ui.resultCollapsibleButton.collapsed)

        self.delayDisplay("Live threshold and measurements")
        reference = nodes.geometryFromVolumeNode(pn.probabilityVolume)
        before = int(widget.logic.segmentMask(pn.segmentation, reference).sum())
        ui.thresholdSlider.value = 0.95
        widget.result.applyThreshold()
        self.assertLessEqual(int(widget.logic.segmentMask(pn.segmentation, reference).sum()), before)
        widget.measurements.update()
        rows = ui.measurementsTable.rowCount
        self.assertGreater(rows, 0)
        self.assertGreaterEqual(ui.measurementsTable.height,
                                sum(ui.measurementsTable.rowHeight(row) for row in range(rows)))
        self.assertIn("tumor_volume_ml", widget.measurements.text())

        self.delayDisplay("Cancel")
        self.assertTrue(widget.run.start())
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        widget.run.onSegmentOrCancel()
        self.assertFalse(widget.run.isRunning())
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        self.assertIn("cancelled", ui.statusLabel.text)
        widget.quietErrors = False
        self.delayDisplay("Panel test passed")
