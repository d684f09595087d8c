"""The overview figure: written atomically, right size, not blank, oriented by physical space."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from breasttumorseg.core.geometry import Geometry
from breasttumorseg.reporting.overview import FIGURE_SIZE_PX, nearest_anatomical_axes, overview_planes, render_overview
from breasttumorseg.exam.dce_exam import DCEStudy

SPACING = (0.9, 0.8, 2.0)  # x, y, z in mm; anisotropic on purpose


def _phantom(shape_zyx=(24, 56, 64), centre_zyx=(12, 18, 46), seed=0):
    """A noisy block with an enhancing ellipsoid (patient left and anterior of centre)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape_zyx)
    r = np.sqrt(((z - centre_zyx[0]) * SPACING[2] / 7.0) ** 2 + ((y - centre_zyx[1]) * SPACING[1] / 8.0) ** 2
                + ((x - centre_zyx[2]) * SPACING[0] / 6.0) ** 2)
    tumor = r < 1.0
    pre = 200.0 + rng.normal(0, 12, shape_zyx)
    post = pre + 30.0 + 450.0 * np.exp(-np.clip(r - 0.8, 0, None) ** 2 / 0.05) + rng.normal(0, 12, shape_zyx)
    probability = np.clip(1.15 - 0.9 * r, 0.0, 1.0).astype(np.float32)
    return np.stack([pre, post]).astype(np.float32), probability, tumor


def _study(phases, geometry):
    return DCEStudy(phases, geometry, phase_names=["pre", "post 1"], source="phantom")


def _identity_case():
    phases, probability, tumor = _phantom()
    nz, ny, nx = tumor.shape
    geometry = Geometry((nx, ny, nz), SPACING, (-20.0, 35.0, 10.0))
    return _study(phases, geometry), probability, tumor


