"""One segmentation request: which study, which model, where it runs, how the probability
is thresholded and how the functional tumor volume is measured.

The command line (``segment``, ``batch``, ``demo``), the Slicer logic (blocking and
background runs), the browser station and the reader study's AI all describe a
segmentation as a :class:`SegmentationRequest`; :func:`breasttumorseg.run.runner.run_segmentation`
runs it. Its values are checked here, once (:meth:`SegmentationRequest.validate`), and it
turns into command-line arguments (:meth:`~SegmentationRequest.to_args`, what the Slicer
module's background process receives) and back (:meth:`~SegmentationRequest.from_args`,
what ``segment`` and ``batch`` parse) in this module only, next to the options' declarations
(:func:`add_request_arguments`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

from ..exam.channels import parse_channel_option
from ..core.errors import InputError
from ..segmentation.postprocess import ThresholdSettings
from ..exam.dce_exam import DCEStudy
from ..segmentation.models import NNUNET_REGIONS
from ..segmentation.pipeline import threshold_settings

DEVICES = ("auto", "cpu", "cuda")
#: Functional tumor volume defaults (I-SPY / ACRIN 6657 convention).
PE_THRESHOLD_PERCENT = 70.0
FTV_BACKGROUND_FRACTION = 0.6
EARLY_TIME_S = 150.0
LATE_TIME_S = 450.0


@dataclass(frozen=True)
class SegmentationRequest:
    """Everything that decides one segmentation's result.

    Attributes:
        phases: image files (one per phase, or one 4D NIfTI) or DICOM folders, as
            :func:`breasttumorseg.exam.loading.load_study` reads them; empty when ``study`` is given.
        times_s: acquisition time of each phase in seconds, in the order of ``phases``
            (None: DICOM tags or times.json).
        study: a study already in memory (:class:`~breasttumorseg.exam.dce_exam.DCEStudy`), instead
            of ``phases``; it cannot travel as command-line arguments (write its phases
            first: :meth:`with_phase_files`).
        model: a registry name or a model path (None: the registry's default for the
            study's number of phases).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        batch_size: tiles per forward pass (None: 1 on the CPU, 4 on a GPU).
        threshold: probability threshold 0..1 (None: the model card's).
        relative: the threshold is a fraction of the maximum probability (Hirsch et al.);
            None: the model card's choice.
        min_component_ml: connected components smaller than this (mL) are dropped.
        pe_threshold_percent, ftv_background_fraction, early_time_s, late_time_s: the
            functional tumor volume's settings (see :mod:`breasttumorseg.reporting.measurements`).
        configuration, folds, mirroring, channels, whole_image: for an nnU-Net v2 model
            folder: its configuration (None: the only one, else 3d_fullres), the folds averaged
            (None: all present), test-time mirroring, ``NAME=ROLE`` bindings of its channels
            to phases (empty: the preset, :mod:`breasttumorseg.exam.channels`), and whether every
            tile of the image runs (as nnU-Net) instead of the tiles inside the body only.
        region: for an nnU-Net v2 model folder, where its tiles run: ``whole`` (every tile, as
            nnU-Net; the same as ``whole_image``), ``body`` (the tiles inside the body) or
            ``breasts`` (inside the model-free classical breast mask grown by 10 mm, and the
            probability 0 outside it, as our models with a breast prior); None: the registry
            entry's choice, else ``body``. ``whole_image`` and ``region`` are kept consistent:
            ``whole_image`` is True exactly when ``region`` is ``whole``.
    """

    phases: tuple[str, ...] = ()
    times_s: tuple[float, ...] | None = None
    study: DCEStudy | None = dataclasses.field(default=None, compare=False, repr=False)
    model: str | None = None
    device: str = "auto"
    batch_size: int | None = None
    threshold: float | None = None
    relative: bool | None = None
    min_component_ml: float = 0.0
    pe_threshold_percent: float = PE_THRESHOLD_PERCENT
    ftv_background_fraction: float = FTV_BACKGROUND_FRACTION
    early_time_s: float = EARLY_TIME_S
    late_time_s: float = LATE_TIME_S
    configuration: str | None = None
    folds: tuple[str, ...] | None = None
    mirroring: bool = False
    channels: tuple[str, ...] = ()
    whole_image: bool = False
    region: str | None = None

    def __post_init__(self):
        # normalise the containers so that equal requests compare equal however they were built
        object.__setattr__(self, "phases", tuple(os.fspath(p) for p in self.phases))
        if self.times_s is not None:
            object.__setattr__(self, "times_s", tuple(float(t) for t in self.times_s))
        if self.model is not None:
            object.__setattr__(self, "model", os.fspath(self.model))
        if self.folds is not None:
            object.__setattr__(self, "folds", tuple(str(f) for f in self.folds))
        object.__setattr__(self, "channels", tuple(str(c) for c in self.channels))
        if self.whole_image and self.region in (None, "whole"):
            object.__setattr__(self, "region", "whole")
        elif self.region == "whole":
            object.__setattr__(self, "whole_image", True)
        self.validate()

    # ------------------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise :class:`InputError` (one line naming the option) for a value that cannot work."""
        if self.study is None and not self.phases:
            raise InputError("give the phases: image files or DICOM folders", "segment")
        if self.study is not None and self.phases:
            raise InputError("give either phase files or a study in memory, not both", "segment")
        if self.device not in DEVICES and not (self.device.startswith("cuda:") and self.device[5:].isdigit()):
            raise InputError(f"must be one of {', '.join(DEVICES)} (or cuda:N), got {self.device!r}", "--device")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"must be at least 1, got {self.batch_size}", "--batch-size")
        if self.threshold is not None and not (math.isfinite(self.threshold) and 0.0 <= self.threshold <= 1.0):
            raise InputError(f"must be between 0 and 1, got {self.threshold}", self._threshold_option)
        if not (math.isfinite(self.min_component_ml) and self.min_component_ml >= 0.0):
            raise InputError(f"must be 0 or more, got {self.min_component_ml}", "--min-component-ml")
        if not math.isfinite(self.pe_threshold_percent):
            raise InputError(f"must be a number, got {self.pe_threshold_percent}", "--pe-threshold")
        if not (math.isfinite(self.ftv_background_fraction) and 0.0 <= self.ftv_background_fraction <= 1.0):
            raise InputError(f"must be between 0 and 1, got {self.ftv_background_fraction}",
                             "--ftv-background-fraction")
        for option, value in (("--early-time", self.early_time_s), ("--late-time", self.late_time_s)):
            if not math.isfinite(value):
                raise InputError(f"must be a number of seconds, got {value}", option)
        for fold in self.folds or ():
            if not (fold.isdigit() or fold == "all"):
                raise InputError(f"a fold is a number or 'all', got {fold!r}", "--folds")
        if self.folds is not None and not self.folds:
            raise InputError("give at least one fold", "--folds")
        for binding in self.channels:
            parse_channel_option(binding)
        if self.region is not None and self.region not in NNUNET_REGIONS:
            raise InputError(f"must be one of {', '.join(NNUNET_REGIONS)}, got {self.region!r}", "--region")
        if self.whole_image and self.region != "whole":
            raise InputError(f"runs every tile; it does not go with --region {self.region}", "--whole-image")

    @property
    def nnunet_options(self) -> dict:
        """The options only nnU-Net model folders take, as keyword arguments of
        :func:`~breasttumorseg.segmentation.nnunet_folder.load_nnunet_model`."""
        return {"configuration": self.configuration, "folds": self.folds, "mirroring": self.mirroring,
                "channels": self.channels, "whole_image": self.whole_image, "region": self.region}

    @property
    def _threshold_option(self) -> str:
        return "--relative-threshold" if self.relative else "--threshold"

    # ------------------------------------------------------------------------- derived values
    def threshold_settings(self, card) -> ThresholdSettings:
        """Post-processing settings: this request's choices, else the defaults of ``card``
        (a :class:`~breasttumorseg.segmentation.models.ModelCard`)."""
        return threshold_settings(card, self.threshold, self.relative, self.min_component_ml)

    @property
    def ftv_options(self) -> dict:
        """Keyword arguments of :func:`breasttumorseg.reporting.measurements.measure`'s ``ftv_options``."""
        return {"pe_threshold_percent": self.pe_threshold_percent, "background_fraction": self.ftv_background_fraction,
                "early_time_s": self.early_time_s, "late_time_s": self.late_time_s}

    def replace(self, **changes) -> SegmentationRequest:
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    def with_phase_files(self, files) -> SegmentationRequest:
        """The request reading ``files`` (the in-memory study's phases, written by the caller in
        phase order) with the study's acquisition times."""
        times = self.times_s
        if times is None and self.study is not None and self.study.times_s is not None:
            times = tuple(float(t) for t in self.study.times_s)
        return self.replace(phases=tuple(os.fspath(f) for f in files), study=None, times_s=times)

    # ------------------------------------------------------------------------- command line
    def to_args(self) -> list[str]:
        """The ``segment`` command's arguments for this request (without ``--output``):
        ``from_args(parser.parse_args(["segment", *to_args(), "--output", DIR]))`` is this request."""
        if self.study is not None:
            raise ValueError("a study in memory has no command line: write its phases, then with_phase_files()")
        args = list(self.phases)
        if self.times_s is not None:
            args += ["--times", *[_number(t) for t in self.times_s]]
        if self.model is not None:
            args += ["--model", self.model]
        args += ["--device", self.device]
        if self.batch_size is not None:
            args += ["--batch-size", str(self.batch_size)]
        if self.threshold is not None:
            args += [self._threshold_option, _number(self.threshold)]
        elif self.relative is not None:
            raise ValueError("the command line gives relative thresholds with their value (--relative-threshold F)")
        if self.min_component_ml:
            args += ["--min-component-ml", _number(self.min_component_ml)]
        if self.configuration is not None:
            args += ["--configuration", self.configuration]
        if self.folds is not None:
            args += ["--folds", *self.folds]
        if self.mirroring:
            args += ["--mirroring"]
        for binding in self.channels:
            args += [f"--channel={binding}"]
        if self.region is not None:
            args += ["--region", self.region]
        for option, value, default in (("--pe-threshold", self.pe_threshold_percent, PE_THRESHOLD_PERCENT),
                                       ("--ftv-background-fraction", self.ftv_background_fraction,
                                        FTV_BACKGROUND_FRACTION),
                                       ("--early-time", self.early_time_s, EARLY_TIME_S),
                                       ("--late-time", self.late_time_s, LATE_TIME_S)):
            if value != default:
                args += [option, _number(value)]
        return args

    @classmethod
    def from_args(cls, args, phases=None, times_s=None) -> SegmentationRequest:
        """The request of parsed options (an argparse Namespace of ``segment``, ``batch`` or
        ``demo``); ``phases`` / ``times_s`` replace the Namespace's own (``batch``'s cases)."""
        relative_threshold = getattr(args, "relative_threshold", None)
        absolute_threshold = getattr(args, "threshold", None)
        threshold = relative_threshold if relative_threshold is not None else absolute_threshold
        times = times_s if phases is not None else getattr(args, "times", None)
        return cls(
            phases=tuple(phases if phases is not None else getattr(args, "phases", ())),
            times_s=None if times is None else tuple(times),
            model=getattr(args, "model", None),
            device=getattr(args, "device", "auto") or "auto",
            batch_size=getattr(args, "batch_size", None),
            threshold=threshold,
            relative=None if threshold is None else relative_threshold is not None,
            min_component_ml=getattr(args, "min_component_ml", 0.0),
            pe_threshold_percent=getattr(args, "pe_threshold", PE_THRESHOLD_PERCENT),
            ftv_background_fraction=getattr(args, "ftv_background_fraction", FTV_BACKGROUND_FRACTION),
            early_time_s=getattr(args, "early_time", EARLY_TIME_S),
            late_time_s=getattr(args, "late_time", LATE_TIME_S),
            configuration=getattr(args, "configuration", None),
            folds=getattr(args, "folds", None),
            mirroring=bool(getattr(args, "mirroring", False)),
            channels=tuple(getattr(args, "channel", None) or ()),
            whole_image=bool(getattr(args, "whole_image", False)),
            region=getattr(args, "region", None),
        )


def model_reference(model) -> str | None:
    """What a request names for ``model``: a name or path as given, or for a loaded model the
    file or folder it was loaded from (a background process loads it again from there)."""
    if model is None or isinstance(model, (str, os.PathLike)):
        return None if model is None else os.fspath(model)
    path = getattr(model, "weights_path", None) or getattr(model, "path", None)
    return os.fspath(path) if path is not None else model.card.name


def _number(value: float) -> str:
    """The shortest text that reads back as the same float (``150.0`` -> ``150``)."""
    text = repr(float(value))
    return text.removesuffix(".0")


# ----------------------------------------------------------------------------- argparse options
def add_request_arguments(p, *, phases: bool = True) -> None:
    """Declare the options :meth:`SegmentationRequest.from_args` reads (``segment``, ``batch``)."""
    if phases:
        p.add_argument("phases", nargs="+", metavar="PHASE",
                       help="one image file per phase (.nii, .nii.gz, .nrrd, .mha), one 4D NIfTI, or DICOM "
                            "folder(s); the earliest phase is the pre-contrast")
        p.add_argument("--times", nargs="+", type=float, metavar="S",
                       help="acquisition time of each phase in seconds (from injection or from the "
                            "pre-contrast), in the order of the phases; default: DICOM tags or times.json")


def add_model_arguments(p) -> None:
    """``--model``, ``--device``, ``--batch-size``."""
    p.add_argument("--model", metavar="NAME|PATH",
                   help="a model name from `breasttumorseg models`, a .safetensors file with its "
                        "card <name>.json beside it, or an nnU-Net v2 model folder (or a folder above it, "
                        "as unzipped) (default: the registry's default model)")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="where the network runs; auto = the GPU when there is one (default: auto)")
    p.add_argument("--batch-size", type=int, metavar="N", help="tiles per forward pass (default: 1 on CPU, 4 on GPU)")
    add_nnunet_arguments(p)


