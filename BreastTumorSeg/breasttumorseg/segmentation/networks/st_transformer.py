"""A compact spatial-temporal transformer for DCE-MRI with any number of phases (our own code).

After the design of Zhang et al. 2023 ("A robust and efficient AI assistant for breast
tumor segmentation from DCE-MRI via a spatial-temporal framework", Patterns 4(9)), at
a size that trains on two CPU cores and ships in git (about 0.5 M parameters at the
defaults instead of their ~175 M):

- **Shared residual encoder.** Every phase ``t`` enters the same 3D encoder as two
  channels ``[x_t, x_t - x_0]`` (``x_0`` = the pre-contrast). ``depth`` levels of
  residual blocks (two 3x3x3 convolutions + GroupNorm + LeakyReLU, identity or 1x1x1
  shortcut), stride-2 convolutions between levels, channels doubling from
  ``base_channels``. Only the phases present are encoded.
- **Bottleneck: spatial and temporal transformers side by side.** The bottleneck
  features of each phase become tokens (``dim = base_channels * 2 ** (depth - 1)``)
  to which an embedding of the phase's **acquisition time in seconds** is added
  (sinusoids of ``t / 60 s`` at octave frequencies, then a linear layer), not of the
  phase index, so any timing is understood. A depthwise 3x3x3 convolution gives the
  tokens their position (works at every window size). Then, in parallel on the same
  tokens, a spatial transformer layer (tokens = positions, one sequence per phase) and
  a temporal transformer layer (tokens = phases, one sequence per position, absent
  phases excluded through the attention's key-padding mask); their residual outputs
  are summed.
- **Phase pooling and decoder.** Per level, the features of the phases present are
  pooled (masked mean and masked maximum, concatenated); the decoder upsamples
  (trilinear x2 + 1x1x1 convolution), concatenates the pooled skip features, applies
  a residual block, and a 1x1x1 convolution gives ``out_channels`` logits
  (softmax outside; channel 1 = tumor).

Absent phases (``valid`` False) are never encoded, never attended to and never pooled:
the output does not depend on what the padded slots hold (a test checks this).

Tensors: phases ``[N, T, z, y, x]`` (normalised signal, phase 0 = pre-contrast, in
acquisition order), ``times_s`` ``[N, T]`` seconds after the pre-contrast (or after
injection: only differences and magnitudes of order minutes matter), ``valid`` ``[N, T]``
bool. Every spatial size must be divisible by ``2 ** (depth - 1)``. ``T`` may be at most
``max_phases``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _groups(channels: int) -> int:
    """GroupNorm groups: per-sample statistics, so padded phases never leak into others."""
    for g in (8, 4, 2):
        if channels % g == 0 and channels // g >= 2:
            return g
    return 1


class ResidualBlock(nn.Module):
    """Two 3x3x3 convolutions with GroupNorm and LeakyReLU, plus a (1x1x1) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.shortcut = (nn.Identity() if in_channels == out_channels and stride == 1 else
                         nn.Sequential(nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False),
                                       nn.GroupNorm(_groups(out_channels), out_channels)))

    def forward(self, x: Tensor) -> Tensor:
        y = F.leaky_relu(self.norm1(self.conv1(x)), 0.01)
        y = self.norm2(self.conv2(y))
        return F.leaky_relu(y + self.shortcut(x), 0.01)


class AcquisitionTimeEmbedding(nn.Module):
    """Seconds -> a ``dim`` vector: sinusoids of t / 60 s at octave frequencies, then a linear layer."""

    def __init__(self, dim: int, frequencies: int = 8):
        super().__init__()
        self.register_buffer("scales", 2.0 ** torch.arange(frequencies, dtype=torch.float32) / 16.0,
                             persistent=False)
        self.project = nn.Linear(2 * frequencies, dim)

    def forward(self, times_s: Tensor) -> Tensor:
        minutes = times_s.float()[..., None] / 60.0
        angles = 2.0 * math.pi * minutes * self.scales
        return self.project(torch.cat([angles.sin(), angles.cos()], dim=-1))


