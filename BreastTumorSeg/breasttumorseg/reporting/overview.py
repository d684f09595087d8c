"""The overview figure: the tumor in three planes, as a radiologist wants to glance at it.

``overview.png`` shows the axial, coronal and sagittal slices through the tumor's largest
cross-section in each plane (the volume centre when the mask is empty). Each slice shows the
subtraction image (first post-contrast minus pre-contrast) in grey, the tumor probability as
a colour overlay (transparent below a small floor) and the outline of the tumor mask. The top
row shows the whole field of view, the bottom row zooms on the tumor.

Display conventions (those of Slicer's slice views and of radiological reading):

* axial: patient left on image right, anterior up (seen from the feet);
* coronal: patient left on image right, superior up (seen from the front);
* sagittal: anterior on image left, superior up.

Orientation comes from the grid's direction matrix (LPS), never from the array order: each
voxel axis is assigned the anatomical axis it is closest to, and the arrays are only
permuted and flipped (no resampling) so that rows and columns run the conventional way.
For an oblique acquisition the planes shown are therefore the acquired planes nearest to
axial/coronal/sagittal, labelled by the nearest axis, and the figure says so with the
largest angle between a voxel axis and its anatomical axis. Pixels have their physical
aspect ratio (spacing in mm), so thick slices look thick.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.atomic import atomic_path
from ..core.geometry import lps_to_ras
from ..exam.dce_exam import DCEStudy

#: Size of the written PNG in pixels (width, height).
FIGURE_SIZE_PX = (1500, 1060)
_DPI = 100
#: zlib level of the PNG: 1 encodes the standard case's figure in 0.13 s instead of level 6's 0.33 s,
#: 11 % larger (944 against 853 kB); the pixels are the same.
PNG_LEVEL = 1

#: Probabilities below this are not drawn (unless a lower threshold asks for more).
OVERLAY_FLOOR = 0.10
#: Obliquity (degrees) from which the figure notes that planes are only the nearest ones.
OBLIQUE_NOTE_DEG = 1.0

#: Height of one line of the header's title, as a fraction of the figure's height.
_TITLE_LINE = 0.0195

_BACKGROUND = "#0b0e13"
_PANEL = "#000000"
_TEXT = "#e6e9ef"
_MUTED = "#9aa3b2"
_CONTOUR = "#39ff88"
_ZOOM_BOX = "#5fb3ff"


@dataclass
class PlaneView:
    """One display slice, already in display order (row 0 at the top, column 0 at the left).

    Attributes:
        name: "Axial", "Coronal" or "Sagittal".
        subtraction: first post-contrast minus pre-contrast (signal units) ``[rows, cols]``.
        probability: tumor probability 0..1 ``[rows, cols]``.
        mask: tumor mask (bool) ``[rows, cols]``.
        pixel_mm: (row spacing, column spacing) in mm.
        edges: anatomical direction at the (left, right, top, bottom) image edge, e.g.
            ``("R", "L", "A", "P")`` for axial.
        slice_index: 0-based index of this slice along its through-plane axis, counted in
            the direction of increasing S / P / L (for axial / coronal / sagittal).
        n_slices: number of slices along that axis.
        position_label: where the slice lies, in Slicer's RAS words, e.g. ``"S 12.3 mm"``.
        tumor_area_mm2: area of the tumor mask in this slice (mm^2).
        tumor_box: (row0, row1, col0, col1) bounds, in pixels, of the tumor's projection onto
            this plane, or ``None`` when the mask is empty.
    """

    name: str
    subtraction: np.ndarray
    probability: np.ndarray
    mask: np.ndarray
    pixel_mm: tuple[float, float]
    edges: tuple[str, str, str, str]
    slice_index: int
    n_slices: int
    position_label: str
    tumor_area_mm2: float
    tumor_box: tuple[int, int, int, int] | None

    @property
    def size_mm(self) -> tuple[float, float]:
        """(height, width) of the slice in mm."""
        return (self.subtraction.shape[0] * self.pixel_mm[0], self.subtraction.shape[1] * self.pixel_mm[1])


def nearest_anatomical_axes(direction: np.ndarray) -> tuple[list[int], list[int], float]:
    """For each voxel axis (i, j, k): the nearest LPS axis (0=L, 1=P, 2=S) and its sign.

    Returns ``(axis_of_voxel_axis, sign_of_voxel_axis, obliquity_deg)``, where obliquity is
    the largest angle (degrees) between a voxel axis and the anatomical axis assigned to it.
    ``direction`` is the 3x3 matrix whose columns are the voxel axes in LPS.
    """
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    strength = np.abs(matrix)
    axis_of = [-1, -1, -1]
    used: set[int] = set()
    for flat in np.argsort(-strength, axis=None, kind="stable"):
        anatomical, voxel = divmod(int(flat), 3)
        if axis_of[voxel] == -1 and anatomical not in used:
            axis_of[voxel] = anatomical
            used.add(anatomical)
    signs = [1 if matrix[axis_of[v], v] >= 0 else -1 for v in range(3)]
    cosines = [min(1.0, strength[axis_of[v], v] / max(np.linalg.norm(matrix[:, v]), 1e-12)) for v in range(3)]
    obliquity = float(np.degrees(np.arccos(min(cosines))))
    return axis_of, signs, obliquity


def _to_canonical(volume_zyx: np.ndarray, axis_of: list[int], signs: list[int]) -> np.ndarray:
    """Permute/flip ``[z, y, x]`` (voxel axes k, j, i) into ``[S, P, L]`` order: numpy axis 0
    increases towards superior, axis 1 towards posterior, axis 2 towards patient left."""
    voxel_of = {axis_of[v]: v for v in range(3)}
    # canonical numpy axis n holds LPS axis 2 - n; voxel axis v is numpy axis 2 - v
    order = [2 - voxel_of[2 - n] for n in range(3)]
    canonical = np.transpose(volume_zyx, order)
    for n in range(3):
        if signs[voxel_of[2 - n]] < 0:
            canonical = np.flip(canonical, axis=n)
    return canonical


def _largest_section(mask_canonical: np.ndarray, axis: int) -> int:
    areas = mask_canonical.sum(axis=tuple(a for a in range(3) if a != axis))
    if areas.max() <= 0:
        return mask_canonical.shape[axis] // 2
    return int(np.argmax(areas))


def _box(projection: np.ndarray) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(projection.any(axis=1))
    cols = np.flatnonzero(projection.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def overview_planes(study: DCEStudy, probability: np.ndarray, mask: np.ndarray) -> list[PlaneView]:
    """The axial, coronal and sagittal display slices through the tumor's largest extent.

    ``probability`` and ``mask`` are ``[z, y, x]`` arrays on ``study.geometry``. In each plane
    the slice with the largest tumor cross-section is chosen (the middle slice when the mask
    is empty). Rows and columns follow the radiological convention (see module docstring).
    """
    geometry = study.geometry
    shape = geometry.shape_zyx
    probability = np.asarray(probability)
    mask = np.asarray(mask)
    if probability.shape != shape or mask.shape != shape:
        raise ValueError(f"probability {probability.shape} and mask {mask.shape} must match the study grid {shape}")
    axis_of, signs, _ = nearest_anatomical_axes(geometry.direction_matrix)
    voxel_of = {axis_of[v]: v for v in range(3)}
    spacing_lps = [geometry.spacing[voxel_of[a]] for a in range(3)]  # spacing along L, P, S
    sp_l, sp_p, sp_s = spacing_lps

    mask_c = _to_canonical(mask != 0, axis_of, signs)
    centre = [_largest_section(mask_c, n) for n in range(3)]  # indices along S, P, L

    def canonical(volume):
        return _to_canonical(volume, axis_of, signs)

    pre_c, post_c = canonical(study.pre_contrast), canonical(study.first_post_contrast)
    prob_c = canonical(probability)

    # the chosen point in LPS/RAS, for the position labels
    ijk = [0, 0, 0]
    for n, index in enumerate(centre):
        v = voxel_of[2 - n]
        ijk[v] = index if signs[v] > 0 else geometry.size[v] - 1 - index
    point_ras = lps_to_ras(geometry.index_to_physical(np.array(ijk, dtype=float)))

    def position(value: float, positive: str, negative: str) -> str:
        return f"{positive if value >= 0 else negative} {abs(value):.1f} mm"

    specs = [  # name, through-plane numpy axis, edges, pixel spacing, RAS label
        ("Axial", 0, ("R", "L", "A", "P"), (sp_p, sp_l), position(point_ras[2], "S", "I")),
        ("Coronal", 1, ("R", "L", "S", "I"), (sp_s, sp_l), position(point_ras[1], "A", "P")),
        ("Sagittal", 2, ("A", "P", "S", "I"), (sp_s, sp_p), position(point_ras[0], "R", "L")),
    ]
    views = []
    for name, axis, edges, pixel_mm, label in specs:
        index = centre[axis]

        def take(volume, axis=axis, index=index):
            plane = np.take(volume, index, axis=axis)
            return plane if axis == 0 else plane[::-1]  # superior up for coronal and sagittal

        def project(volume, axis=axis):
            plane = volume.any(axis=axis)
            return plane if axis == 0 else plane[::-1]

        plane_mask = take(mask_c)
        views.append(PlaneView(
            name=name,
            subtraction=(take(post_c).astype(np.float32) - take(pre_c).astype(np.float32)),
            probability=np.nan_to_num(take(prob_c).astype(np.float32), nan=0.0),
            mask=np.ascontiguousarray(plane_mask),
            pixel_mm=(float(pixel_mm[0]), float(pixel_mm[1])),
            edges=edges,
            slice_index=int(index),
            n_slices=int(mask_c.shape[axis]),
            position_label=label,
            tumor_area_mm2=float(plane_mask.sum() * pixel_mm[0] * pixel_mm[1]),
            tumor_box=_box(project(mask_c)),
        ))
    return views


# --- drawing -------------------------------------------------------------------------------------

def _overlay_colormap():
    # matplotlib waits: only the plots need it (installed on first use in Slicer)
    from matplotlib.colors import LinearSegmentedColormap

    return LinearSegmentedColormap.from_list(
        "tumor_probability", ["#7a0a12", "#d7301f", "#fc8d3c", "#fed049", "#fffbd0"])


def _grey_window(views: list[PlaneView]) -> tuple[float, float]:
    """Grey window (signal units) shared by all panels: from the 1st percentile of the slices
    to their 99.7th, raised if needed so the tumor's own enhancement is not saturated."""
    values = np.concatenate([v.subtraction.ravel() for v in views])
    low, high = np.percentile(values, [1.0, 99.7])
    inside = np.concatenate([v.subtraction[v.mask] for v in views])
    if inside.size:
        high = max(high, float(np.percentile(inside, 99.5)))
    if not np.isfinite(low) or not np.isfinite(high) or high <= low:
        low, high = float(np.min(values)), float(np.max(values)) + 1.0
    return float(low), float(high)