def _overlay_pixels(png) -> int:
    """Pixels in the overlay's red/orange range."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(((r > 170) & (r - b > 110) & (g > 40) & (g < 215) & (r - g > 35)).sum())


def _contour_pixels(png) -> int:
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(((g > 200) & (r < 120) & (b > 90) & (b < 190)).sum())


def test_png_written_with_expected_size_overlay_and_contour(tmp_path):
    study, probability, tumor = _identity_case()
    out = tmp_path / "overview.png"
    render_overview(out, study, probability, tumor, title="volume 1.0 mL | longest diameter 16.0 mm", threshold=0.5)
    empty = tmp_path / "empty.png"
    render_overview(empty, study, np.zeros_like(probability), np.zeros_like(tumor), threshold=0.5)

    image = Image.open(out)
    assert image.format == "PNG"
    assert image.size == FIGURE_SIZE_PX
    assert np.asarray(image.convert("L")).std() > 10  # not a blank canvas
    assert Image.open(empty).size == FIGURE_SIZE_PX
    # the colour bar and legend appear in both; the overlay and the outline only with a tumor
    assert _overlay_pixels(out) > _overlay_pixels(empty) + 500
    assert _contour_pixels(out) > _contour_pixels(empty) + 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.png", "overview.png"]


def test_slices_through_largest_cross_section_and_radiological_orientation():
    study, probability, tumor = _identity_case()
    axial, coronal, sagittal = overview_planes(study, probability, tumor)
    nz, ny, nx = tumor.shape
    # identity direction: array k, j, i run towards S, P, L already
    assert axial.slice_index == int(np.argmax(tumor.sum(axis=(1, 2))))
    assert coronal.slice_index == int(np.argmax(tumor.sum(axis=(0, 2))))
    assert sagittal.slice_index == int(np.argmax(tumor.sum(axis=(0, 1))))
    assert axial.tumor_area_mm2 == pytest.approx(tumor[axial.slice_index].sum() * SPACING[1] * SPACING[0])
    # physical aspect: (row, column) spacing in mm
    assert axial.pixel_mm == (SPACING[1], SPACING[0])
    assert coronal.pixel_mm == (SPACING[2], SPACING[0])
    assert sagittal.pixel_mm == (SPACING[2], SPACING[1])
    assert axial.edges == ("R", "L", "A", "P") and sagittal.edges == ("A", "P", "S", "I")

    def centroid(mask):
        rows, cols = np.nonzero(mask)
        return rows.mean() / mask.shape[0], cols.mean() / mask.shape[1]

    # the lesion lies at patient left (high i) and anterior (low j): image right, image top
    row, col = centroid(axial.mask)
    assert col > 0.6 and row < 0.45
    # coronal and sagittal: superior up, so the superior end of the tumor has the smaller row
    top = np.zeros_like(tumor)
    top[13:] = tumor[13:]  # superior half of the tumor only
    _, coronal_top, sagittal_top = overview_planes(study, probability, top)
    assert centroid(coronal_top.mask)[0] < centroid(coronal.mask)[0]
    assert centroid(sagittal_top.mask)[0] < centroid(sagittal.mask)[0]
    # sagittal: anterior on image left
    assert centroid(sagittal.mask)[1] < 0.45


def _same_physical_image_other_layout(study, probability, tumor):
    """The same physical image stored with x flipped and axes permuted (a sagittal-style grid)."""
    g = study.geometry
    nz, ny, nx = tumor.shape

    def relayout(volume):  # [z, y, x] -> flip x -> new voxel axes (i', j', k') = (P, S, R)
        return np.transpose(volume[..., ::-1], (2, 0, 1))  # [x, z, y] = [k', j', i']

    # i' runs along +P (old j), j' along +S (old k), k' along -L (old i reversed)
    direction = np.array([[0, 0, -1], [1, 0, 0], [0, 1, 0]], dtype=float)
    origin = g.index_to_physical(np.array([nx - 1, 0, 0]))
    geometry = Geometry((ny, nz, nx), (g.spacing[1], g.spacing[2], g.spacing[0]), tuple(origin),
                        tuple(direction.ravel()))
    # sanity: a voxel lands at the same physical point in both layouts
    assert np.allclose(geometry.index_to_physical(np.array([5, 3, nx - 1 - 7])),
                       g.index_to_physical(np.array([7, 5, 3])))
    phases = np.stack([relayout(p) for p in study.phases])
    return _study(phases, geometry), relayout(probability), relayout(tumor)


def test_display_depends_on_physical_space_not_array_layout():
    study, probability, tumor = _identity_case()
    other = _same_physical_image_other_layout(study, probability, tumor)
    for a, b in zip(overview_planes(study, probability, tumor), overview_planes(*other)):
        assert a.name == b.name
        assert a.pixel_mm == pytest.approx(b.pixel_mm)
        assert a.slice_index == b.slice_index and a.position_label == b.position_label
        assert np.array_equal(a.mask, b.mask)
        assert np.allclose(a.subtraction, b.subtraction)
        assert np.allclose(a.probability, b.probability)


def test_nearest_axes_for_oblique_direction():
    angle = np.radians(20.0)
    # axial slices tilted 20 degrees about the L axis
    direction = np.array([[1, 0, 0],
                          [0, np.cos(angle), -np.sin(angle)],
                          [0, np.sin(angle), np.cos(angle)]])
    axes, signs, obliquity = nearest_anatomical_axes(direction)
    assert axes == [0, 1, 2] and signs == [1, 1, 1]
    assert obliquity == pytest.approx(20.0, abs=1e-6)
    axes, signs, obliquity = nearest_anatomical_axes(np.eye(3))
    assert obliquity == pytest.approx(0.0, abs=1e-6)


def test_empty_mask_uses_the_volume_centre(tmp_path):
    study, probability, tumor = _identity_case()
    views = overview_planes(study, probability, np.zeros_like(tumor))
    nz, ny, nx = tumor.shape
    assert [v.slice_index for v in views] == [nz // 2, ny // 2, nx // 2]
    assert all(v.tumor_box is None and v.tumor_area_mm2 == 0 for v in views)


def test_nothing_left_behind_when_rendering_fails(tmp_path, monkeypatch):
    from matplotlib.backends import backend_agg

    study, probability, tumor = _identity_case()
    out = tmp_path / "overview.png"
    out.write_bytes(b"previous overview")

    def broken_print_png(self, filename_or_obj, *args, **kwargs):
        with open(filename_or_obj, "wb") as handle:  # half a file, then a failure
            handle.write(b"\x89PNG\r\n\x1a\n partial")
        raise RuntimeError("disk full while encoding")

    monkeypatch.setattr(backend_agg.FigureCanvasAgg, "print_png", broken_print_png)
    with pytest.raises(RuntimeError, match="disk full"):
        render_overview(out, study, probability, tumor, threshold=0.5)
    assert [p.name for p in tmp_path.iterdir()] == ["overview.png"]
    assert out.read_bytes() == b"previous overview"


def test_arrays_off_the_grid_are_refused_before_writing(tmp_path):
    study, probability, tumor = _identity_case()
    out = tmp_path / "overview.png"
    with pytest.raises(ValueError, match="study grid"):
        render_overview(out, study, probability[:, :-1], tumor)
    assert list(tmp_path.iterdir()) == []
