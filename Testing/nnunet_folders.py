"""Small nnU-Net v2 trained-model folders with random weights, built as nnU-Net lays them out.

The network comes from the plans through nnU-Net's own builder (``get_network_from_plans``);
each fold's checkpoint holds what nnU-Net's trainer saves (weights, trainer name, init
arguments, mirroring axes, numpy scalars in its log), so nnU-Net's predictor reads the folder
as one of its own and our loader meets the types a real checkpoint has.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

TRAINER = "nnUNetTrainer"
CONFIGURATION = "3d_fullres"
DATASET = "Dataset999_TinyBreast"


def plans_for(spacing_zyx=(2.0, 1.5, 1.5), patch_zyx=(16, 32, 32), n_channels: int = 1,
              normalization: str = "ZScoreNormalization", use_mask_for_norm: bool = False,
              anisotropic: bool = False, features=(4, 8, 16)) -> dict:
    strides = [[1, 1, 1], [1 if anisotropic else 2, 2, 2], [2, 2, 2]]
    return {
        "dataset_name": DATASET, "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(spacing_zyx),
        "original_median_shape_after_transp": [40, 64, 64], "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            str(c): {"max": 900.0, "mean": 300.0, "median": 280.0, "min": 0.0, "percentile_00_5": 5.0,
                     "percentile_99_5": 800.0, "std": 120.0} for c in range(n_channels)},
        "configurations": {CONFIGURATION: {
            "data_identifier": f"nnUNetPlans_{CONFIGURATION}", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": list(patch_zyx), "median_image_size_in_voxels": [40, 64, 64],
            "spacing": list(spacing_zyx), "normalization_schemes": [normalization] * n_channels,
            "use_mask_for_norm": [use_mask_for_norm] * n_channels,
            "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                   "force_separate_z": None},
            "architecture": {
                "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                "arch_kwargs": {
                    "n_stages": 3, "features_per_stage": list(features),
                    "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * 3,
                    "strides": strides, "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1],
                    "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                    "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                    "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
                "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
            "batch_dice": True}},
    }


def dataset_for(channel_names=("DCE_post1",), licence: str = "CC BY-NC 4.0") -> dict:
    return {"channel_names": {str(i): name for i, name in enumerate(channel_names)},
            "labels": {"background": 0, "tumor": 1}, "numTraining": 10, "file_ending": ".nii.gz",
            "name": "TinyBreast", "description": "random weights, for tests only",
            "reference": "BreastTumorSeg test fixture", "licence": licence}


def random_network(plans: dict, n_channels: int, seed: int):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    architecture = plans["configurations"][CONFIGURATION]["architecture"]
    torch.manual_seed(seed)
    network = get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                     architecture["_kw_requires_import"], n_channels, 2, allow_init=True,
                                     deep_supervision=False)
    with torch.no_grad():  # spread the random logits so the probability varies over the image
        for parameter in network.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return network


def build_model_folder(root: Path, *, folds=(0, 1), seed: int = 0, channel_names=("DCE_post1",),
                       mirroring_axes=(0, 1, 2), **plan_options) -> Path:
    """Write ``root/<dataset>/<trainer>__nnUNetPlans__3d_fullres/`` and return that folder."""
    folder = Path(root) / DATASET / f"{TRAINER}__nnUNetPlans__{CONFIGURATION}"
    folder.mkdir(parents=True, exist_ok=True)
    plans = plans_for(n_channels=len(channel_names), **plan_options)
    dataset = dataset_for(channel_names)
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    for fold in folds:
        network = random_network(plans, len(channel_names), seed * 100 + int(fold))
        checkpoint = {
            "network_weights": network.state_dict(), "optimizer_state": None, "grad_scaler_state": None,
            "logging": {"ema_fg_dice": [np.float64(0.41), np.float64(0.52)],
                        "mean_fg_dice": [np.float32(0.4), np.float32(0.5)], "epoch_end_timestamps": [1.0, 2.0]},
            "_best_ema": np.float64(0.52), "current_epoch": 2,
            "init_args": {"plans": plans, "configuration": CONFIGURATION, "fold": int(fold),
                          "dataset_json": dataset, "device": torch.device("cpu")},
            "trainer_name": TRAINER, "inference_allowed_mirroring_axes": tuple(mirroring_axes),
        }
        (folder / f"fold_{fold}").mkdir(exist_ok=True)
        torch.save(checkpoint, folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder
