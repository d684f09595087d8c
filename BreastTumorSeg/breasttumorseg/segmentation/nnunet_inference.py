"""An nnU-Net v2 model run through our engine, with nnU-Net's own numbers.

The study's channels (bound to phases, :mod:`.channels`) are taken on the study's grid as
nnU-Net takes an image: voxel arrays in SimpleITK order (z, y, x) with the spacing
reversed; the grid's direction plays no part (nnU-Net works in voxel space), so the
probability lands back on exactly that grid. Then, as nnU-Net v2.8.1's predictor:

1. axes transposed by the plans' ``transpose_forward``;
2. cropped to the bounding box of the voxels where any channel is non-zero (holes filled);
3. each channel normalised by the plans' scheme in that box (z-score, within the non-zero
   mask when ``use_mask_for_norm``; CT clipping; rescaling; none);
4. resampled to the configuration's spacing: third-order splines (scikit-image's
   ``resize`` conventions: edge mode, no anti-aliasing, output clipped to the input range),
   in-plane first and nearest along the low-resolution axis when the anisotropy exceeds 3;
5. sliding window with a Gaussian (sigma 1/8 of the patch) over evenly spread tiles, logits
   averaged over folds (and mirrored copies with test-time mirroring);
6. logits resampled back to the box's shape (first order), softmax, the tumor channel
   put back into the full image (0 outside the box) and transposed back. With linear
   resampling only the differences of the other logits to the tumor's are resampled (one
   channel for tumor versus background): the same probability for less work.

Unlike nnU-Net, tiles outside the body (and outside a breast region when one is given)
are skipped unless the model runs on the whole image; progress, cancel and the
out-of-memory fallback are the engine's. On CUDA the network runs under float16 autocast
with 4 tiles a batch, as nnU-Net's predictor does (:func:`window_config`).
"""

from __future__ import annotations

import time

import numpy as np
from scipy import ndimage

from ..exam.channels import channel_images
from ..core.errors import ModelError
from ..core.progress import report, scaled
from .pipeline import body_mask

ANISOTROPY_THRESHOLD = 3.0
#: Background logit (and minus the others') of voxels no tile covered: probability ~ 0.
UNCOVERED_LOGIT = 20.0
NORMALIZATIONS = ("ZScoreNormalization", "CTNormalization", "NoNormalization", "RescaleTo01Normalization",
                  "RGBTo01Normalization")
RESAMPLING_FUNCTIONS = ("resample_data_or_seg_to_shape", "resample_data_or_seg_to_spacing")


# ----------------------------------------------------------------------------- cropping
def nonzero_box(data: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray]:
    """(slices of the box, mask inside the box) of the voxels where any channel of
    ``data [C, ...]`` is non-zero, enclosed holes filled (the whole image when none is)."""
    mask = ndimage.binary_fill_holes(np.any(data != 0, axis=0))
    if not mask.any():
        return tuple(slice(0, s) for s in mask.shape), mask
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=others))
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    box = tuple(box)
    return box, mask[box]


# ----------------------------------------------------------------------------- normalisation
def normalize(data: np.ndarray, mask: np.ndarray, configuration: dict, intensities: dict) -> np.ndarray:
    """Each channel of ``data [C, ...]`` (float32, in place) by the configuration's scheme."""
    schemes = configuration["normalization_schemes"]
    use_mask = configuration["use_mask_for_norm"]
    for c in range(data.shape[0]):
        scheme = schemes[c]
        image = data[c]
        if scheme == "ZScoreNormalization":
            if use_mask[c]:
                values = image[mask]
                mean, std = values.mean(), values.std()
                image[mask] = (values - mean) / max(std, 1e-8)
            else:
                mean, std = image.mean(), image.std()
                image -= mean
                image /= max(std, 1e-8)
        elif scheme == "CTNormalization":
            properties = intensities.get(str(c)) or {}
            np.clip(image, properties["percentile_00_5"], properties["percentile_99_5"], out=image)
            image -= properties["mean"]
            image /= max(properties["std"], 1e-8)
        elif scheme == "RescaleTo01Normalization":
            image -= image.min()
            image /= np.clip(image.max(), a_min=1e-8, a_max=None)
        elif scheme == "RGBTo01Normalization":
            image /= 255.0
        elif scheme != "NoNormalization":
            raise ModelError(f"plans.json: normalisation scheme {scheme!r} is not supported "
                             f"({', '.join(NORMALIZATIONS)})")
    return data


