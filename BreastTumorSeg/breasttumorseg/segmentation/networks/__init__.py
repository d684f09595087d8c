"""Segmentation networks, looked up by the architecture name a model card declares."""

from __future__ import annotations

from torch import nn

from ...core.errors import ModelError
from .hirsch_unet import HirschUNet3D
from .st_transformer import SpatialTemporalTransformer3D

#: architecture name (as written in a model card) -> network class
ARCHITECTURES: dict[str, type[nn.Module]] = {"hirsch_unet3d": HirschUNet3D,
                                            "st_transformer3d": SpatialTemporalTransformer3D}


def build_network(architecture: str, **hyperparameters) -> nn.Module:
    """A freshly initialised network of ``architecture`` built with ``hyperparameters``.

    Raises :class:`~breasttumorseg.core.errors.ModelError` (one line) for an unknown
    architecture name or hyperparameters the network does not accept.
    """
    try:
        cls = ARCHITECTURES[architecture]
    except (KeyError, TypeError):
        known = ", ".join(sorted(ARCHITECTURES))
        raise ModelError(f"unknown network architecture {architecture!r} (known: {known})") from None
    try:
        return cls(**hyperparameters)
    except (TypeError, ValueError) as error:
        message = " ".join(str(error).split())
        raise ModelError(f"bad hyperparameters for architecture {architecture!r}: {message}") from None


__all__ = ["ARCHITECTURES", "HirschUNet3D", "SpatialTemporalTransformer3D", "build_network"]