def add_nnunet_arguments(p) -> None:
    """``--channel``, ``--folds``, ``--configuration``, ``--mirroring``, ``--whole-image``, ``--region``."""
    nnunet = p.add_argument_group("nnU-Net v2 model folders")
    nnunet.add_argument("--channel", action="append", metavar="NAME=ROLE",
                        help="bind the model's input channel NAME (as in its dataset.json) to a phase: pre, "
                             "post1 ... postN, last, or sub1 ... subN (post-contrast k minus pre-contrast); "
                             "repeat for each channel (default for a one-channel model, the MAMA-MIA preset: "
                             "the first post-contrast phase)")
    nnunet.add_argument("--folds", nargs="+", metavar="F",
                        help="folds to average, e.g. 0 1 2 or all (default: every fold present)")
    nnunet.add_argument("--configuration", metavar="NAME",
                        help="configuration when the folder holds several, e.g. 3d_fullres (default: the only "
                             "one, else 3d_fullres)")
    nnunet.add_argument("--mirroring", action="store_true",
                        help="test-time augmentation: also predict the mirrored image along every axis the "
                             "model allows and average (as nnU-Net; up to 8x slower)")
    nnunet.add_argument("--whole-image", action="store_true",
                        help="run every tile of the image as nnU-Net does (default: only the tiles inside the body); "
                             "the same as --region whole")
    nnunet.add_argument("--region", choices=NNUNET_REGIONS,
                        help="where the model's tiles run: whole (every tile, as nnU-Net), body (the tiles inside "
                             "the body) or breasts (inside the model-free breast mask grown by 10 mm; the "
                             "probability is 0 outside it, faster) (default: the registry entry's, else body)")


