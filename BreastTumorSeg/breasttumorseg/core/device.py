"""Choosing and describing the torch device a network runs on."""

from __future__ import annotations

import torch

from .errors import BreastTumorSegError


def resolve_device(requested: "str | torch.device" = "auto") -> torch.device:
    """The torch device for ``requested``: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    ``"auto"`` picks the first CUDA GPU when one is usable, else the CPU. Asking for CUDA
    on a machine without it raises :class:`BreastTumorSegError` with one line.
    """
    if isinstance(requested, torch.device):
        text = str(requested)
    else:
        text = str(requested).strip().lower() if requested is not None else "auto"
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise BreastTumorSegError(f"--device: unknown device {requested!r} (use auto, cpu or cuda)") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise BreastTumorSegError(f"--device: unsupported device {requested!r} (use auto, cpu or cuda)")
    if not torch.cuda.is_available():
        raise BreastTumorSegError(f"--device: {text} was requested but CUDA is not available on this machine "
                                  "(PyTorch without CUDA or no NVIDIA GPU); use --device cpu or auto")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise BreastTumorSegError(f"--device: {text} does not exist; this machine has "
                                  f"{torch.cuda.device_count()} CUDA device(s)")
    return device


def describe_device(device: "str | torch.device") -> str:
    """A short human description: ``"CPU (2 threads)"`` or the GPU's name."""
    device = torch.device(device) if not isinstance(device, torch.device) else device
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"CPU ({torch.get_num_threads()} threads)"
    return str(device)