# ----------------------------------------------------------------------------- resampling
def new_shape_for(shape, spacing, target_spacing) -> tuple[int, ...]:
    """Voxels per axis after resampling from ``spacing`` to ``target_spacing`` (as nnU-Net rounds)."""
    return tuple(round(s / t * n) for s, t, n in zip(spacing, target_spacing, shape))


def _low_resolution_axis(spacing) -> int | None:
    axes = np.where(max(spacing) / np.array(spacing) == 1)[0]
    return int(axes[0]) if len(axes) == 1 else None


def separate_axis(spacing, target_spacing, force_separate_z=None,
                  threshold: float = ANISOTROPY_THRESHOLD) -> int | None:
    """The axis resampled on its own (nearest or ``order_z``) after in-plane resampling, or None."""
    if force_separate_z is not None:
        return _low_resolution_axis(spacing) if force_separate_z else None
    for candidate in (spacing, target_spacing):
        if max(candidate) / min(candidate) > threshold:
            return _low_resolution_axis(candidate)
    return None


def resize(image: np.ndarray, shape, order: int) -> np.ndarray:
    """scikit-image's ``resize(image, shape, order, mode="edge", anti_aliasing=False)``:
    spline interpolation on pixel centres, clipped to the input's range (float64)."""
    factors = np.divide(image.shape, shape)
    out = ndimage.zoom(image, [1 / f for f in factors], order=order, mode="nearest", grid_mode=True)
    if order > 0:
        np.clip(out, image.min(), image.max(), out=out)
    return out


def resample_to_shape(data: np.ndarray, shape, spacing, target_spacing, *, order: int = 3, order_z: int = 0,
                      force_separate_z=None) -> np.ndarray:
    """``data [C, ...]`` resampled to ``shape`` (float32), nnU-Net's ``resample_data_or_seg``
    for images: ``order`` splines, or in-plane ``order`` then ``order_z`` along the
    anisotropic axis."""
    shape = tuple(int(s) for s in shape)
    if tuple(data.shape[1:]) == shape:
        return data
    axis = separate_axis(spacing, target_spacing, force_separate_z)
    out = np.zeros((data.shape[0], *shape), dtype=np.float32)
    for c in range(data.shape[0]):
        channel = data[c].astype(np.float64)
        if axis is None:
            out[c] = resize(channel, shape, order)
            continue
        in_plane = tuple(s for a, s in enumerate(shape) if a != axis)
        moved = np.moveaxis(channel, axis, 0)
        stacked = np.stack([resize(plane, in_plane, order) for plane in moved])
        stacked = np.moveaxis(stacked, 0, axis)
        if stacked.shape[axis] != shape[axis]:
            scale = [o / n for o, n in zip(stacked.shape, shape)]
            grid = np.mgrid[tuple(slice(0, n) for n in shape)].astype(np.float64)
            coordinates = np.array([s * (g + 0.5) - 0.5 for s, g in zip(scale, grid)])
            stacked = ndimage.map_coordinates(stacked, coordinates, order=order_z, mode="nearest")
        out[c] = stacked
    return out


