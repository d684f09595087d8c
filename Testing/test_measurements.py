"""Clinical measurements: volume, longest diameter, T category, FTV (I-SPY), kinetic curve type."""

import csv
import io
import math
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from breasttumorseg.core.errors import MissingTimesError
from breasttumorseg.core.geometry import Geometry
from breasttumorseg.reporting.measurement_table import centroid_text, flat_measurements, measurement_rows, row_text
from breasttumorseg.reporting.measurements import (
    LESION_GAP_MM, MIDLINE_BAND_MM, functional_tumor_volume, kinetic_curve_type, lesions, longest_diameter_mm,
    measure, side_of, t_category, tumor_volume_ml,
)
from breasttumorseg.evaluation.metrics import dice, hausdorff
from breasttumorseg.reporting.outputs import measurements_csv, overview_title
from breasttumorseg.exam.dce_exam import DCEStudy

SPACING = (0.7, 0.8, 1.5)  # x, y, z mm


def geometry(shape_zyx, spacing=SPACING, direction=None) -> Geometry:
    if direction is None:
        return Geometry(tuple(reversed(shape_zyx)), spacing, (-10.0, 5.0, 20.0))
    return Geometry(tuple(reversed(shape_zyx)), spacing, (-10.0, 5.0, 20.0), direction)


def sphere(shape, centre_mm_xyz, radius_mm, spacing=SPACING) -> np.ndarray:
    z, y, x = np.indices(shape, dtype=float)
    sx, sy, sz = spacing
    cx, cy, cz = centre_mm_xyz
    return (x * sx - cx) ** 2 + (y * sy - cy) ** 2 + (z * sz - cz) ** 2 <= radius_mm ** 2


# ----------------------------------------------------------------------------- size
def test_sphere_volume_and_diameter_on_an_anisotropic_grid():
    shape = (24, 40, 44)  # 36 x 32 x 30.8 mm
    for radius in (6.0, 12.0):
        mask = sphere(shape, (15.0, 16.0, 18.0), radius)
        g = geometry(shape)
        assert tumor_volume_ml(mask, g) == pytest.approx(4 / 3 * math.pi * radius ** 3 / 1000, rel=0.04)
        assert longest_diameter_mm(mask, g) == pytest.approx(2 * radius, abs=0.5 * max(SPACING))


def test_diameter_is_centre_to_centre_and_ignores_orientation():
    shape = (6, 8, 30)
    line = np.zeros(shape, bool)
    line[2, 3, 4:24] = True  # 20 voxels along x
    assert longest_diameter_mm(line, geometry(shape)) == pytest.approx(19 * 0.7)
    single = np.zeros(shape, bool)
    single[1, 1, 1] = True
    assert longest_diameter_mm(single, geometry(shape)) == pytest.approx(1.5)
    assert longest_diameter_mm(np.zeros(shape, bool), geometry(shape)) == 0.0
    # a flat disc in one slice (degenerate convex hull)
    disc_shape = (3, 50, 50)
    disc = sphere(disc_shape, (17.5, 20.0, 1.5), 12.0) & (np.indices(disc_shape)[0] == 1)
    assert longest_diameter_mm(disc, geometry(disc_shape)) == pytest.approx(24.0, abs=0.7)
    # rotating the grid (direction matrix) does not change physical lengths
    mask = sphere((24, 40, 44), (15.0, 16.0, 18.0), 9.0) & (np.indices((24, 40, 44))[2] < 25)
    c, s = math.cos(0.6), math.sin(0.6)
    rotated = geometry((24, 40, 44), direction=(c, -s, 0, s, c, 0, 0, 0, 1))
    assert longest_diameter_mm(mask, rotated) == pytest.approx(longest_diameter_mm(mask, geometry((24, 40, 44))))


def test_t_category_by_size():
    assert [t_category(d) for d in (0.0, -1.0, float("nan"), 0.5, 20.0, 20.01, 50.0, 50.5, 120.0)] == \
        ["T0", "T0", "T0", "T1", "T1", "T2", "T2", "T3", "T3"]