def _overlay_rgba(probability: np.ndarray, floor: float, cmap) -> np.ndarray:
    rgba = cmap(np.clip(probability, 0.0, 1.0))
    alpha = np.where(probability >= floor, 0.40 + 0.45 * np.clip((probability - floor) / max(1 - floor, 1e-6), 0, 1),
                     0.0)
    rgba[..., 3] = alpha
    return rgba


def _zoom_window(view: PlaneView) -> tuple[float, float, float, float]:
    """(x0, x1, y0, y1) in mm of a square around the tumor (or the chosen point)."""
    height, width = view.size_mm
    dy, dx = view.pixel_mm
    if view.tumor_box is not None:
        r0, r1, c0, c1 = view.tumor_box
        cy, cx = (r0 + r1) / 2 * dy, (c0 + c1) / 2 * dx
        extent = max((r1 - r0) * dy, (c1 - c0) * dx)
        side = float(np.clip(2.2 * extent + 10.0, 40.0, max(height, width)))
    else:
        cy, cx, side = height / 2, width / 2, min(80.0, max(height, width))
    half = side / 2
    x0 = float(np.clip(cx - half, 0, max(width - side, 0)))
    y0 = float(np.clip(cy - half, 0, max(height - side, 0)))
    return x0, x0 + side, y0, y0 + side


