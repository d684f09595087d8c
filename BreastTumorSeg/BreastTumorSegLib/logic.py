"""BreastTumorSegLogic: DCE phases in the MRML scene -> tumor probability and segmentation nodes.

Qt-free: runs on the Slicer core alone (PyPI ``slicer-core``, used by the CI tests) and in
the desktop application, where the module's widget calls it. Inside Slicer the class
derives from ``ScriptedLoadableModuleLogic``; without that (slicer-core) from ``object``.

Every method that creates nodes creates them only after the backend succeeded, and removes
what it created when a later step fails, so a failure leaves the scene as it was.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

import numpy as np
import slicer

from breasttumorseg.core.errors import GeometryError, InputError
from breasttumorseg.core.geometry import Geometry, lps_to_ras, resample
from breasttumorseg.run.request import SegmentationRequest, model_reference

from . import export as _export
from . import nodes, phases as _phases
from .background import BackgroundSegmentation
from .livethreshold import LiveThreshold

try:  # the desktop application's base class; absent from slicer-core
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic as _LogicBase
except ImportError:  # pragma: no cover - depends on the environment
    _LogicBase = object

log = logging.getLogger("breasttumorseg")

#: Smallest fraction of the reference grid another phase must cover (as the backend's loader).
MIN_OVERLAP = 0.5
#: Probability maps whose threshold index the logic keeps (the newest ones).
LIVE_THRESHOLD_MAPS = 2
#: Attribute and reference names stored on our nodes (a saved scene keeps them).
ROLE_ATTRIBUTE = "BreastTumorSeg.Role"
PROBABILITY_REFERENCE = "BreastTumorSeg.Probability"


class BreastTumorSegLogic(_LogicBase):
    """The module's logic; the tests, the reader study and users' scripts call it.

    ``scene`` defaults to ``slicer.mrmlScene``. ``warn`` receives one-line warnings (phases
    resampled, times missing); default: the ``breasttumorseg`` logger.
    """

    def __init__(self, scene=None, warn: Optional[Callable[[str], None]] = None):
        if _LogicBase is not object:
            _LogicBase.__init__(self)
        self._scene = scene
        self.warn = warn or (lambda message: log.warning(message))
        self._liveThresholds: dict = {}  # probability node ID -> LiveThreshold, oldest first

    @property
    def scene(self):
        return self._scene if self._scene is not None else slicer.mrmlScene

    # ------------------------------------------------------------------------- phases
    def phasesFromNode(self, node) -> list:
        """``[(scalar volume node, time s or None), ...]`` ordered by time (see :mod:`.phases`)."""
        return _phases.phasesFromNode(node, warn=self.warn)

    def studyFromPhases(self, phases, source: Optional[str] = None):
        """A :class:`~breasttumorseg.exam.dce_exam.DCEStudy` of the phases on phase 1's grid.

        ``phases`` is a phase list or anything :meth:`phasesFromNode` takes. Phases on
        another grid are resampled (linear) onto the first post-contrast's grid with a
        warning; one covering less than half of it is refused (GeometryError).
        """
        from breasttumorseg.exam.dce_exam import DCEStudy

        phaseList = self._phaseList(phases)
        source = source or _sourceName(phases, phaseList)
        if not phaseList:
            raise InputError("no DCE phases selected", source)
        if len(phaseList) < 2:
            raise InputError("a DCE study needs a pre-contrast and at least one post-contrast phase, got 1 phase",
                             source)
        reference = nodes.geometryFromVolumeNode(phaseList[1][0])
        arrays = []
        for node, _ in phaseList:
            array = nodes.volumeArray(node)
            geometry = nodes.geometryFromVolumeNode(node)
            if not geometry.same_grid(reference):
                if reference.overlap_fraction(geometry) < MIN_OVERLAP:
                    raise GeometryError(f"phase {node.GetName()} covers less than half of the first post-contrast "
                                        f"phase; the phases do not show the same region", source)
                self.warn(f"{source}: phase {node.GetName()} resampled onto the first post-contrast grid "
                          f"({'; '.join(reference.differences(geometry))})")
                array = resample(array, geometry, reference)
            arrays.append(array)
        names = [node.GetName() or f"phase {i}" for i, (node, _) in enumerate(phaseList)]
        return DCEStudy(np.stack(arrays), reference, _phases.phaseTimes(phaseList), names, source)

    # ------------------------------------------------------------------------- segmentation
    def loadStudy(self, inputs, times_s=None, name: Optional[str] = None, progress=None, cancel=None):
        """Load a study from files (phase images, a 4D NIfTI or DICOM folders) into the scene.

        Returns ``(volume nodes, DCEStudy)``: one scalar volume per phase in time order, on the
        study's grid, named ``"<name> <phase name>"``, each with its acquisition time in the
        ``TIME_ATTRIBUTE`` attribute (so :meth:`phasesFromNode` reads them back in order).
        Bad input raises the backend's one-line error before any node is made; the scene is
        left as it was on any failure (the caller swaps a case in only once this returned).
        """
        from breasttumorseg.exam.loading import load_study

        study = load_study(inputs, times_s, warn=self.warn, progress=progress, cancel=cancel)
        prefix = f"{name} " if name else ""
        times = list(study.times_s) if study.times_s is not None else [None] * study.n_phases
        volumes = []
        with nodes.removedOnFailure(self.scene):
            for phase, phaseName, seconds in zip(study.phases, study.phase_names, times):
                node = nodes.newScalarVolumeNode(phase, study.geometry, f"{prefix}{phaseName}", self.scene)
                if seconds is not None:
                    node.SetAttribute(_phases.TIME_ATTRIBUTE, f"{float(seconds):g}")
                volumes.append(node)
        return volumes, study

    def segment(self, phases, model=None, device: str = "auto", progress=None, *, cancel=None,
                threshold: Optional[float] = None, relative: Optional[bool] = None,
                minComponentMl: float = 0.0, name: Optional[str] = None, nnunetOptions: dict | None = None):
        """Segment the tumor, blocking; returns ``(probability volume node, segmentation node)``.

        ``phases``: a phase list or a DCE source node (sequence, MultiVolume, volumes).
        ``model``: a registry name, a .safetensors path, an nnU-Net v2 model folder, a loaded
        model, or None (default). ``nnunetOptions``: for a model folder, the request's
        ``channels`` (``NAME=ROLE``), ``folds``, ``configuration``, ``mirroring``, ``whole_image``,
        ``region`` (``whole``, ``body`` or ``breasts``).
        ``device``: "auto", "cpu" or "cuda". ``progress(step, fraction)`` as the backend's.
        Threshold settings default to the model card's. Bad input raises the backend's
        one-line error and leaves the scene unchanged.
        """
        job = self.prepareSegmentation(phases, model, threshold=threshold, relative=relative,
                                       minComponentMl=minComponentMl, device=device, nnunetOptions=nnunetOptions)
        job.run(progress=progress, cancel=cancel, warn=self.warn)
        return self.finishJob(job, name=name)

    def prepareSegmentation(self, phases, model=None, *, threshold: Optional[float] = None,
                            relative: Optional[bool] = None, minComponentMl: float = 0.0,
                            device: str = "auto", nnunetOptions: dict | None = None) -> "SegmentationJob":
        """The scene half of an in-process run, on the main thread: the study read from the
        nodes, the model loaded, the request checked. ``job.run(...)`` then touches only the
        backend (a worker thread may run it); :meth:`finishJob` makes the result nodes."""
        phaseList = self._phaseList(phases)
        study = self.studyFromPhases(phaseList, source=_sourceName(phases, phaseList))
        request = _request(study, model, device, threshold, relative, minComponentMl, nnunetOptions)
        loaded = _loadModel(model, request, study.n_phases, self.warn)
        if hasattr(loaded, "check_study"):
            loaded.check_study(study)
        return SegmentationJob(phaseList, request, loaded, phases)

    def finishJob(self, job: "SegmentationJob", name: Optional[str] = None):
        """The result of a finished :class:`SegmentationJob` as ``(probability node, segmentation node)``."""
        result = job.result
        if result is None:
            raise InputError("the segmentation has not finished", job.study.source)
        card = job.model.card
        return self.addResult(job.phaseList, result.probability, result.mask, job.settings,
                              name=name or job.study.source, modelName=f"{card.name} {card.version}",
                              source=job.source)

    def startSegmentation(self, phases, model=None, device: str = "auto", *, threshold=None,
                          relative: Optional[bool] = None, minComponentMl: float = 0.0,
                          pythonExecutable: Optional[str] = None,
                          nnunetOptions: dict | None = None) -> BackgroundSegmentation:
        """Start the backend CLI in a background process; returns its runner.

        The caller (the widget's timer) calls ``runner.poll()`` until it returns a final
        state, then :meth:`finishSegmentation`; ``runner.cancel()`` kills the process.
        Input errors (no phases, one phase, bad grids, bad settings) are raised here, before starting.
        """
        phaseList = self._phaseList(phases)
        study = self.studyFromPhases(phaseList, source=_sourceName(phases, phaseList))
        request = _request(study, model, device, threshold, relative, minComponentMl, nnunetOptions)
        _checkModelFor(study, request)
        runner = BackgroundSegmentation(request, pythonExecutable=pythonExecutable)
        runner.phaseList = phaseList
        runner.sourceName = study.source
        runner.source = phases
        runner.start()
        return runner

    def finishSegmentation(self, runner: BackgroundSegmentation, name: Optional[str] = None):
        """Load a finished background run into nodes: ``(probability node, segmentation node)``."""
        try:
            probability, mask, geometry, settings, modelName = runner.result()
            return self.addResult(runner.phaseList, probability, mask, settings, name=name or runner.sourceName,
                                  modelName=modelName, source=runner.source, expectedGeometry=geometry)
        finally:
            runner.cleanup()

    def addResult(self, phases, probability: np.ndarray, mask: Optional[np.ndarray] = None, settings=None, *,
                  name: str = "DCE", modelName: str = "", source=None, expectedGeometry: Optional[Geometry] = None):
        """Nodes for a probability map ``[z, y, x]`` on the phases' reference grid (phase 1).

        Creates the probability volume (colour table, window 0..1, values below the
        threshold hidden) and a segmentation with one segment "Tumor" whose reference
        geometry is the reference phase's. ``mask`` defaults to thresholding ``probability``
        with ``settings`` (a ThresholdSettings; default 0.5 absolute).
        Returns ``(probabilityNode, segmentationNode)``.
        """
        phaseList = self._phaseList(phases)
        if len(phaseList) < 2:
            raise InputError("a DCE study needs a pre-contrast and at least one post-contrast phase",
                             _sourceName(source, phaseList))
        referenceNode = phaseList[1][0]
        geometry = nodes.geometryFromVolumeNode(referenceNode)
        probability = np.asarray(probability, dtype=np.float32)
        if probability.shape != geometry.shape_zyx or (expectedGeometry is not None
                                                       and not expectedGeometry.same_grid(geometry)):
            raise GeometryError("the probability map does not lie on the first post-contrast phase's grid",
                                _sourceName(source, phaseList))
        settings = settings or _thresholdSettings()
        if mask is None:
            mask = _segmentProbability(probability, geometry, settings)
        scene = self.scene
        with nodes.removedOnFailure(scene):
            probabilityNode = nodes.newScalarVolumeNode(probability, geometry, f"{name} tumor probability", scene)
            probabilityNode.SetAttribute(ROLE_ATTRIBUTE, "Probability")
            if modelName:
                probabilityNode.SetAttribute("BreastTumorSeg.Model", modelName)
            nodes.showProbability(probabilityNode, _displayThreshold(float(np.max(probability)), settings))
            # the segmentation's reference geometry comes from a volume in this scene: the reference
            # phase when it is one (DICOM SEG export references it), else the probability map (same grid)
            geometryNode = referenceNode if _inScene(referenceNode, scene) else probabilityNode
            anchor = referenceNode if _inScene(referenceNode, scene) else _sceneAnchor(source, scene)
            if (geometryNode is probabilityNode and anchor is not None and anchor.IsA("vtkMRMLScalarVolumeNode")
                    and anchor.GetImageData() is not None and nodes.geometryFromVolumeNode(anchor).same_grid(geometry)):
                geometryNode = anchor  # a sequence's proxy volume: the image the user sees
            segmentationNode, segmentId = nodes.addTumorSegmentation(scene, geometryNode, geometry,
                                                                     f"{name} tumor segmentation")
            segmentationNode.SetAttribute(ROLE_ATTRIBUTE, "Segmentation")
            segmentationNode.SetAttribute("BreastTumorSeg.SegmentID", segmentId)
            segmentationNode.SetNodeReferenceID(PROBABILITY_REFERENCE, probabilityNode.GetID())
            _storeSettings(segmentationNode, settings)
            live = self._liveThreshold(probabilityNode)
            live.prepare(settings)
            if live.index.serves(settings) and np.array_equal(mask, live.index.mask(settings)):
                live.apply(segmentationNode, segmentId, settings)  # the slider's next change writes only what changes
            else:
                nodes.setSegmentFromArray(segmentationNode, segmentId, mask, geometry)
            transformId = referenceNode.GetTransformNodeID() if _inScene(referenceNode, scene) else None
            if transformId:
                probabilityNode.SetAndObserveTransformNodeID(transformId)
                segmentationNode.SetAndObserveTransformNodeID(transformId)
            nodes.placeBeside([probabilityNode, segmentationNode], anchor)
        return probabilityNode, segmentationNode

    def updateSegmentation(self, probabilityNode, segmentationNode, threshold: float, relative: bool = False,
                           minComponentMl: float = 0.0, returnMask: bool = True) -> Optional[np.ndarray]:
        """Re-threshold the probability map into the tumor segment (the slider's action).

        ``threshold`` is an absolute probability (0..1) or, with ``relative``, a fraction of
        the maximum (Hirsch et al.). Components smaller than ``minComponentMl`` mL are
        dropped. Also moves the overlay's display threshold. Returns the new mask
        ``[z, y, x]`` on the probability map's grid; with ``returnMask=False`` (a caller that
        does not read it: the slider) it may return None instead of building a grid-size mask.
        """
        if not 0.0 <= float(threshold) <= 1.0:
            raise InputError(f"threshold must be between 0 and 1, got {threshold}")
        settings = _thresholdSettings(threshold, relative, minComponentMl)
        settings.validate()
        live = self._liveThreshold(probabilityNode)
        mask = live.apply(segmentationNode, nodes.tumorSegmentId(segmentationNode), settings, returnMask)
        _storeSettings(segmentationNode, settings)
        nodes.setDisplayThreshold(probabilityNode, _displayThreshold(live.index.peak, settings))
        return mask

    # ------------------------------------------------------------------------- measurements and export
    def segmentMask(self, segmentationNode, geometry: Geometry) -> np.ndarray:
        """The tumor segment as a uint8 mask on ``geometry`` (after any Segment Editor edits)."""
        return nodes.segmentArray(segmentationNode, nodes.tumorSegmentId(segmentationNode), geometry)

    def measure(self, segmentationNode, phases, ftvOptions: Optional[dict] = None) -> dict:
        """Measurements of the tumor segment as it is now (after threshold and edits), with
        the CLI's names (tumor_volume_ml, longest_diameter_mm and t_category of the index
        lesion, n_lesions, lesions, functional_tumor_volume_ml, kinetic_curve_type, ...).
        Each lesion has its centroid in Slicer's RAS mm too (``centroid_ras_mm``) beside the
        backend's ``centroid_lps_mm``."""
        from breasttumorseg.reporting.measurements import measure

        study = self.studyFromPhases(phases)
        mask = self.segmentMask(segmentationNode, study.geometry)
        measurements = measure(study, mask, ftv_options=ftvOptions)
        for lesion in measurements["lesions"]:
            lesion["centroid_ras_mm"] = [float(v) for v in lps_to_ras(lesion["centroid_lps_mm"])]
        return measurements

    def export(self, segmentationNode, path, referenceVolumeNode=None) -> str:
        """Write the segmentation to ``path``, the format chosen by its extension:
        .seg.nrrd, .nii / .nii.gz (labelmap on the reference grid), .stl / .obj (surface,
        LPS). DICOM SEG needs the desktop's DICOM module. Returns the path written."""
        reference = referenceVolumeNode or self._referenceVolume(segmentationNode)
        return _export.exportSegmentation(segmentationNode, path, reference, self.scene)

    def exportProbability(self, probabilityNode, path) -> str:
        """Write the probability map (float32, on its grid) as .nrrd / .nii / .nii.gz."""
        return _export.exportVolume(probabilityNode, path)

    def loadSegmentation(self, path, name: Optional[str] = None):
        """Load a .seg.nrrd (ours or the backend's) as a segmentation node."""
        return _export.loadSegmentation(path, self.scene, name)

    # ------------------------------------------------------------------------- helpers
    @staticmethod
    def listModels() -> list:
        """The registry's model cards (name, version, inputs, min_phases, trained_on, ...)."""
        from breasttumorseg.segmentation.models import list_models

        return list(list_models(task="tumor"))

    def _liveThreshold(self, probabilityNode) -> LiveThreshold:
        """The threshold index of ``probabilityNode`` as its voxels are now (built when missing)."""
        nodeId = probabilityNode.GetID()
        live = self._liveThresholds.pop(nodeId, None)
        if live is None or not live.isFor(probabilityNode):
            live = LiveThreshold(probabilityNode)
        self._liveThresholds[nodeId] = live
        while len(self._liveThresholds) > LIVE_THRESHOLD_MAPS:
            self._liveThresholds.pop(next(iter(self._liveThresholds)))
        return live

    def probabilityNodeFor(self, segmentationNode):
        """The probability volume a segmentation was made from (or None)."""
        return segmentationNode.GetNodeReference(PROBABILITY_REFERENCE)

    @staticmethod
    def thresholdSettingsOf(segmentationNode) -> Optional[dict]:
        """The threshold settings a segmentation was last made with: ``{"threshold" (0..1),
        "relative" (bool), "minComponentMl" (mL)}``; None when it was not made from a probability map."""
        threshold = _phases.finiteNumber(segmentationNode.GetAttribute("BreastTumorSeg.Threshold"))
        if threshold is None:
            return None
        minimum = _phases.finiteNumber(segmentationNode.GetAttribute("BreastTumorSeg.MinComponentMl"))
        return {"threshold": min(1.0, max(0.0, threshold)),
                "relative": segmentationNode.GetAttribute("BreastTumorSeg.RelativeThreshold") == "1",
                "minComponentMl": max(0.0, minimum or 0.0)}

    @staticmethod
    def sourceVolumeFor(segmentationNode):
        """The image a segmentation was made on (its reference geometry: the first post-contrast
        phase or the series' proxy volume), or None when that is not an image (e.g. our probability map)."""
        if segmentationNode is None:
            return None
        role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
        node = segmentationNode.GetNodeReference(role)
        if node is not None and node.IsA("vtkMRMLScalarVolumeNode") and not node.GetAttribute(ROLE_ATTRIBUTE):
            return node
        return None

    def _referenceVolume(self, segmentationNode):
        role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
        return segmentationNode.GetNodeReference(role) or self.probabilityNodeFor(segmentationNode)

    def _phaseList(self, phases) -> list:
        if isinstance(phases, (list, tuple)) and all(isinstance(p, tuple) and len(p) == 2 for p in phases):
            return list(phases)
        if isinstance(phases, (list, tuple)) and not phases:
            return []
        return self.phasesFromNode(phases)