class SpatialTemporalTransformer3D(nn.Module):
    """Phases ``[N, T, z, y, x]`` + times ``[N, T]`` (+ valid ``[N, T]``) -> logits ``[N, out, z, y, x]``.

    Args:
        max_phases: most phases a study may have (pre-contrast included).
        out_channels: classes (2: background, tumor).
        base_channels: encoder channels at full resolution, doubled per level.
        depth: resolution levels (``depth - 1`` downsamplings).
        heads: attention heads of both transformer layers.
        transformer_layers: spatial + temporal layer pairs at the bottleneck.
    """

    def __init__(self, max_phases: int = 8, out_channels: int = 2, base_channels: int = 8, depth: int = 4,
                 heads: int = 4, transformer_layers: int = 1):
        super().__init__()
        for name, value in (("max_phases", max_phases), ("out_channels", out_channels),
                            ("base_channels", base_channels), ("depth", depth), ("heads", heads),
                            ("transformer_layers", transformer_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if max_phases < 2:
            raise ValueError(f"max_phases must be at least 2, got {max_phases}")
        if not 2 <= depth <= 6:
            raise ValueError(f"depth must be between 2 and 6, got {depth}")
        channels = [base_channels * 2 ** level for level in range(depth)]
        if channels[-1] % heads:
            raise ValueError(f"the bottleneck width {channels[-1]} is not divisible by heads={heads}")
        self.max_phases, self.out_channels, self.base_channels = max_phases, out_channels, base_channels
        self.depth, self.heads, self.transformer_layers = depth, heads, transformer_layers
        #: every spatial size of the input must be a multiple of this
        self.size_divisor = 2 ** (depth - 1)

        self.encoder = nn.ModuleList()
        previous = 2
        for level, c in enumerate(channels):
            self.encoder.append(ResidualBlock(previous, c, stride=1 if level == 0 else 2))
            previous = c
        dim = channels[-1]
        self.time_embedding = AcquisitionTimeEmbedding(dim)
        self.position = nn.Conv3d(dim, dim, 3, padding=1, groups=dim)
        self.spatial = nn.ModuleList(self._layer(dim, heads) for _ in range(transformer_layers))
        self.temporal = nn.ModuleList(self._layer(dim, heads) for _ in range(transformer_layers))
        self.bottleneck = nn.Sequential(nn.Conv3d(2 * dim, dim, 1), nn.LeakyReLU(0.01))
        self.up = nn.ModuleList(nn.Conv3d(channels[level + 1], channels[level], 1) for level in range(depth - 1))
        self.decoder = nn.ModuleList(ResidualBlock(3 * channels[level], channels[level])
                                     for level in range(depth - 1))
        self.head = nn.Conv3d(channels[0], out_channels, 1)

    @staticmethod
    def _layer(dim: int, heads: int) -> nn.TransformerEncoderLayer:
        return nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True,
                                          norm_first=True)

    # ------------------------------------------------------------------ forward
    def forward(self, phases: Tensor, times_s: Tensor | None = None, valid: Tensor | None = None) -> Tensor:
        if phases.ndim != 5:
            raise ValueError(f"expected phases [N, T, z, y, x], got shape {tuple(phases.shape)}")
        n, t = phases.shape[:2]
        if not 2 <= t <= self.max_phases:
            raise ValueError(f"{t} phases; this network takes 2 to {self.max_phases}")
        if any(s % self.size_divisor for s in phases.shape[2:]):
            raise ValueError(f"spatial size {tuple(phases.shape[2:])} is not divisible by {self.size_divisor}")
        if times_s is None:
            raise ValueError("the spatial-temporal transformer needs the acquisition times in seconds")
        times_s = times_s.to(phases.device, torch.float32).expand(n, t)
        valid = (torch.ones(n, t, dtype=torch.bool, device=phases.device) if valid is None
                 else valid.to(phases.device, torch.bool).expand(n, t))
        if not bool(valid[:, 0].all()) or bool((valid.sum(dim=1) < 2).any()):
            raise ValueError("every study needs its pre-contrast and at least one post-contrast phase present")

        # shared encoder on the phases present only
        present = valid.reshape(-1)
        pre = phases[:, :1].expand(n, t, *phases.shape[2:])
        x = torch.stack([phases, phases - pre], dim=2).reshape(n * t, 2, *phases.shape[2:])[present]
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x)
            if level < self.depth - 1:
                skips.append(self._pool(self._scatter(x, present, n, t), valid))
        tokens = self._attend(self._scatter(x, present, n, t), times_s, valid)   # [N, T, D, z, y, x]
        x = self.bottleneck(self._pool(tokens, valid))
        for level in reversed(range(self.depth - 1)):
            x = F.interpolate(x, size=skips[level].shape[2:], mode="trilinear", align_corners=False)
            x = self.decoder[level](torch.cat([self.up[level](x), skips[level]], dim=1))
        return self.head(x)

    @staticmethod
    def _scatter(x: Tensor, present: Tensor, n: int, t: int) -> Tensor:
        """Encoded phases ``[P, C, ...]`` back into ``[N, T, C, ...]`` (absent slots zero)."""
        full = x.new_zeros((n * t,) + tuple(x.shape[1:]))
        full[present] = x
        return full.reshape((n, t) + tuple(x.shape[1:]))

    @staticmethod
    def _pool(full: Tensor, valid: Tensor) -> Tensor:
        """Masked mean and maximum of ``[N, T, C, ...]`` over the phases present: ``[N, 2C, ...]``."""
        mask = valid.reshape(tuple(valid.shape) + (1,) * (full.ndim - 2))
        weights = mask.to(full.dtype)
        mean = (full * weights).sum(dim=1) / weights.sum(dim=1)
        maximum = full.masked_fill(~mask, float("-inf")).amax(dim=1)
        return torch.cat([mean, maximum], dim=1)

    def _attend(self, tokens: Tensor, times_s: Tensor, valid: Tensor) -> Tensor:
        """Spatial and temporal attention side by side on ``[N, T, D, z, y, x]``."""
        n, t, d = tokens.shape[:3]
        size = tokens.shape[3:]
        positions = size.numel()
        x = tokens.reshape(n * t, d, *size)
        x = x + self.position(x)
        x = x.reshape(n, t, d, positions).permute(0, 1, 3, 2)           # [N, T, S, D]
        x = x + self.time_embedding(times_s)[:, :, None, :]
        x = x * valid[:, :, None, None].to(x.dtype)
        padding = ~valid                                                  # True = absent (ignored)
        for spatial, temporal in zip(self.spatial, self.temporal):
            s = spatial(x.reshape(n * t, positions, d)).reshape(n, t, positions, d)
            seq = x.permute(0, 2, 1, 3).reshape(n * positions, t, d)
            mask = padding[:, None, :].expand(n, positions, t).reshape(n * positions, t)
            q = temporal(seq, src_key_padding_mask=mask).reshape(n, positions, t, d).permute(0, 2, 1, 3)
            x = (s + q - x) * valid[:, :, None, None].to(x.dtype)
        return x.permute(0, 1, 3, 2).reshape(n, t, d, *size)

    # ------------------------------------------------------------------ helpers
    def bind_acquisition(self, times_s) -> nn.Module:
        """A module taking phases ``[N, T, z, y, x]`` of one study with these times (seconds).

        What the sliding-window engine runs: it feeds tiles only.
        """
        return _BoundAcquisition(self, torch.as_tensor(list(times_s), dtype=torch.float32))

    def hyperparameters(self) -> dict:
        """The constructor arguments, as a model card stores them."""
        return {"max_phases": self.max_phases, "out_channels": self.out_channels,
                "base_channels": self.base_channels, "depth": self.depth, "heads": self.heads,
                "transformer_layers": self.transformer_layers}


class _BoundAcquisition(nn.Module):
    """The transformer with one study's acquisition times fixed."""

    def __init__(self, network: SpatialTemporalTransformer3D, times_s: Tensor):
        super().__init__()
        self.network = network
        self.register_buffer("times_s", times_s[None, :], persistent=False)
        self.size_divisor = network.size_divisor

    def forward(self, phases: Tensor) -> Tensor:
        return self.network(phases, self.times_s.to(phases.device).expand(phases.shape[0], -1))