def _scale_bar(ax, x0: float, x1: float, y0: float, y1: float) -> None:
    width = x1 - x0
    length = next((n for n in (100, 50, 20, 10, 5, 2, 1) if n <= 0.25 * width), 1)
    pad = 0.05 * width
    xb, yb = x1 - pad - length, y1 - 0.06 * (y1 - y0)
    ax.plot([xb, xb + length], [yb, yb], color=_TEXT, lw=2.2, solid_capstyle="butt")
    ax.text(xb + length / 2, yb - 0.015 * (y1 - y0), f"{length:g} mm", color=_TEXT, fontsize=8,
            ha="center", va="bottom")


def _edge_letters(ax, edges, x0, x1, y0, y1) -> None:
    left, right, top, bottom = edges
    style = dict(color="#ffd66b", fontsize=11, fontweight="bold", ha="center", va="center")
    mx, my = (x0 + x1) / 2, (y0 + y1) / 2
    dx, dy = 0.035 * (x1 - x0), 0.04 * (y1 - y0)
    ax.text(x0 + dx, my, left, **style)
    ax.text(x1 - dx, my, right, **style)
    ax.text(mx, y0 + dy, top, **style)
    ax.text(mx, y1 - dy, bottom, **style)


def _draw_view(ax, view: PlaneView, window, floor: float | None, cmap, zoom: tuple[float, float, float, float] | None,
               box: tuple[float, float, float, float] | None) -> None:
    from matplotlib.patches import Rectangle

    height, width = view.size_mm
    extent = (0.0, width, height, 0.0)
    ax.set_facecolor(_PANEL)
    ax.imshow(view.subtraction, cmap="gray", vmin=window[0], vmax=window[1], extent=extent,
              interpolation="bilinear", origin="upper", aspect="equal")
    if floor is not None:
        ax.imshow(_overlay_rgba(view.probability, floor, cmap), extent=extent, interpolation="bilinear",
                  origin="upper", aspect="equal")
    if view.mask.any():
        dy, dx = view.pixel_mm
        xs = (np.arange(view.mask.shape[1]) + 0.5) * dx
        ys = (np.arange(view.mask.shape[0]) + 0.5) * dy
        ax.contour(xs, ys, view.mask.astype(np.float32), levels=[0.5], colors=[_CONTOUR],
                   linewidths=1.6 if zoom is not None else 1.1)
    x0, x1, y0, y1 = zoom if zoom is not None else (0.0, width, 0.0, height)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)
    if box is not None:
        bx0, bx1, by0, by1 = box
        ax.add_patch(Rectangle((bx0, by0), bx1 - bx0, by1 - by0, fill=False, ec=_ZOOM_BOX, lw=1.0, ls="--"))
    _edge_letters(ax, view.edges, x0, x1, y0, y1)
    _scale_bar(ax, x0, x1, y0, y1)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("#2a3240")