MASKS = [Path(os.environ["BREASTTUMORSEG_TUMOR_MASKS"])] if os.environ.get("BREASTTUMORSEG_TUMOR_MASKS") else []
MASKS += [Path(__file__).resolve().parents[2] / "shared" / "data" / "ispy2_tumor_masks",
          Path("/work/shared/data/ispy2_tumor_masks")]
MASK_DIR = next((p for p in MASKS if p.is_dir()), None)


@pytest.mark.skipif(MASK_DIR is None, reason="real tumor masks (I-SPY2, shared/data/ispy2_tumor_masks) not present")
@pytest.mark.parametrize("name, volume_ml", [("ACRIN-6698-102212", 42.4), ("ACRIN-6698-104268", 36.3),
                                             ("ISPY2-550421", 104.8)])
def test_real_tumor_shapes(name, volume_ml):
    """Real I-SPY2 tumor shapes (BreastDCEDL, CC BY 4.0, Naomi Fridman) as volume/diameter fixtures."""
    image = sitk.ReadImage(str(MASK_DIR / f"{name}.nii.gz"))
    g = Geometry.from_image(image)
    mask = sitk.GetArrayFromImage(image) > 0
    assert tumor_volume_ml(mask, g) == pytest.approx(volume_ml, abs=0.06)
    diameter = longest_diameter_mm(mask, g)
    # isodiametric inequality: no shape is shorter than the sphere of the same volume
    assert (6 * volume_ml * 1000 / math.pi) ** (1 / 3) <= diameter <= float(np.linalg.norm(g.extent_mm))
    assert t_category(diameter) in ("T2", "T3")
    shifted = np.roll(mask, 3, axis=2)  # 3 voxels along x
    assert 0.0 < dice(mask, shifted) < 1.0
    assert hausdorff(mask, shifted, g.spacing) <= 3 * g.spacing[0] + 1e-6


# ----------------------------------------------------------------------------- DCE studies
TIMES = [0.0, 90.0, 180.0, 300.0, 450.0]  # early (150 s) -> phase 2, late (450 s) -> phase 4
SHAPE = (20, 24, 24)
FTV_SPACING = (1.0, 1.0, 2.0)


def ftv_study(times=TIMES) -> tuple[DCEStudy, np.ndarray]:
    """Pre-contrast 100 everywhere; a 6x6x6 enhancing cube (PE 100 % at 180 s, SER 2); one
    isolated enhancing voxel; a thin line of enhancing voxels; a dark (S0 = 20) enhancing
    block below the background threshold. Returns the study and the cube."""
    phases = np.full((len(TIMES),) + SHAPE, 100.0, np.float32)
    cube = np.zeros(SHAPE, bool)
    cube[4:10, 4:10, 4:10] = True
    curve = [100.0, 180.0, 200.0, 190.0, 150.0]
    for index, value in enumerate(curve):
        phases[index][cube] = value
        phases[index][15, 18, 18] = value  # isolated voxel
        phases[index][15, 2:12, 20] = value  # a line: each voxel has at most 2 passing neighbours
    dark = (slice(12, 16), slice(14, 18), slice(2, 6))
    for index, value in enumerate([20.0, 60.0, 70.0, 60.0, 50.0]):  # PE 250 %, but S0 below 0.6 x 100
        phases[index][dark] = value
    return DCEStudy(phases, geometry(SHAPE, FTV_SPACING), None if times is None else times), cube


def test_ftv_counts_enhancing_voxels_with_neighbour_and_background_rules():
    study, cube = ftv_study()
    region = np.ones(SHAPE, bool)
    voxel_ml = 2.0 / 1000
    result = functional_tumor_volume(study, region)
    assert result["functional_tumor_volume_ml"] == pytest.approx(216 * voxel_ml)
    assert (result["early_phase"], result["late_phase"]) == (2, 4)
    assert result["background_threshold"] == pytest.approx(60.0)
    assert result["mean_ser"] == pytest.approx(2.0)
    assert result["ser_gt_1.75_ml"] == pytest.approx(216 * voxel_ml)
    assert result["ser_le_0.9_ml"] == result["ser_1.0_1.3_ml"] == 0.0
    # without the neighbour rule the isolated voxel and the line count too
    loose = functional_tumor_volume(study, region, min_neighbours=0)
    assert loose["functional_tumor_volume_ml"] == pytest.approx((216 + 1 + 10) * voxel_ml)
    # without the background rule the dark block (PE 250 %) counts too
    no_background = functional_tumor_volume(study, region, background_fraction=0.0)
    assert no_background["functional_tumor_volume_ml"] == pytest.approx((216 + 64) * voxel_ml)
    # PE threshold above the cube's 100 %
    assert functional_tumor_volume(study, region, pe_threshold_percent=120.0)["functional_tumor_volume_ml"] == 0.0
    # early phase at 90 s (PE 80 %) and late at 300 s: SER (180-100)/(190-100) = 0.89
    other = functional_tumor_volume(study, region, early_time_s=60.0, late_time_s=320.0)
    assert (other["early_phase"], other["late_phase"]) == (1, 3)
    assert other["ser_le_0.9_ml"] == pytest.approx(216 * voxel_ml)
    # only voxels inside the region count, and neighbours outside it do not help
    half = np.zeros(SHAPE, bool)
    half[:, :, :7] = True
    assert functional_tumor_volume(study, half)["functional_tumor_volume_ml"] == pytest.approx(108 * voxel_ml)
    assert functional_tumor_volume(study, np.zeros(SHAPE, bool))["functional_tumor_volume_ml"] == 0.0


def test_ftv_needs_times():
    study, _ = ftv_study(times=None)
    with pytest.raises(MissingTimesError, match="--times"):
        functional_tumor_volume(study, np.ones(SHAPE, bool))


def curve_study(curve, times=TIMES) -> tuple[DCEStudy, np.ndarray]:
    phases = np.full((len(curve),) + SHAPE, 50.0, np.float32)
    mask = np.zeros(SHAPE, bool)
    mask[5:12, 6:14, 6:14] = True
    for index, value in enumerate(curve):
        phases[index][mask] = value
    return DCEStudy(phases, geometry(SHAPE), None if times is None else times[: len(curve)]), mask


@pytest.mark.parametrize("curve, kind, initial", [
    ([100, 150, 180, 200, 220], "persistent", "medium"),  # early = phase 1 (90 s): +47 %
    ([100, 220, 225, 222, 215], "plateau", "fast"),       # -2.3 %
    ([100, 250, 240, 210, 180], "washout", "fast"),       # -28 %
    ([100, 130, 140, 150, 160], "persistent", "slow"),
])
def test_kinetic_curve_types(curve, kind, initial):
    study, mask = curve_study(curve)
    result = kinetic_curve_type(study, mask)
    assert result["kinetic_curve_type"] == kind
    assert result["initial_enhancement"] == initial
    assert result["early_phase"] == 1 and result["late_phase"] == 4
    assert result["late_change_percent"] == pytest.approx(100 * (curve[4] - curve[1]) / curve[1], rel=1e-5)
    assert result["curve_mean_signal"] == pytest.approx(curve)


def test_kinetic_curve_undetermined_cases():
    study, mask = curve_study([100, 200])
    assert kinetic_curve_type(study, mask)["kinetic_curve_type"] == "undetermined"
    study, mask = curve_study([100, 200, 150])
    assert kinetic_curve_type(study, np.zeros(SHAPE, bool))["kinetic_curve_type"] == "undetermined"
    assert kinetic_curve_type(study, mask)["kinetic_curve_type"] == "washout"  # early = phase 1, never the last
    study, mask = curve_study([100, 200, 150], times=None)
    with pytest.raises(MissingTimesError):
        kinetic_curve_type(study, mask)