def add_threshold_arguments(p) -> None:
    """``--threshold`` | ``--relative-threshold``, ``--min-component-ml``."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--threshold", type=float, metavar="P",
                       help="absolute tumor probability threshold, 0..1 (default: the model card's)")
    group.add_argument("--relative-threshold", type=float, metavar="F",
                       help="threshold at fraction F of the maximum probability and keep only components "
                            "holding a voxel above 0.95 x max (Hirsch et al. 2022), 0..1")
    p.add_argument("--min-component-ml", type=float, default=0.0, metavar="V",
                   help="drop connected components smaller than V millilitres (default: 0)")


def add_ftv_arguments(p) -> None:
    """The functional tumor volume's options."""
    p.add_argument("--pe-threshold", type=float, default=PE_THRESHOLD_PERCENT, metavar="PCT",
                   help="functional tumor volume: percent enhancement threshold in %% (default: 70)")
    p.add_argument("--ftv-background-fraction", type=float, default=FTV_BACKGROUND_FRACTION, metavar="F",
                   help="functional tumor volume: pre-contrast background threshold as a fraction of its "
                        "95th percentile in the tumor region (default: 0.6)")
    p.add_argument("--early-time", type=float, default=EARLY_TIME_S, metavar="S",
                   help="functional tumor volume: early phase = the one closest to S seconds (default: 150)")
    p.add_argument("--late-time", type=float, default=LATE_TIME_S, metavar="S",
                   help="functional tumor volume: late phase = the one closest to S seconds (default: 450)")
