"""A synthetic two-reader, two-arm reader study on phantoms: the README's demo and a test bed.

Nothing here is a measurement of people: the cases are synthetic phantoms (their tumor mask
is the reference), the AI is the real assisted-arm model run on them, and the two readers are
simulated through the same :class:`~.session.ReaderSession` a Slicer reader drives, on a
simulated clock:

* **Segmentations.** Manual: the true tumor with its boundary disturbed (voxels of the
  one-voxel shells inside and outside its surface flipped with the reader's
  ``boundary_error`` probability). Assisted: the AI's segmentation refined, i.e. its components
  that do not touch the tumor erased, its leaks beyond one voxel outside the tumor cut off,
  what it missed of the tumor painted in, and a third of the manual boundary disturbance.
* **Times.** Active minutes are log-normal with medians taken from Zhang et al. 2023,
  Table 4 (reader 1: 14.3 min manual, 2.1 min assisted; reader 2: 15.2 and 1.4) and a
  log-SD of 0.25; edits are spread over the active time with gaps shorter than the idle
  limit; about a third of the readings get one idle spell (2-6 min) and a fifth one
  explicit pause (1-4 min), which count in wall time only.

Everything is drawn from ``numpy.random.default_rng(seed)``: the same seed gives the same study.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..core import atomic
from ..exam.loading import read_image
from ..core.progress import report, scaled
from ..reporting.writing import write_segmentation_nrrd
from .definition import read_study
from .session import ReaderSession
from ..phantom import generate_phantom, write_phantom_case
from .ai import ai_files, prepare_ai

#: Phantom seeds whose tumor is at least 1 mL on the demo's matrix (160 x 160 x 48 voxels,
#: 1.2 x 1.2 x 3 mm), with 4 to 8 phases.
CASE_SEEDS = (70002, 70009, 70013, 70020, 70021, 70025)
MATRIX = (160, 160, 48)
SPACING_MM = (1.2, 1.2, 3.0)
#: Median active minutes per case (Zhang et al. 2023, Table 4: readers 1 and 2).
ZHANG_MINUTES = {"R1": {"manual": 14.3, "assisted": 2.1}, "R2": {"manual": 15.2, "assisted": 1.4}}
EFFECTS = {"manual": ("Paint", "Paint", "Draw", "Erase", "Scissors", "Threshold"),
           "assisted": ("Erase", "Paint", "Islands", "Scissors")}


@dataclass(frozen=True)
class SimulatedReader:
    """How a simulated reader reads: median active minutes per arm and boundary error."""

    name: str
    minutes: dict
    boundary_error: float = 0.25


def write_phantom_cases(folder: Path, seeds=CASE_SEEDS, *, size=MATRIX, spacing=SPACING_MM,
                        progress=None) -> list[dict]:
    """Generate and write the phantom cases; returns their study-file entries."""
    entries = []
    for index, seed in enumerate(seeds):
        case_id = f"case{index + 1:02d}"
        report(progress, f"phantom {case_id}", index / len(seeds))
        case = generate_phantom(int(seed), size=tuple(size), spacing=tuple(spacing))
        write_phantom_case(case, folder / "cases" / case_id)
        n = case.study.n_phases
        entries.append({"id": case_id, "phases": [f"cases/{case_id}/phase_{p:02d}.nii.gz" for p in range(n)],
                        "times_s": [float(t) for t in case.study.times_s],
                        "reference": f"cases/{case_id}/tumor_mask.nii.gz"})
    return entries


def write_study_file(folder: Path, cases: list[dict], *, readers=("R1", "R2"), seed: int = 2026,
                     model: str = "hirsch-unet3d-phantom", washout_cases: int = 2) -> Path:
    study = {"name": "Synthetic phantom reader study (simulated readers)", "seed": seed, "readers": list(readers),
             "arms": {"manual": {}, "assisted": {"model": model}}, "washout_cases": washout_cases,
             "idle_after_s": 60, "autosave_every_s": 30, "consensus": "majority", "equivalence_margin": None,
             "results": "results", "cases": cases}
    path = folder / "study.json"
    atomic.write_text(path, json.dumps(study, indent=2) + "\n")
    return path


def simulate_readers(study_path: Path, readers: list[SimulatedReader], *, seed: int = 0) -> None:
    """Let each simulated reader read their whole worklist (module docstring)."""
    study = read_study(study_path)
    rng = np.random.default_rng(seed)
    for reader in readers:
        clock = SimulatedClock()
        session = ReaderSession(study, reader.name, clock=clock, now=clock.iso)
        try:
            while not session.finished:
                _read_one(session, study, reader, clock, rng)
        finally:
            session.close()


def make_synthetic_study(folder, *, seeds=CASE_SEEDS, seed: int = 2026, device: str = "auto",
                         progress=None, warn=None) -> Path:
    """The whole demo: phantom cases, study file, the AI's results, two simulated readers."""
    folder = Path(folder)
    cases = write_phantom_cases(folder, seeds, progress=scaled(progress, 0.0, 0.4))
    path = write_study_file(folder, cases, seed=seed)
    prepare_ai(read_study(path), device=device, progress=scaled(progress, 0.4, 0.9), warn=warn)
    report(progress, "simulated readers", 0.9)
    simulate_readers(path, [SimulatedReader(name, minutes) for name, minutes in ZHANG_MINUTES.items()], seed=seed)
    report(progress, "done", 1.0)
    return path


# ----------------------------------------------------------------------------- internals
class SimulatedClock:
    """A monotonic clock the simulation advances; ``iso`` turns it into journal timestamps."""

    START = _dt.datetime(2026, 12, 1, 9, 0, tzinfo=_dt.timezone.utc)

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += float(seconds)

    def iso(self) -> str:
        return (self.START + _dt.timedelta(seconds=self.t)).isoformat(timespec="milliseconds")


def _read_one(session: ReaderSession, study, reader: SimulatedReader, clock: SimulatedClock, rng) -> None:
    reading = session.next_reading()
    case = study.case(reading.case_id)
    truth, grid = read_image(case.reference)
    truth = truth > 0.5
    if reading.arm == "manual":
        mask = _disturb(truth, rng, reader.boundary_error)
    else:

        ai, _ = read_image(ai_files(study, case.id)[0])
        mask = _refine(ai > 0.5, truth, rng, reader.boundary_error / 3)
    session.open_next(lambda path: write_segmentation_nrrd(path, mask, grid))
    active_s = 60.0 * reader.minutes[reading.arm] * math.exp(0.25 * rng.standard_normal())
    idle_limit = study.idle_after_s
    n_edits = max(int(rng.poisson(40 if reading.arm == "manual" else 6)), math.ceil(active_s / (0.6 * idle_limit)))
    gaps = rng.uniform(0.5, 1.5, n_edits)
    gaps *= active_s / gaps.sum()
    idle_at = int(rng.integers(0, n_edits)) if rng.random() < 1 / 3 else -1
    pause_at = int(rng.integers(0, n_edits)) if rng.random() < 1 / 5 else -1
    for index, gap in enumerate(gaps):
        clock.advance(gap)
        session.edited(str(rng.choice(EFFECTS[reading.arm])))
        session.tick()
        if index == idle_at:                      # the reader steps away without pausing
            clock.advance(idle_limit + rng.uniform(60, 300))
            session.tick()
            session.input()
        if index == pause_at:
            session.pause()
            clock.advance(rng.uniform(60, 240))
            session.resume()
    session.submit()


def _disturb(mask: np.ndarray, rng, boundary_error: float) -> np.ndarray:
    boundary = ndimage.binary_dilation(mask) & ~ndimage.binary_erosion(mask)
    flip = boundary & (rng.random(mask.shape) < boundary_error)
    return (mask ^ flip).astype(np.uint8)


def _refine(ai: np.ndarray, truth: np.ndarray, rng, boundary_error: float) -> np.ndarray:
    labels, n = ndimage.label(ai)
    touching = set(np.unique(labels[truth & (labels > 0)]).tolist())
    kept = np.isin(labels, list(touching)) if touching else np.zeros_like(ai)
    refined = (kept & ndimage.binary_dilation(truth)) | truth
    return _disturb(refined, rng, boundary_error)