def test_measure_on_a_synthetic_study():
    study, cube = ftv_study()
    mask = cube.copy()
    mask[14:17, 14:17, 14:17] = True  # a second, non-enhancing lesion
    result = measure(study, mask, ftv_options={"pe_threshold_percent": 70.0, "background_fraction": None,
                                               "region_margin_mm": 0.0})
    voxel_ml = 2.0 / 1000
    assert result["tumor_volume_ml"] == pytest.approx((216 + 27) * voxel_ml)
    assert result["n_lesions"] == 2
    assert [lesion["volume_ml"] for lesion in result["lesions"]] == pytest.approx([216 * voxel_ml, 27 * voxel_ml])
    assert result["longest_diameter_mm"] == result["lesions"][0]["longest_diameter_mm"]
    assert result["t_category"] == t_category(result["longest_diameter_mm"]) + " (m)" == "T1 (m)"
    assert result["functional_tumor_volume_ml"] == pytest.approx(216 * voxel_ml)
    assert result["ftv_early_phase"] == 2 and result["ser_gt_1.75_ml"] == pytest.approx(216 * voxel_ml)
    assert result["kinetic_curve_type"] in ("persistent", "plateau", "washout")
    assert result["mean_percent_enhancement"] == pytest.approx(100 * 216 / 243)
    assert result["enhancement_phase"] == 2 and result["notes"] == ""
    import json
    json.dumps(result)  # plain JSON types


def test_measure_without_times_and_on_an_empty_mask():
    study, cube = ftv_study(times=None)
    result = measure(study, cube)
    assert result["functional_tumor_volume_ml"] is None and result["kinetic_curve_type"] is None
    assert "--times" in result["notes"]
    assert result["tumor_volume_ml"] == pytest.approx(216 * 2.0 / 1000)
    assert result["mean_percent_enhancement"] == pytest.approx(80.0)  # first post-contrast: 180 vs 100
    study, _ = ftv_study()
    empty = measure(study, np.zeros(SHAPE, bool))
    assert (empty["tumor_volume_ml"], empty["longest_diameter_mm"], empty["t_category"], empty["n_lesions"],
            empty["lesions"]) == (0.0, 0.0, "T0", 0, [])
    assert empty["functional_tumor_volume_ml"] == 0.0 and empty["kinetic_curve_type"] == "undetermined"


def test_fragments_closer_than_the_gap_are_one_lesion():
    geometry = Geometry((40, 40, 20), (1.0, 1.0, 3.0), (0.0, 0.0, 0.0))
    mask = np.zeros(geometry.shape_zyx, bool)
    mask[5:10, 10:20, 10:20] = True        # a mass
    mask[11, 12:15, 12:15] = True          # a spicule fragment one empty slice beyond it (centres 6 mm apart)
    mask[5:8, 10:13, 30:33] = True         # a second focus, centres 11 mm away in x
    assert LESION_GAP_MM == 6.0
    voxel_ml = geometry.voxel_volume_ml

    def volumes(gap_mm=LESION_GAP_MM):
        return [lesion["volume_ml"] for lesion in lesions(mask, geometry, gap_mm)]

    assert volumes() == pytest.approx([(500 + 9) * voxel_ml, 27 * voxel_ml])
    assert volumes(2.0) == pytest.approx([500 * voxel_ml, 27 * voxel_ml, 9 * voxel_ml])  # plain components
    assert lesions(np.zeros_like(mask), geometry) == []


# ----------------------------------------------------------------------------- lesions
def spheres_on(geometry: Geometry, spheres) -> np.ndarray:
    """A mask ``[z, y, x]`` of balls given by (centre LPS mm, radius mm), placed by the
    physical position of every voxel centre (so it works on any grid, oblique too)."""
    i, j, k = np.meshgrid(*(np.arange(n) for n in geometry.size), indexing="ij")
    points = geometry.index_to_physical(np.stack([i, j, k], axis=-1).astype(float))
    mask = np.zeros(geometry.size, bool)
    for centre, radius in spheres:
        mask |= np.linalg.norm(points - np.asarray(centre, float), axis=-1) <= radius
    return mask.transpose(2, 1, 0)