def _resampling(configuration: dict, which: str) -> dict:
    name = configuration.get(f"resampling_fn_{which}", "resample_data_or_seg_to_shape")
    if name not in RESAMPLING_FUNCTIONS:
        raise ModelError(f"plans.json: resampling function {name!r} is not supported "
                         f"({', '.join(RESAMPLING_FUNCTIONS)})")
    options = dict(configuration.get(f"resampling_fn_{which}_kwargs") or {})
    return {"order": int(options.get("order", 3 if which == "data" else 1)), "order_z": int(options.get("order_z", 0)),
            "force_separate_z": options.get("force_separate_z")}


# ----------------------------------------------------------------------------- the whole run
def preprocess(model, channels: np.ndarray, spacing_zyx) -> dict:
    """nnU-Net's preprocessing of ``channels [C, z, y, x]``: the network's input and what the
    export needs (box, shapes, spacings)."""
    forward = [int(a) for a in model.plans.get("transpose_forward", [0, 1, 2])]
    data = np.ascontiguousarray(channels.transpose([0, *[a + 1 for a in forward]]), dtype=np.float32)
    spacing = [float(spacing_zyx[a]) for a in forward]
    full_shape = data.shape[1:]
    box, mask = nonzero_box(data)
    data = np.array(data[(slice(None), *box)], dtype=np.float32)
    target = [float(s) for s in model.configuration["spacing"]]
    if len(target) < len(spacing):
        target = [spacing[0], *target]
    cropped_shape = data.shape[1:]
    shape = new_shape_for(cropped_shape, spacing, target)
    normalize(data, mask, model.configuration, model.plans.get("foreground_intensity_properties_per_channel") or {})
    data = resample_to_shape(data, shape, spacing, target, **_resampling(model.configuration, "data"))
    return {"data": data, "box": box, "cropped_shape": cropped_shape, "full_shape": full_shape, "spacing": spacing,
            "target_spacing": target, "forward": forward}


def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    """For each of ``size_out`` voxels, the nearest of ``size_in`` voxels when both span the
    same extent (pixel centres, as scikit-image's ``resize`` with order 0)."""
    return np.minimum(((np.arange(size_out) + 0.5) * (size_in / size_out)).astype(np.int64), size_in - 1)


def to_network_grid(mask: np.ndarray, prepared: dict) -> np.ndarray:
    """A bool mask of the study's grid ``[z, y, x]`` on the network's grid (nearest voxel)."""
    transposed = mask.transpose(prepared["forward"])[prepared["box"]]
    shape = prepared["data"].shape[1:]
    if transposed.shape == shape:
        return np.ascontiguousarray(transposed, dtype=bool)
    indices = [nearest_indices(n, m) for n, m in zip(transposed.shape, shape)]
    return np.ascontiguousarray(transposed[np.ix_(*indices)], dtype=bool)


def _is_linear(options: dict) -> bool:
    """Whether resampling with these options is linear in the data (then it commutes with
    differences of logits): first order or less, also along a separate axis."""
    return options["order"] <= 1 and options["order_z"] <= 1


def export_probability(logits: np.ndarray, prepared: dict, model) -> np.ndarray:
    """The tumor probability on the study's grid from logits ``[K, ...]`` on the network's grid.

    nnU-Net resamples every logit channel back to the box (first order), then takes the
    softmax. With linear resampling the tumor probability needs only the K - 1 differences
    ``l_k - l_tumor`` (p = 1 / (1 + sum exp(l_k - l_tumor))), which are resampled instead:
    one channel for a tumor-versus-background model, the same numbers for half the work.
    """
    tumor = model.output_label
    options = _resampling(model.configuration, "probabilities")
    if _is_linear(options):
        differences = resample_to_shape(np.delete(logits, tumor, axis=0) - logits[tumor], prepared["cropped_shape"],
                                        prepared["target_spacing"], prepared["spacing"], **options)
    else:  # every channel resampled, as nnU-Net does, then the differences
        resampled = resample_to_shape(logits, prepared["cropped_shape"], prepared["target_spacing"],
                                      prepared["spacing"], **options)
        differences = np.delete(resampled, tumor, axis=0) - resampled[tumor]
    exponentials = np.exp(np.clip(differences, None, 80.0, out=differences), out=differences)
    denominator = exponentials.sum(axis=0) if len(exponentials) > 1 else exponentials[0]
    denominator += 1.0
    probability = np.zeros(prepared["full_shape"], dtype=np.float32)
    probability[prepared["box"]] = np.reciprocal(denominator, dtype=np.float32)
    backward = [int(a) for a in model.plans.get("transpose_backward", [0, 1, 2])]
    return np.ascontiguousarray(probability.transpose(backward))