class SegmentationJob:
    """One in-process segmentation: made by :meth:`BreastTumorSegLogic.prepareSegmentation`,
    run by :meth:`run` (backend only: no scene access, so a worker thread may run it), put
    into nodes by :meth:`BreastTumorSegLogic.finishJob`.

    ``request`` (its study in memory), ``model`` (loaded), ``settings`` (the threshold the
    result will have), ``result`` (a SegmentationResult once run).
    """

    def __init__(self, phaseList, request, model, source):
        self.phaseList, self.request, self.model, self.source = phaseList, request, model, source
        self.study = request.study
        self.settings = request.threshold_settings(model.card)
        self.result = None

    def run(self, device: str | None = None, progress=None, cancel=None, warn=None):
        from breasttumorseg.run.runner import run_segmentation

        request = self.request if device is None else self.request.replace(device=device)
        self.result = run_segmentation(request, model=self.model, progress=progress, cancel=cancel, warn=warn).result
        return self.result


# ----------------------------------------------------------------------------- module helpers
def _checkModelFor(study, request) -> None:
    """Refuse, before starting a process, a study the chosen model cannot take (too few
    phases, no times, an nnU-Net channel mapping the phases cannot give); a model given by
    path or not in the registry is checked by the CLI."""
    try:
        from breasttumorseg.segmentation.models import default_model_name, list_models, nnunet_entry
    except ImportError:  # the backend's dependencies are not installed yet: the CLI will say so
        return
    model = request.model
    folder, options = nnunet_entry(model)
    if folder is not None:
        from breasttumorseg.segmentation.nnunet_folder import check_study_for_folder

        check_study_for_folder(folder, request.channels or options.get("channels", ()), study, request.configuration)
        return
    if hasattr(model, "card"):
        card = model.card
    else:
        name = default_model_name(study.n_phases) if model is None else str(model)
        card = next((c for c in list_models() if c.name == name), None)
    if card is None:
        return
    if study.n_phases < card.min_phases:
        raise InputError(f"model {card.name} needs at least {card.min_phases} phases, got {study.n_phases}",
                         study.source)
    if getattr(card, "max_phases", None) and study.n_phases > card.max_phases:
        raise InputError(f"model {card.name} takes at most {card.max_phases} phases, got {study.n_phases}",
                         study.source)
    if getattr(card, "needs_times", False):
        study.require_times(f"model {card.name} (its inputs {', '.join(card.inputs)})")