#: A 30 mm ball in the patient's right breast, a 5 mm one in the left 45 mm away (LPS mm).
INDEX_CENTRE, SATELLITE_CENTRE = (-20.0, -35.0, 12.0), (25.0, -35.0, 12.0)
TWO_LESIONS = ((INDEX_CENTRE, 15.0), (SATELLITE_CENTRE, 2.5))


@pytest.mark.parametrize("oblique", [False, True])
def test_each_lesion_is_measured_where_it_is(oblique):
    direction = None
    if oblique:  # turned 30 degrees about S and 15 about L, j axis flipped
        a, b = math.radians(30.0), math.radians(15.0)
        rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
        rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
        direction = tuple((rz @ rx @ np.diag([1.0, -1.0, 1.0])).ravel())
    spacing = (0.8, 0.9, 1.5)
    size = (110, 110, 60) if oblique else (100, 50, 28)
    centre_index = (np.array(size) - 1) / 2
    matrix = np.eye(3) if direction is None else np.array(direction).reshape(3, 3)
    origin = np.array([2.5, -35.0, 12.0]) - matrix @ (centre_index * np.array(spacing))  # grid centred between them
    grid = Geometry(size, spacing, tuple(origin), direction or (1, 0, 0, 0, 1, 0, 0, 0, 1))
    mask = spheres_on(grid, TWO_LESIONS)

    index, satellite = lesions(mask, grid)
    assert index["volume_ml"] == pytest.approx(4 / 3 * math.pi * 15.0 ** 3 / 1000, rel=0.02)
    assert index["longest_diameter_mm"] == pytest.approx(30.0, abs=1.0)
    assert index["centroid_lps_mm"] == pytest.approx(INDEX_CENTRE, abs=0.1)
    assert index["side"] == "right"
    assert satellite["volume_ml"] == pytest.approx(4 / 3 * math.pi * 2.5 ** 3 / 1000, rel=0.25)
    assert satellite["longest_diameter_mm"] == pytest.approx(5.0, abs=1.0)
    assert satellite["centroid_lps_mm"] == pytest.approx(SATELLITE_CENTRE, abs=0.3)
    assert satellite["side"] == "left"

    result = measure(DCEStudy(np.stack([np.full(mask.shape, 100.0, np.float32)] * 2), grid, None), mask)
    assert result["n_lesions"] == 2 and result["lesions"] == [index, satellite]
    assert result["longest_diameter_mm"] == index["longest_diameter_mm"]  # not the 72 mm across both
    assert result["t_category"] == "T2 (m)"
    assert result["tumor_volume_ml"] == pytest.approx(index["volume_ml"] + satellite["volume_ml"])

    alone = measure(DCEStudy(np.stack([np.full(mask.shape, 100.0, np.float32)] * 2), grid, None),
                    spheres_on(grid, TWO_LESIONS[:1]))
    assert alone["n_lesions"] == 1 and alone["t_category"] == "T2"  # one lesion: no "(m)"
    assert alone["lesions"][0]["volume_ml"] == alone["tumor_volume_ml"] == index["volume_ml"]


def test_side_is_from_the_midline_x_0():
    assert side_of([60.0, 0.0, 0.0]) == "left"     # LPS: +x is the patient's left
    assert side_of([-60.0, 0.0, 0.0]) == "right"
    assert side_of([MIDLINE_BAND_MM - 0.1, 40.0, 40.0]) == "midline"
    assert side_of([-MIDLINE_BAND_MM + 0.1, 0.0, 0.0]) == "midline"


