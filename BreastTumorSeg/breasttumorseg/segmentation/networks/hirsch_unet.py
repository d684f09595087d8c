"""The 3D U-Net of Hirsch et al., reimplemented in PyTorch (our own code).

Credit: L. Hirsch, Y. Huang, S. Luo, et al. "Radiologist-level performance by using
deep learning for segmentation of breast cancers on MRI scans." Radiology: Artificial
Intelligence 4(1), 2022 (arXiv 2009.09827). Their network was published in Keras; this
module follows the architecture described there and in DESIGN.md section 2:

- ``depth`` resolution levels; each level is ``convs_per_level`` x (Conv3d 3x3x3 +
  normalisation + ReLU); the number of feature channels doubles per level, starting at
  ``base_channels``. The normalisation is BatchNorm3d as in the paper (``norm="batch"``)
  or InstanceNorm3d with learned affine parameters (``norm="instance"``, as nnU-Net does):
  instance normalisation behaves the same in training and inference, whereas batch
  statistics of two tumor-centred training patches differ from the running averages
  that a whole-case sliding window then uses;
- downsampling by 3x3x3 average pooling with stride 2 (padding 1, padded voxels not
  counted in the average, like Keras' ``padding="same"``);
- upsampling by a stride-2 transposed convolution whose weights are FIXED trilinear
  interpolation weights, applied per channel (depthwise). With the overlapping average
  pooling this avoids the checkerboard artifacts of learned transposed convolutions;
- skip connections concatenated with the upsampled features;
- a final 1x1x1 convolution to ``out_channels`` logits (softmax is applied outside).

Deviation from Hirsch et al., on purpose: the 3x3x3 convolutions are zero-padded
("same") instead of unpadded ("valid"), so the output has the size of the input and the
skip connections need no cropping. This keeps tiles small enough for CPUs; the
sliding-window engine (:mod:`breasttumorseg.segmentation.inference`) hides the tile borders with
overlapping tiles and Gaussian blending.

The fixed upsampling has no weights to learn or store. A depthwise transposed convolution
with the kernel ``[1/4, 3/4, 3/4, 1/4]`` along each axis, on the input edge-replicated by one
voxel, equals trilinear interpolation by 2 with half-voxel alignment (PyTorch's
``interpolate(..., mode="trilinear", align_corners=False)``), borders included; the layer
computes the interpolation, which gives the same numbers 2-3x faster on CPU than the
transposed convolution (``Testing/test_networks.py`` checks the equality).

Activations and weights are kept in PyTorch's ``channels_last_3d`` memory layout (z, y, x,
channels innermost): oneDNN's 3D convolutions run 1.4-1.9x faster on CPU in that layout, in
inference and training alike (measured on a 96 x 128 x 128 tile and a batch of 48 x 64 x 64
patches, 2 cores). The layout changes no value beyond float rounding; the logits come back
in the usual contiguous layout, and ``state_dict()`` holds contiguous copies (what safetensors
writes and every other tool expects).

Tensors are [N, C, z, y, x]; every spatial size must be divisible by ``2 ** (depth - 1)``.
At the defaults (3 inputs, 2 outputs, 16 base channels, depth 4) the network has about
1.5 M trainable parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FixedTrilinearUpsample3d(nn.Module):
    """x2 trilinear upsampling, half-voxel aligned, edges replicated: Hirsch et al.'s fixed
    transposed convolution (kernel ``[1/4, 3/4, 3/4, 1/4]`` along z, y and x),
    computed as an interpolation. No parameters, nothing in ``state_dict()``."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = int(channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, fixed trilinear weights"


def _state_in_plain_layout(module: nn.Module, state: dict, prefix: str, metadata) -> None:
    """``state_dict()`` post-hook: channels_last weights leave as contiguous tensors."""
    for key, value in state.items():
        if key.startswith(prefix) and isinstance(value, Tensor) and not isinstance(value, nn.Parameter):
            state[key] = value.contiguous()


#: normalisation layers by the name a model card's ``norm`` hyperparameter gives
NORMALIZATION_LAYERS = {"batch": lambda channels: nn.BatchNorm3d(channels),
                        "instance": lambda channels: nn.InstanceNorm3d(channels, affine=True)}