def _request(study, model, device, threshold, relative, minComponentMl, nnunetOptions=None) -> SegmentationRequest:
    """The segmentation request of a study in memory (its settings checked here, before any run).
    A loaded nnU-Net model passes on how it was loaded (channels, folds, mirroring)."""
    options = dict(model.request_options()) if hasattr(model, "request_options") else {}
    options.update({k: v for k, v in (nnunetOptions or {}).items() if v is not None})
    return SegmentationRequest(study=study, model=model_reference(model), device=device, threshold=threshold,
                               relative=relative, min_component_ml=minComponentMl, **options)


def _loadModel(model, request: SegmentationRequest, nPhases: Optional[int] = None, warn=None):
    """A loaded model: the one given, else the request's (the registry's default for ``nPhases`` phases)."""
    from breasttumorseg.run.runner import load_request_model

    if model is not None and hasattr(model, "card") and hasattr(model, "network"):
        return model
    return load_request_model(request, nPhases, warn=warn)


def _thresholdSettings(threshold: float = 0.5, relative: bool = False, minComponentMl: float = 0.0):
    from breasttumorseg.segmentation.postprocess import ThresholdSettings

    return ThresholdSettings(threshold=float(threshold), relative=bool(relative),
                             min_component_ml=float(minComponentMl))