def test_the_tables_show_each_lesion_in_ras_words_and_the_csv_keeps_one_row():
    record = {"tumor_volume_ml": 10.1, "longest_diameter_mm": 26.44, "t_category": "T2 (m)", "n_lesions": 2,
              "lesions": [{"volume_ml": 9.96, "longest_diameter_mm": 26.44, "centroid_lps_mm": [-85.2, -30.1, 12.0],
                           "side": "right"},
                          {"volume_ml": 0.14, "longest_diameter_mm": 7.0, "centroid_lps_mm": [4.0, 20.0, -3.25],
                           "side": "midline"}],
              "functional_tumor_volume_ml": None, "kinetic_curve_type": "washout", "model_name": "m",
              "model_version": "1", "spacing_mm": [1.0, 1.0, 2.0], "timings_s": {"total": 1.5}}
    assert centroid_text([-85.2, -30.1, 12.0]) == "R 85.2, A 30.1, S 12.0 mm"  # LPS -> RAS words
    assert centroid_text([4.0, 20.0, -3.25]) == "L 4.0, P 20.0, I 3.2 mm"
    rows = {name: row_text(value, unit) for name, value, unit in measurement_rows(record)}
    assert rows == {
        "Tumor volume (all lesions)": "10.10 mL", "Longest diameter (index lesion)": "26.4 mm",
        "T category (size)": "T2 (m)", "Lesions": "2",
        "Lesion 1 (index)": "9.96 mL, longest diameter 26.4 mm, right breast, centroid R 85.2, A 30.1, S 12.0 mm",
        "Lesion 2": "0.14 mL, longest diameter 7.0 mm, midline, centroid L 4.0, P 20.0, I 3.2 mm",
        "Kinetic curve type": "washout"}
    title = overview_title(record).splitlines()
    assert title == [("m 1 | Tumor volume (all lesions) 10.10 mL | Longest diameter (index lesion) 26.4 mm | "
                      "T category (size) T2 (m) | Lesions 2"),
                     "Kinetic curve type washout",
                     f"Lesion 1 (index): {rows['Lesion 1 (index)']}", f"Lesion 2: {rows['Lesion 2']}"]
    many = dict(record, n_lesions=6, lesions=record["lesions"] * 3)
    assert overview_title(many).splitlines()[-1] == "+ 2 more lesions (measurements.json)"

    header, values, *more = list(csv.reader(io.StringIO(measurements_csv(record))))
    assert more == []
    row = dict(zip(header, values))
    assert header[:4] == ["tumor_volume_ml", "longest_diameter_mm", "t_category", "n_lesions"]
    assert header[4:10] == ["lesion1_volume_ml", "lesion1_longest_diameter_mm", "lesion1_centroid_lps_x_mm",
                            "lesion1_centroid_lps_y_mm", "lesion1_centroid_lps_z_mm", "lesion1_side"]
    assert (row["lesion2_volume_ml"], row["lesion2_centroid_lps_z_mm"], row["lesion2_side"]) == ("0.14", "-3.25",
                                                                                                  "midline")
    assert row["t_category"] == "T2 (m)" and row["timings_s.total"] == "1.5" and "spacing_mm" not in row
    single = dict(record, n_lesions=1, t_category="T2", lesions=record["lesions"][:1])
    names = [name for name, _, _ in measurement_rows(single)]
    assert names[:5] == ["Tumor volume", "Longest diameter", "T category (size)", "Lesions", "Lesion 1 (index)"]
    empty = dict(record, tumor_volume_ml=0.0, longest_diameter_mm=0.0, t_category="T0", n_lesions=0, lesions=[])
    assert [name for name, _, _ in measurement_rows(empty)][:4] == ["Tumor volume", "Longest diameter",
                                                                      "T category (size)", "Lesions"]
    assert "lesion1_volume_ml" not in measurements_csv(empty)
    panel = flat_measurements(record, lists_as_json=True)  # the Slicer panel's exported table
    assert panel["spacing_mm"] == "[1.0, 1.0, 2.0]" and panel["lesion1_side"] == "right"