def _in_float16(array: np.ndarray) -> np.ndarray:
    """Rounded to float16 and back: the precision nnU-Net's predictor keeps its logits in."""
    return array.astype(np.float16).astype(np.float32)


def window_config(model, device, batch_size: int | None = None):
    """The engine's settings for ``model`` on ``device`` (a ``torch.device``): nnU-Net's tile
    layout, Gaussian and float16 sums; on CUDA 4 tiles per batch under float16 autocast (what
    nnU-Net's predictor runs in), on the CPU one tile at a time in float32."""
    from .inference import SlidingWindowConfig  # the engine waits: it imports torch (installed on first use in Slicer)

    return SlidingWindowConfig(patch_size=tuple(model.card.patch_size), overlap=0.5, tiling="nnunet",
                               accumulator="float16", amp=True, amp_dtype="float16", compact_tiling=True,
                               batch_size=batch_size or (4 if device.type == "cuda" else 1))


def predict_probability(model, study, *, device="auto", batch_size: int | None = None, region=None,
                        progress=None, cancel=None, warn=None) -> tuple[np.ndarray, str, dict]:
    """The model's tumor probability (float32 ``[z, y, x]``, 0..1) on ``study``'s grid:
    (probability, device description, timings in s). ``region`` (bool, study grid): tiles
    only there and probability 0 outside."""
    from ..core.device import describe_device, resolve_device
    from .inference import sliding_window_logits

    model.check_study(study)
    timings = {}
    start = time.perf_counter()
    report(progress, "preparing inputs", 0.0, cancel)
    channels = channel_images(study.phases, model.roles)
    prepared = preprocess(model, channels, tuple(reversed(study.geometry.spacing)))
    foreground = None
    if not model.whole_image:
        inside = body_mask(study) if region is None else (body_mask(study) & region)
        foreground = to_network_grid(inside, prepared)
    timings["prepare"] = time.perf_counter() - start

    torch_device = resolve_device(device)
    config = window_config(model, torch_device, batch_size)
    # where no tile runs (outside the body), logits that say background with certainty
    uncovered = [UNCOVERED_LOGIT if c == 0 else -UNCOVERED_LOGIT for c in range(model.n_outputs)]
    start = time.perf_counter()
    logits = None
    folds = model.fold_networks or [model.network]
    for index, network in enumerate(folds):  # each fold over the whole image, summed, as nnU-Net
        fold_logits = sliding_window_logits(
            network, prepared["data"], config, model.n_outputs, device=torch_device, foreground=foreground,
            progress=scaled(progress, 0.05 + 0.85 * index / len(folds), 0.05 + 0.85 * (index + 1) / len(folds),
                            "inference"),
            cancel=cancel, warn=warn, uncovered=uncovered)
        logits = fold_logits if logits is None else _in_float16(logits + fold_logits)
    if len(folds) > 1:
        logits = _in_float16(logits / len(folds))
    timings["inference"] = time.perf_counter() - start
    report(progress, "resampling to the reference grid", 0.9, cancel)
    start = time.perf_counter()
    probability = export_probability(logits, prepared, model)
    if region is not None:
        probability[~region] = 0.0
    timings["resample"] = time.perf_counter() - start
    return probability, describe_device(torch_device), timings
