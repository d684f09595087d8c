"""Segmentation losses, computed from the logits ``[N, K, z, y, x]`` against integer labels.

``dice_ce`` (the default): cross-entropy plus the soft Dice of the tumor over the whole batch,
which charges false positives fully also in a batch without tumor. ``generalized_dice_ce``:
cross-entropy plus Hirsch et al.'s generalized Dice (Sudre et al. 2017; class weights
1 / reference volume^2), under which false positives in a tumor-free batch cost only FP / N.
"""

from __future__ import annotations


LOSSES = ("dice_ce", "generalized_dice_ce")


def segmentation_loss(logits, target, kind: str = "dice_ce"):
    """Cross-entropy + a Dice loss (both from the logits): ``dice_ce`` the tumor's batch
    Dice (the default), ``generalized_dice_ce`` the generalized Dice of Hirsch et al."""
    import torch.nn.functional as F  # torch waits: this module imports without it (Slicer installs torch on first use)

    dice = tumor_dice_loss(logits, target) if kind == "dice_ce" else generalized_dice_loss(logits, target)
    return dice + F.cross_entropy(logits.float(), target)


def tumor_dice_loss(logits, target, eps: float = 1.0):
    """Soft Dice loss of the tumor class (channel 1) over the whole batch ("batch Dice").

    False positives cost as much as missed tumor voxels of the same count, also in a
    batch without tumor (where the generalized Dice charges only FP / N); ``eps``
    (voxels) keeps a tumor-free batch finite.
    """
    import torch

    probability = torch.softmax(logits.float(), dim=1)[:, 1]
    reference = (target == 1).float()
    intersection = (probability * reference).sum()
    return 1.0 - (2.0 * intersection + eps) / (probability.sum() + reference.sum() + eps)


def generalized_dice_loss(logits, target, eps: float = 1e-5):
    """Generalized Dice loss of softmax(logits) [N, K, ...] against integer labels [N, ...].

    Class weights 1 / (reference volume)^2 over the whole batch; a class absent from the
    batch gets the largest weight of the present classes (no division by zero).
    """
    import torch
    import torch.nn.functional as F

    probabilities = torch.softmax(logits.float(), dim=1)
    classes = logits.shape[1]
    onehot = F.one_hot(target, classes).movedim(-1, 1).float()
    dims = [0] + list(range(2, logits.ndim))
    reference = onehot.sum(dims)
    weights = 1.0 / reference.clamp(min=1.0) ** 2
    present = reference > 0
    if present.any():
        weights = torch.where(present, weights, weights[present].max())
    intersection = (probabilities * onehot).sum(dims)
    total = (probabilities + onehot).sum(dims)
    return 1.0 - (2.0 * (weights * intersection).sum() + eps) / ((weights * total).sum() + eps)
