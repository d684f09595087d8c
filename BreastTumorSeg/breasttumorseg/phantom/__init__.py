"""Synthetic breast DCE-MRI phantom: the data the bundled model is trained and tested on.

No real breast DCE-MRI is reachable from our machines, so the backend carries a generator
that shows what a radiologist sees (see DESIGN.md section 3):

* Anatomy (prone, LPS mm): two breasts hanging in front of the chest wall (axial bilateral
  layout) or one breast (sagittal unilateral layout), skin, fat (dark: fat-suppressed T1),
  fibroglandular tissue with texture and a BI-RADS-like density, pectoral muscle, ribs,
  lung, heart and vessels (aorta, internal mammary arteries, tortuous breast vessels).
* Lesions: a malignant tumor (longest diameter ~5-60 mm; oval, lobulated, irregular,
  spiculated, or one of three real I-SPY2 tumor shapes from BreastDCEDL, CC BY 4.0,
  Copyright (c) 2025 Naomi Fridman; sometimes rim-enhancing; sometimes multifocal), and
  benign lesions (fibroadenoma, cyst, intramammary lymph node), background parenchymal
  enhancement and vessels that enhance but are not tumor.
* Contrast kinetics from the extended Tofts model (Tofts et al., JMRI 1999) driven by the
  population AIF of Parker et al. (MRM 2006), converted to signal with the spoiled
  gradient-echo equation (T10 per tissue, r1 relaxivity, TR, flip angle). Malignant: high
  Ktrans, low ve (washout or plateau); benign: lower Ktrans, higher ve (persistent).
* Protocol variety (matrix, spacing, 2-8 phases, timing), smooth bias field, small rigid
  motion between phases, Rician noise. Deterministic per seed.
"""

from __future__ import annotations

from .case import TISSUE_LABELS, PhantomCase
from .generator import generate
from .lesions import load_real_shapes
from .writer import write_phantom_case

__all__ = ["PhantomCase", "generate_phantom", "write_phantom_case", "load_real_shapes", "TISSUE_LABELS"]


def generate_phantom(seed: int, *, layout: str = "axial", n_phases: int | None = None,
                     size: tuple[int, int, int] | None = None,
                     spacing: tuple[float, float, float] | None = None,
                     with_tumor: bool = True, progress=None, times_s=None, fat_suppressed: bool = True,
                     bpe_level: str | None = None, tumor_diameter_mm: float | None = None,
                     tumor_shape_kind: str | None = None, multifocal: bool | None = None, non_mass: bool = False,
                     anatomy_fov_mm: tuple[float, float, float] | None = None) -> PhantomCase:
    """Generate one synthetic breast DCE-MRI study, deterministic for ``seed``.

    Args:
        seed: seed of ``numpy.random.Generator``; the same arguments give the same case.
        layout: ``"axial"`` (bilateral; array axes z, y, x = S-I, A-P, R-L; identity
            direction) or ``"sagittal"`` (unilateral; slices along x: i = anterior->posterior,
            j = superior->inferior, k = left->right).
        n_phases: phases including the pre-contrast, 2..8; None draws 3..8 from the seed.
            Post-contrast phases start 60-150 s after injection, 45-120 s apart.
        size: matrix (x, y, z) in voxels; None draws a clinical protocol (axial 320-512
            in-plane, sagittal smaller).
        spacing: voxel spacing (x, y, z) in mm; None draws one (axial 0.6-0.9 mm in-plane,
            1-2.5 mm slices). The anatomy is sized to the physical field of view.
        with_tumor: False gives a study without a malignant tumor (empty tumor mask).
        progress: optional ``progress(step, fraction)`` callback.

    Options for held-out and stress cases; their defaults give today's cases (the same
    seed, the same study), and each one leaves the rest of the case as drawn:

        times_s: acquisition times (s, 0 = injection; the pre-contrast may be negative,
            the post-contrast phases are after 0), replacing the drawn ones; sets the phases.
        fat_suppressed: False images fat without suppression (bright: short T1, full
            proton density), as a T1 sequence without fat saturation.
        bpe_level: background parenchymal enhancement ``"minimal"``, ``"mild"``,
            ``"moderate"`` or ``"marked"`` instead of the drawn level.
        tumor_diameter_mm, tumor_shape_kind, multifocal: the malignant tumor's longest
            diameter (mm, physical), its shape (one of ``lesions.TUMOR_SHAPE_KINDS``) and
            whether it has satellite foci, instead of the drawn ones.
        non_mass: the malignant lesion is a segmental, clumped non-mass enhancement along
            a duct tree (labelled as tumor) instead of a mass.
        anatomy_fov_mm: (x, y, z) LPS extents (mm) of the field of view the patient is
            sized and placed for: centred in the grid's along x and z, its anterior edge
            the grid's (the breasts stay in front). None sizes the patient to the grid; a
            grid other than ``anatomy_fov_mm`` shows the same-sized patient cut or with more around.
    """
    return generate(int(seed), layout=layout, n_phases=n_phases, size=size, spacing=spacing,
                    with_tumor=with_tumor, progress=progress, times_s=times_s, fat_suppressed=fat_suppressed,
                    bpe_level=bpe_level, tumor_diameter_mm=tumor_diameter_mm, tumor_shape_kind=tumor_shape_kind,
                    multifocal=multifocal, non_mass=non_mass, anatomy_fov_mm=anatomy_fov_mm)