def _segmentProbability(probability, geometry, settings) -> np.ndarray:
    from breasttumorseg.segmentation.postprocess import segment_probability

    return np.asarray(segment_probability(probability, geometry, settings), dtype=np.uint8)


def _displayThreshold(peak: float, settings) -> float:
    """The overlay's lower display threshold for ``settings`` on a map whose maximum is ``peak``."""
    if settings.relative:
        return float(settings.threshold) * max(peak, 1e-6)
    return float(settings.threshold)


def _storeSettings(segmentationNode, settings) -> None:
    """Record the settings on the node (the scene file keeps them) without a Modified event: no view
    draws them, and each event had the segment editor's observers (trame-slicer's in the station:
    its effect pipelines in every view) react to every slider move (~20 ms a move)."""
    quiet = segmentationNode.GetDisableModifiedEvent()
    segmentationNode.SetDisableModifiedEvent(True)
    try:
        segmentationNode.SetAttribute("BreastTumorSeg.Threshold", f"{settings.threshold:g}")
        segmentationNode.SetAttribute("BreastTumorSeg.RelativeThreshold", "1" if settings.relative else "0")
        segmentationNode.SetAttribute("BreastTumorSeg.MinComponentMl", f"{settings.min_component_ml:g}")
    finally:
        segmentationNode.SetDisableModifiedEvent(quiet)


def _inScene(node, scene) -> bool:
    return node is not None and node.GetScene() is not None and node.GetScene() == scene


def _sceneAnchor(source, scene):
    """A node in ``scene`` standing for the DCE source (e.g. the sequence node) for subject hierarchy."""
    if source is not None and hasattr(source, "GetScene") and _inScene(source, scene):
        return source
    return None


def _sourceName(source, phaseList) -> str:
    if source is not None and hasattr(source, "GetName") and source.GetName():
        return source.GetName()
    if phaseList:
        node = phaseList[1][0] if len(phaseList) > 1 else phaseList[0][0]
        if node is not None and node.GetName():
            return node.GetName()
    return "DCE study"

