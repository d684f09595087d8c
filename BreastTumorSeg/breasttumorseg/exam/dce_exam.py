"""The value that carries one DCE-MRI study through the backend.

A :class:`DCEStudy` holds every phase on one reference grid as a single float32 array
``[phase, z, y, x]``, the acquisition times in seconds, and the grid's geometry (LPS).
Phase 0 is the pre-contrast; phases 1.. are post-contrast, ordered by time. Loading,
deriving maps, inference, post-processing and measuring all take and give such values
(or plain arrays on ``study.geometry``), so geometry is never lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.errors import InputError, MissingTimesError
from ..core.geometry import Geometry


@dataclass
class DCEStudy:
    """Phases on one grid with their acquisition times.

    Attributes:
        phases: float32 array ``[phase, z, y, x]`` (signal intensity, arbitrary units).
        geometry: the reference grid (that of the first post-contrast phase as loaded).
        times_s: acquisition time of each phase in seconds (from injection or from the
            pre-contrast; only differences matter), strictly increasing; ``None`` if unknown.
        phase_names: a label per phase (file name, series description, ...).
        source: where the study came from, used to name it in messages.
    """

    phases: np.ndarray
    geometry: Geometry
    times_s: np.ndarray | None = None
    phase_names: list[str] = field(default_factory=list)
    source: str = "study"

    def __post_init__(self):
        self.phases = np.asarray(self.phases, dtype=np.float32)
        if not self.phase_names:
            self.phase_names = [f"phase {i}" for i in range(len(self.phases))]
        if self.times_s is not None:
            self.times_s = np.asarray(self.times_s, dtype=float)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`InputError` naming ``source`` when the study is unusable."""
        if self.phases.ndim != 4:
            raise InputError(f"expected phases as a 4D array [phase, z, y, x], got {self.phases.ndim}D",
                             self.source)
        if self.n_phases < 2:
            raise InputError(f"a DCE study needs a pre-contrast and at least one post-contrast phase, "
                             f"got {self.n_phases} phase", self.source)
        if self.phases.shape[1:] != self.geometry.shape_zyx:
            raise InputError(f"phase array {self.phases.shape[1:]} does not match its grid "
                             f"{self.geometry.shape_zyx}", self.source)
        if min(self.phases.shape[1:]) < 2:
            raise InputError(f"phases are not 3D volumes (shape {self.phases.shape[1:]})", self.source)
        if len(self.phase_names) != self.n_phases:
            raise InputError(f"{len(self.phase_names)} phase names for {self.n_phases} phases", self.source)
        if self.times_s is not None:
            check_times(self.times_s, self.source, self.n_phases)
        if not np.isfinite(self.phases).all():
            bad = int(np.argmax([~np.isfinite(p).all() for p in self.phases]))
            raise InputError(f"{self.phase_names[bad]} contains NaN or Inf voxels", self.source)

    # --- phases by role -------------------------------------------------------------
    @property
    def n_phases(self) -> int:
        return int(self.phases.shape[0])

    @property
    def pre_contrast(self) -> np.ndarray:
        """The pre-contrast phase ``[z, y, x]``."""
        return self.phases[0]

    @property
    def post_contrast(self) -> np.ndarray:
        """The post-contrast phases ``[phase, z, y, x]`` in time order."""
        return self.phases[1:]

    @property
    def first_post_contrast(self) -> np.ndarray:
        """The first post-contrast phase ``[z, y, x]`` (the reference phase)."""
        return self.phases[1]

    def require_times(self, purpose: str) -> np.ndarray:
        """Acquisition times in s, or :class:`MissingTimesError` explaining how to give them."""
        if self.times_s is None:
            raise MissingTimesError(
                f"{purpose} needs the phases' acquisition times: give --times S S ... (seconds), "
                f"a times JSON beside the images, or DICOM with acquisition/trigger times", self.source)
        return self.times_s

    def with_phases(self, phases: np.ndarray) -> "DCEStudy":
        """A copy with other phase data on the same grid and times (e.g. after normalising)."""
        return DCEStudy(phases, self.geometry, self.times_s, list(self.phase_names), self.source)


def check_times(times_s, source: str, n_phases: int | None = None) -> np.ndarray:
    """Validate acquisition times: finite, one per phase, strictly increasing."""
    times = np.asarray(times_s, dtype=float).ravel()
    if n_phases is not None and len(times) != n_phases:
        raise InputError(f"{len(times)} acquisition times given for {n_phases} phases", source)
    if not np.isfinite(times).all():
        raise InputError("acquisition times contain NaN or Inf", source)
    steps = np.diff(times)
    if (steps == 0).any():
        i = int(np.argmax(steps == 0))
        raise InputError(f"duplicate acquisition time {times[i]:g} s (phases {i} and {i + 1})", source)
    if (steps < 0).any():
        i = int(np.argmax(steps < 0))
        raise InputError(f"acquisition times decrease ({times[i]:g} s then {times[i + 1]:g} s, "
                         f"phases {i} and {i + 1}); give them in phase order", source)
    return times