class ConvBlock(nn.Sequential):
    """``n`` x (Conv3d 3x3x3, zero padded + normalisation + ReLU).

    In eval mode a batch-normalised block folds each normalisation into its convolution
    (weights scaled by gamma / sqrt(running variance + eps), a bias of beta - mean x that
    scale): the same function in one pass over the activations instead of two, computed from
    the live parameters on every call, so nothing is stored twice.
    """

    def __init__(self, in_channels: int, out_channels: int, n: int, norm: str = "batch"):
        layers: list[nn.Module] = []
        for i in range(n):
            layers += [nn.Conv3d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1, bias=False),
                       NORMALIZATION_LAYERS[norm](out_channels),
                       nn.ReLU(inplace=True)]
        super().__init__(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if self.training or not all(_foldable(self[i + 1]) for i in range(0, len(self), 3)):
            return super().forward(x)
        for i in range(0, len(self), 3):
            conv, norm = self[i], self[i + 1]
            scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
            x = F.conv3d(x, conv.weight * scale.view(-1, 1, 1, 1, 1), norm.bias - norm.running_mean * scale,
                         padding=1)
            x = F.relu(x, inplace=True)
        return x


def _foldable(norm: nn.Module) -> bool:
    """A batch normalisation with running statistics and affine parameters (eval mode uses both)."""
    return isinstance(norm, nn.BatchNorm3d) and norm.affine and norm.running_var is not None


class HirschUNet3D(nn.Module):
    """Hirsch et al.'s 3D U-Net: [N, in_channels, z, y, x] -> logits [N, out_channels, z, y, x].

    Args:
        in_channels: input images (default 3: first post-contrast, DCE-in, DCE-out).
        out_channels: classes (default 2: background, tumor); outputs are logits.
        base_channels: feature channels at full resolution; doubled at every level.
        depth: number of resolution levels (``depth - 1`` downsamplings).
        convs_per_level: 3x3x3 convolutions per level and per path.
        norm: ``"batch"`` (BatchNorm3d, the paper's) or ``"instance"`` (InstanceNorm3d, affine).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 2, base_channels: int = 16,
                 depth: int = 4, convs_per_level: int = 2, norm: str = "batch"):
        super().__init__()
        if norm not in NORMALIZATION_LAYERS:
            raise ValueError(f"norm must be one of {', '.join(NORMALIZATION_LAYERS)}, got {norm!r}")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("base_channels", base_channels), ("depth", depth),
                            ("convs_per_level", convs_per_level)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if depth > 8:
            raise ValueError(f"depth must be at most 8, got {depth}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.base_channels = base_channels
        self.depth = depth
        self.convs_per_level = convs_per_level
        self.norm = norm
        #: every spatial size of the input must be a multiple of this
        self.size_divisor = 2 ** (depth - 1)

        channels = [base_channels * 2 ** level for level in range(depth)]
        self.encoder = nn.ModuleList()
        previous = in_channels
        for c in channels:
            self.encoder.append(ConvBlock(previous, c, convs_per_level, norm))
            previous = c
        self.downsample = nn.AvgPool3d(kernel_size=3, stride=2, padding=1, count_include_pad=False)
        self.upsample = nn.ModuleList(FixedTrilinearUpsample3d(channels[level + 1]) for level in range(depth - 1))
        self.decoder = nn.ModuleList(ConvBlock(channels[level + 1] + channels[level], channels[level], convs_per_level,
                                               norm) for level in range(depth - 1))
        self.head = nn.Conv3d(channels[0], out_channels, kernel_size=1)
        self.to(memory_format=torch.channels_last_3d)
        self.register_state_dict_post_hook(_state_in_plain_layout)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 5:
            raise ValueError(f"expected a [N, C, z, y, x] tensor, got shape {tuple(x.shape)}")
        if any(s % self.size_divisor for s in x.shape[2:]):
            raise ValueError(f"spatial size {tuple(x.shape[2:])} is not divisible by {self.size_divisor} "
                             f"(2 ** (depth - 1)) for this network")
        x = x.contiguous(memory_format=torch.channels_last_3d)
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x)
            if level < self.depth - 1:
                skips.append(x)
                x = self.downsample(x)
        for level in reversed(range(self.depth - 1)):
            x = self.upsample[level](x)
            x = self.decoder[level](torch.cat([x, skips[level]], dim=1))
        return self.head(x).contiguous()

    def hyperparameters(self) -> dict:
        """The constructor arguments, as a model card stores them (``norm`` only when not the paper's)."""
        values = {"in_channels": self.in_channels, "out_channels": self.out_channels,
                  "base_channels": self.base_channels, "depth": self.depth,
                  "convs_per_level": self.convs_per_level}
        if self.norm != "batch":
            values["norm"] = self.norm
        return values
