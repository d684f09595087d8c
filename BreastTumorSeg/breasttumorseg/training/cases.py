"""Training cases on the model's working grid: phantoms by seed or the user's cases, prepared and cached.

Every case is prepared exactly as at inference: :func:`breasttumorseg.segmentation.pipeline.prepare`
with the model card (resampling to the working grid, derived channels, normalisation), the
target mask resampled onto the working grid (nearest), the case cropped to the body (4-voxel
margin) and its inputs stored as float16.

Each phantom seed also draws its protocol (:func:`case_protocol`): layout (2/3 axial
bilateral, 1/3 sagittal unilateral), 2 to 8 phases, in-plane spacing 0.6-1.0 x and slice
spacing 1-2 x the working spacing, a clinical field of view.

**Cache** (a data set's ``cache`` folder): prepared cases are kept there as ``.npy`` files and
read back as memory maps, so a cohort larger than the memory trains, several processes share
the page cache, and a resumed run does not prepare again. The key of a case covers its files
(path, size, modification time), its times and the model's preparation settings; under
torchrun each process prepares its share of the cases into the cache.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import shutil
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..core.errors import GeometryError
from ..core.geometry import Geometry
from ..core.progress import report
from ..exam.loading import load_study, read_image
from ..phantom import generate_phantom
from ..phantom.randomize import randomize_appearance
from ..segmentation.models import ModelCard
from ..segmentation.pipeline import acquisition_times_s, prepare, to_working_grid
from .datasets import CaseFiles, mask_grid_differences


@dataclass
class PreparedCase:
    """One phantom or real case on the model's working grid (LPS), cropped to the body.

    The arrays may be read-only memory maps (a data set's ``cache``).
    """

    seed: int                   # the phantom's seed; -1 for a real case
    inputs: np.ndarray          # float16 [C, z, y, x], normalised channels (phase series: C = phases)
    body: np.ndarray            # bool [z, y, x]
    target: np.ndarray          # bool [z, y, x], what the model learns: the tumor or the breasts
    geometry: Geometry          # the cropped working grid
    flip_axes: tuple            # array axes along patient left-right and superior-inferior
    protocol: dict
    times_s: Optional[np.ndarray] = None   # phase series: seconds after the pre-contrast
    name: str = ""              # a real case's name ("" for phantoms)


def case_protocol(seed: int, working_spacing_mm=(1.5, 1.5, 1.5)) -> dict:
    """Layout, phases, matrix and spacing of the phantom with ``seed`` (deterministic).

    In-plane spacing 0.6-1.0 x and slice spacing 1.0-2.0 x the working spacing (mm);
    fields of view: axial 300-360 mm in-plane, 150-190 mm head-foot; sagittal 170-210 mm
    in-plane, a 150-190 mm slab. Returns keyword arguments of ``generate_phantom``.
    """
    rng = np.random.default_rng([int(seed), 20220101])
    layout = "sagittal" if rng.random() < 1.0 / 3.0 else "axial"
    n_phases = int(rng.integers(2, 9))
    inplane = float(rng.uniform(0.6, 1.0)) * float(working_spacing_mm[0])
    through = float(rng.uniform(1.0, 2.0)) * float(working_spacing_mm[2])
    fov_in = float(rng.uniform(300, 360) if layout == "axial" else rng.uniform(170, 210))
    fov_through = float(rng.uniform(150, 190))
    n_in = max(16, int(round(fov_in / inplane)))
    n_through = max(8, int(round(fov_through / through)))
    return {"layout": layout, "n_phases": n_phases, "size": (n_in, n_in, n_through),
            "spacing": (round(inplane, 3), round(inplane, 3), round(through, 3))}


def _patient_axes(geometry: Geometry) -> tuple:
    """Array axes (0 = z, 1 = y, 2 = x) closest to the patient's L-R and S-I directions."""
    direction = np.abs(geometry.direction_matrix)  # rows: L, P, S; columns: i, j, k
    left_right = 2 - int(np.argmax(direction[0]))
    superior_inferior = 2 - int(np.argmax(direction[2]))
    return tuple(sorted({left_right, superior_inferior}))


def prepare_case(seed: int, card: ModelCard, randomize: bool = False) -> PreparedCase:
    """Generate the phantom ``seed`` and turn it into model inputs exactly as at inference.

    The target is the tumor mask, or the breast mask for a breast-mask model (``card.task``).
    ``randomize`` draws the case's appearance (:mod:`breasttumorseg.phantom.randomize`) from
    the seed before the inputs are derived.
    """

    protocol = case_protocol(seed, card.working_spacing_mm)
    case = generate_phantom(seed, **protocol)
    if randomize:
        case = randomize_appearance(case, np.random.default_rng([int(seed), 5151]))
    inputs, body, working = prepare(case.study, card)
    reference = case.breast_mask if card.task == "breast" else case.tumor_mask
    target = to_working_grid(reference.astype(np.uint8), case.study.geometry, working, "nearest") > 0
    info = dict(protocol, target_voxels=int(target.sum()), kinetic=case.info.get("kinetic_type"),
                appearance=case.info.get("appearance"))
    times = acquisition_times_s(case.study) if card.takes_phase_series else None
    return crop_prepared_case(inputs, body, target, working, info, times, seed=seed)


def crop_prepared_case(inputs: np.ndarray, body: np.ndarray, target: np.ndarray, working: Geometry, info: dict,
                       times_s, *, seed: int, name: str = "") -> PreparedCase:
    """A :class:`PreparedCase` of model inputs on the working grid, cropped to the body and
    target (with a 4-voxel margin); inputs stored as float16."""
    keep = body | target
    if keep.any():
        lo = np.maximum(np.argwhere(keep).min(axis=0) - 4, 0)
        hi = np.minimum(np.argwhere(keep).max(axis=0) + 5, keep.shape)
    else:
        lo, hi = np.zeros(3, int), np.array(keep.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    origin = working.index_to_physical(np.array([lo[2], lo[1], lo[0]], dtype=float))
    cropped = Geometry((int(hi[2] - lo[2]), int(hi[1] - lo[1]), int(hi[0] - lo[0])), working.spacing,
                       tuple(origin), working.direction)
    info = dict(info, target_voxels=int(target.sum()))
    return PreparedCase(seed, np.ascontiguousarray(inputs[(slice(None),) + box], dtype=np.float16),
                        np.ascontiguousarray(body[box]), np.ascontiguousarray(target[box]), cropped,
                        _patient_axes(working), info, times_s, name)


def run_in_workers(function: Callable, arguments: list[tuple], *, workers: int = 1, progress=None, cancel=None,
                   label: str = "preparing") -> list:
    """``function(*args)`` for every tuple of ``arguments``, results in order; ``workers`` > 1
    uses that many processes (spawned: no fork of a process holding torch/ITK threads)."""
    out: dict[int, object] = {}
    if workers <= 1 or len(arguments) <= 1:
        for i, args in enumerate(arguments):
            report(progress, label, i / len(arguments), cancel)
            out[i] = function(*args)
    else:

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(arguments)), mp_context=context) as pool:
            pending = {pool.submit(function, *args): i for i, args in enumerate(arguments)}
            waiting = set(pending)
            try:
                while waiting:
                    done, waiting = wait(waiting, timeout=1.0, return_when=FIRST_COMPLETED)
                    for future in done:
                        out[pending[future]] = future.result()
                    report(progress, label, len(out) / len(arguments), cancel)
            except BaseException:
                for future in waiting:
                    future.cancel()
                raise
    report(progress, label, 1.0, cancel)
    return [out[i] for i in range(len(arguments))]


