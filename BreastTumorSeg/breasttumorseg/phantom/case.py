"""One synthetic DCE-MRI study with its ground truth (masks and tissue labels on the study's grid)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..exam.dce_exam import DCEStudy

#: Public tissue label values of :attr:`PhantomCase.tissue_labels`.
TISSUE_LABELS = {0: "air", 1: "fat", 2: "fibroglandular", 3: "skin", 4: "muscle", 5: "chest wall/thorax",
                 6: "heart", 7: "vessel", 8: "benign lesion", 9: "tumor"}


@dataclass
class PhantomCase:
    """One synthetic DCE-MRI study with its ground truth, all on ``study.geometry``.

    Attributes:
        study: phases float32 ``[T, z, y, x]`` (arbitrary units), ``times_s`` (s; phase 0 =
            pre-contrast at 0 s = injection), geometry (LPS), phase names, source.
        tumor_mask: uint8 ``[z, y, x]``, 1 = malignant tumor (all foci).
        breast_mask: uint8, 1 = breast (body voxels anterior to the chest-wall fascia,
            skin included, anterior half of the body), both breasts.
        body_mask: uint8, 1 = inside the body (not air).
        tissue_labels: uint8 tissue map, see :data:`TISSUE_LABELS`.
        info: seed, layout, n_phases, times, tumor shape source, kinetic type
            (persistent/plateau/washout), tumor_volume_ml, n_foci, protocol, ...
    """

    study: DCEStudy
    tumor_mask: np.ndarray
    breast_mask: np.ndarray
    body_mask: np.ndarray
    tissue_labels: np.ndarray
    info: dict = field(default_factory=dict)