def _build_figure(study: DCEStudy, views: list[PlaneView], title: str, threshold: float | None,
                  obliquity: float):
    from matplotlib.colorbar import ColorbarBase
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    width_px, height_px = FIGURE_SIZE_PX
    fig = Figure(figsize=(width_px / _DPI, height_px / _DPI), dpi=_DPI, facecolor=_BACKGROUND)
    FigureCanvasAgg(fig)
    floor = OVERLAY_FLOOR if threshold is None else min(OVERLAY_FLOOR, 0.5 * float(threshold))
    cmap = _overlay_colormap()
    window = _grey_window(views)

    # header
    fig.text(0.015, 0.975, f"BreastTumorSeg overview  \u2014  {_short_source(study.source)}", color=_TEXT,
             fontsize=15, fontweight="bold", ha="left", va="top")
    extra_lines = title.count("\n") if title else 0
    if title:
        fig.text(0.015, 0.942, title, color=_TEXT, fontsize=11.5, ha="left", va="top", linespacing=1.3)
    fig.text(0.985, 0.975, "Subtraction: first post-contrast \u2212 pre-contrast", color=_MUTED, fontsize=10,
             ha="right", va="top")
    fig.text(0.985, 0.950, f"{study.phase_names[1]} \u2212 {study.phase_names[0]}", color=_MUTED, fontsize=9,
             ha="right", va="top")

    grid_top = 0.880 - _TITLE_LINE * extra_lines  # the header's further lines push the slices down
    grid = fig.add_gridspec(2, 3, left=0.015, right=0.915, top=grid_top, bottom=0.085, wspace=0.04, hspace=0.09)
    for column, view in enumerate(views):
        zoom = _zoom_window(view)
        top = fig.add_subplot(grid[0, column])
        height, width = view.size_mm
        covers_all = (zoom[1] - zoom[0]) >= 0.85 * width and (zoom[3] - zoom[2]) >= 0.85 * height
        _draw_view(top, view, window, floor, cmap, zoom=None, box=None if covers_all else zoom)
        top.set_anchor("N")
        area = f"tumor {view.tumor_area_mm2:.0f} mm\u00b2" if view.tumor_area_mm2 > 0 else "no tumor in slice"
        top.set_title(f"{view.name}   {view.position_label}   slice {view.slice_index + 1}/{view.n_slices}",
                      color=_TEXT, fontsize=11, loc="left", pad=5)
        top.set_title(area, color=_MUTED, fontsize=9.5, loc="right", pad=5)
        bottom = fig.add_subplot(grid[1, column])
        # the zoom shows the subtraction itself under the outline, to judge the edge on the image
        _draw_view(bottom, view, window, None, cmap, zoom=zoom, box=None)
        bottom.set_anchor("N")
        bottom.set_title(f"{view.name} zoom, {zoom[1] - zoom[0]:.0f} mm field: subtraction and outline",
                         color=_MUTED, fontsize=9.5, loc="left", pad=4)

    # probability colour bar with the threshold marked
    cax = fig.add_axes([0.945, 0.55, 0.013, 0.33])
    bar = ColorbarBase(cax, cmap=cmap, norm=Normalize(vmin=floor, vmax=1.0), orientation="vertical")
    bar.outline.set_edgecolor("#5a6372")
    cax.tick_params(colors=_TEXT, labelsize=9)
    cax.set_title("tumor\nprobability", color=_TEXT, fontsize=9.5, pad=8)
    if threshold is not None and floor <= threshold <= 1.0:
        cax.axhline(threshold, color=_CONTOUR, lw=2.0)
        cax.text(-0.5, threshold, f"threshold\n{threshold:.2f}", color=_CONTOUR, fontsize=8.5, va="center",
                 ha="right", transform=cax.get_yaxis_transform())

    # footer: legend, conventions, caveats
    fig.legend(handles=[Line2D([], [], color=_CONTOUR, lw=2, label="tumor segmentation outline"),
                        Line2D([], [], color=_ZOOM_BOX, lw=1, ls="--", label="zoomed region")],
               loc="lower left", bbox_to_anchor=(0.010, 0.030), ncol=2, frameon=False, fontsize=9.5,
               labelcolor=_TEXT)
    fig.text(0.015, 0.014, f"Colour: tumor probability, not drawn below {floor:.2f}.  Each plane: the slice with "
             "the largest tumor cross-section.  Radiological convention: patient left on image right (axial, "
             "coronal); anterior on image left (sagittal).", color=_MUTED, fontsize=8.5, ha="left", va="bottom")
    notes = ["Research software \u2014 not for clinical decisions."]
    if obliquity > OBLIQUE_NOTE_DEG:
        notes.insert(0, f"Oblique acquisition ({obliquity:.0f}\u00b0 off axis): the nearest acquired planes are "
                        "shown, not resampled.")
    fig.text(0.985, 0.042, "   ".join(notes), color=_MUTED, fontsize=8.5, ha="right", va="bottom")
    return fig


