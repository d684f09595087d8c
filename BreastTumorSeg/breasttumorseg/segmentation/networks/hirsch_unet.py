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

The fixed upsampling kernel is a non-persistent buffer: it is not a trainable parameter
(optimisers never see it) and it is not part of ``state_dict()`` (weights files hold
learned values only; the kernel is rebuilt identically by the constructor). Before the
transposed convolution the input is edge-replicated by one voxel, which makes the layer
exactly equal to trilinear interpolation by 2 with half-voxel alignment (PyTorch's
``interpolate(..., mode="trilinear", align_corners=False)``), borders included.

Tensors are [N, C, z, y, x]; every spatial size must be divisible by ``2 ** (depth - 1)``.
At the defaults (3 inputs, 2 outputs, 16 base channels, depth 4) the network has about
1.5 M trainable parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def linear_upsampling_kernel_1d() -> Tensor:
    """Weights of linear interpolation by 2 as a stride-2 transposed convolution (length 4)."""
    return torch.tensor([0.25, 0.75, 0.75, 0.25], dtype=torch.float32)


class FixedTrilinearUpsample3d(nn.Module):
    """x2 trilinear upsampling as a depthwise stride-2 ConvTranspose3d with fixed weights.

    The 4x4x4 kernel is the outer product of ``[1/4, 3/4, 3/4, 1/4]`` along z, y and x,
    one copy per channel (``groups=channels``). It is registered as a non-persistent
    buffer, so it never trains and never enters ``state_dict()``.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.channels = int(channels)
        k = linear_upsampling_kernel_1d()
        kernel = k[:, None, None] * k[None, :, None] * k[None, None, :]
        self.register_buffer("weight", kernel.expand(self.channels, 1, 4, 4, 4).contiguous(),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        # Replicating one edge voxel, then cropping 3 per side (padding=3), gives output
        # size 2n and exact trilinear values at the borders too.
        x = F.pad(x, (1, 1, 1, 1, 1, 1), mode="replicate")
        return F.conv_transpose3d(x, self.weight.to(x.dtype), stride=2, padding=3, groups=self.channels)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, fixed trilinear weights"


#: normalisation layers by the name a model card's ``norm`` hyperparameter gives
NORMALIZATION_LAYERS = {"batch": lambda channels: nn.BatchNorm3d(channels),
                        "instance": lambda channels: nn.InstanceNorm3d(channels, affine=True)}


class ConvBlock(nn.Sequential):
    """``n`` x (Conv3d 3x3x3, zero padded + normalisation + ReLU)."""

    def __init__(self, in_channels: int, out_channels: int, n: int, norm: str = "batch"):
        layers: list[nn.Module] = []
        for i in range(n):
            layers += [nn.Conv3d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1, bias=False),
                       NORMALIZATION_LAYERS[norm](out_channels),
                       nn.ReLU(inplace=True)]
        super().__init__(*layers)


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

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 5:
            raise ValueError(f"expected a [N, C, z, y, x] tensor, got shape {tuple(x.shape)}")
        if any(s % self.size_divisor for s in x.shape[2:]):
            raise ValueError(f"spatial size {tuple(x.shape[2:])} is not divisible by {self.size_divisor} "
                             f"(2 ** (depth - 1)) for this network")
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x)
            if level < self.depth - 1:
                skips.append(x)
                x = self.downsample(x)
        for level in reversed(range(self.depth - 1)):
            x = self.upsample[level](x)
            x = self.decoder[level](torch.cat([x, skips[level]], dim=1))
        return self.head(x)

    def hyperparameters(self) -> dict:
        """The constructor arguments, as a model card stores them (``norm`` only when not the paper's)."""
        values = {"in_channels": self.in_channels, "out_channels": self.out_channels,
                  "base_channels": self.base_channels, "depth": self.depth,
                  "convs_per_level": self.convs_per_level}
        if self.norm != "batch":
            values["norm"] = self.norm
        return values