def prepare_cases(seeds: list[int], card: ModelCard, *, workers: int = 1, progress=None, cancel=None,
                  label: str = "generating phantoms", randomize: bool = False,
                  cache: Path | None = None) -> list[PreparedCase]:
    """:func:`prepare_case` for every seed, in seed order; ``workers`` > 1 uses processes.

    With a ``cache`` folder each prepared case is stored there (float16 inputs, read back as
    memory maps) and a resumed or repeated run prepares only the cases still missing.
    """
    if cache is None:
        return run_in_workers(prepare_case, [(seed, card, randomize) for seed in seeds], workers=workers,
                              progress=progress, cancel=cancel, label=label)

    folders = run_in_workers(prepare_phantom_into_cache, [(seed, card, randomize, Path(cache)) for seed in seeds],
                             workers=workers, progress=progress, cancel=cancel, label=label)
    return [load_cached_case(folder) for folder in folders]


#: bump when the prepared-case format or the preparation changes
CACHE_VERSION = 1


def prepare_real_case(case: CaseFiles, card):
    """One case as a :class:`~breasttumorseg.training.cases.PreparedCase`, exactly as phantoms are prepared."""

    study = load_study(list(case.phases), times_s=case.times_s)
    study.source = f"case {case.name} ({case.folder})"
    mask_path = case.target_path(card.task)
    array, grid = read_image(mask_path)
    differences = mask_grid_differences(grid, study.geometry)
    if differences:
        raise GeometryError(f"mask is on another grid than the phases of case {case.name} (the first "
                            f"post-contrast phase's): {'; '.join(differences)}", mask_path)
    inputs, body, working = prepare(study, card)
    target = to_working_grid((array > 0.5).astype(np.uint8), study.geometry, working, "nearest") > 0
    times = acquisition_times_s(study) if card.takes_phase_series else None
    info = {"case": case.name, "n_phases": study.n_phases, "spacing": [round(s, 3) for s in study.geometry.spacing],
            "size": list(study.geometry.size)}
    return crop_prepared_case(inputs, body, target, working, info, times, seed=-1, name=case.name)


def prepare_real_cases(cases: Sequence[CaseFiles], card, *, workers: int = 1, cache: Optional[Path] = None,
                       shard: tuple[int, int] = (0, 1), barrier: Callable[[], None] = lambda: None,
                       progress=None, cancel=None, label: str = "preparing cases") -> list:
    """Every case prepared (in order). With a ``cache`` the process of ``shard`` (rank,
    world size) prepares its share of the missing cases, waits at ``barrier``, and then
    every case is read back as memory maps; without one all cases are prepared here."""

    if cache is None:
        return run_in_workers(prepare_real_case, [(case, card) for case in cases], workers=workers,
                              progress=progress, cancel=cancel, label=label)
    rank, world = shard
    mine = [(case, card, Path(cache)) for i, case in enumerate(cases) if i % world == rank]
    run_in_workers(prepare_into_cache, mine, workers=workers, progress=progress, cancel=cancel, label=label)
    barrier()
    return [load_cached_case(cache_folder(Path(cache), case, card)) for case in cases]


def _cache_key(case: CaseFiles, card) -> str:
    files = [p for p in (*case.phases, case.target_path(card.task), case.times_source) if p is not None]
    stats = []
    for path in files:
        stat = Path(path).stat()
        stats.append([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    content = {"version": CACHE_VERSION, "files": stats, "times": case.times_s, "task": card.task,
               "inputs": list(card.inputs), "normalization": card.normalization,
               "spacing": list(card.working_spacing_mm)}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def cache_folder(cache: Path, case: CaseFiles, card) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", case.name)
    return Path(cache) / f"{safe}-{_cache_key(case, card)[:16]}"


def prepare_into_cache(case: CaseFiles, card, cache: Path) -> Path:
    """Prepare ``case`` into its cache folder unless it is there already; returns the folder."""
    return _cached(cache_folder(cache, case, card), lambda: prepare_real_case(case, card))


def prepare_phantom_into_cache(seed: int, card, randomize: bool, cache: Path) -> Path:
    """Prepare the phantom ``seed`` (:func:`~breasttumorseg.training.cases.prepare_case`) into its
    cache folder unless it is there already; returns the folder."""

    content = {"version": CACHE_VERSION, "phantom_seed": int(seed), "domain_randomization": bool(randomize),
               "task": card.task, "inputs": list(card.inputs), "normalization": card.normalization,
               "spacing": list(card.working_spacing_mm)}
    key = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    return _cached(Path(cache) / f"phantom-{int(seed)}-{key[:16]}", lambda: prepare_case(seed, card, randomize))


def _cached(folder: Path, prepare: Callable) -> Path:
    """``folder`` holding the prepared case that ``prepare()`` makes, made only when missing.

    The folder is built under a hidden name and renamed into place, so a folder that
    exists is complete (also when several processes prepare at once).
    """
    if (folder / "case.json").is_file():
        return folder
    prepared = prepare()
    staging = folder.with_name(f".{folder.name}.{os.getpid()}.part")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        np.save(staging / "inputs.npy", prepared.inputs)
        np.save(staging / "body.npy", prepared.body)
        np.save(staging / "target.npy", prepared.target)
        g = prepared.geometry
        meta = {"name": prepared.name, "seed": prepared.seed, "flip_axes": list(prepared.flip_axes),
                "protocol": prepared.protocol, "geometry": {"size": list(g.size), "spacing": list(g.spacing),
                                                            "origin": list(g.origin), "direction": list(g.direction)},
                "times_s": None if prepared.times_s is None else [float(t) for t in prepared.times_s]}
        (staging / "case.json").write_text(json.dumps(meta), encoding="utf-8")
        try:
            os.replace(staging, folder)
        except OSError:
            if not (folder / "case.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def load_cached_case(folder: Path):
    """A :class:`~breasttumorseg.training.cases.PreparedCase` whose arrays are read-only memory maps."""

    meta = json.loads((folder / "case.json").read_text(encoding="utf-8"))
    g = meta["geometry"]
    geometry = Geometry(tuple(g["size"]), tuple(g["spacing"]), tuple(g["origin"]), tuple(g["direction"]))
    times = None if meta["times_s"] is None else np.asarray(meta["times_s"], dtype=float)
    return PreparedCase(int(meta["seed"]), np.load(folder / "inputs.npy", mmap_mode="r"),
                        np.load(folder / "body.npy", mmap_mode="r"), np.load(folder / "target.npy", mmap_mode="r"),
                        geometry, tuple(meta["flip_axes"]), dict(meta["protocol"]), times, meta["name"])