def _short_source(source, limit: int = 48) -> str:
    """The study's name for the header: the last component of its path, at most ``limit`` characters."""
    text = str(source or "")
    name = text.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1] or text
    return name if len(name) <= limit else "\u2026" + name[-(limit - 1):]


def render_overview(path, study: DCEStudy, probability: np.ndarray, mask: np.ndarray, *, title: str = "",
                    threshold: float | None = None) -> None:
    """Write the overview PNG (``FIGURE_SIZE_PX`` pixels) to ``path`` atomically.

    Args:
        path: the PNG to write; nothing is left there (nor a temporary file) if rendering fails.
        study: the study; its pre-contrast and first post-contrast phases make the subtraction.
        probability: tumor probability 0..1, ``[z, y, x]`` on ``study.geometry``.
        mask: tumor mask (non-zero = tumor), ``[z, y, x]`` on ``study.geometry``.
        title: text for the header (e.g. model, volume in mL, diameter in mm; a line per
            lesion), lines separated by newlines; the slices move down to make room.
        threshold: the probability threshold the mask came from, marked on the colour bar;
            the overlay is drawn from ``min(0.10, threshold / 2)`` up.

    Raises:
        ValueError: when ``probability`` or ``mask`` is not on the study's grid.
    """
    views = overview_planes(study, probability, mask)
    _, _, obliquity = nearest_anatomical_axes(study.geometry.direction_matrix)
    fig = _build_figure(study, views, title, threshold, obliquity)
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI, facecolor=fig.get_facecolor(),
                    pil_kwargs={"compress_level": PNG_LEVEL})
