"""Training throughput and inference time of every registry model, side by side.

* **Training throughput** (patches per second): optimiser steps (AdamW, the training
  loss, forward + backward) on random patches of the size each model was trained with
  (its card's ``metrics.training.patch_size``, batch size as trained); phase-series
  models get 6 phases. The first steps are warm-up and not counted.
* **Inference time on the standard case** (DESIGN.md section 7: a 448 x 448 x 160
  phantom, 0.75 x 0.75 x 2.0 mm, 6 phases, seed 9001): :func:`segment_study` per tumor
  model (its breast prior included) and the breast-mask model alone, with their
  stages (s), in one process on one device.

    python Testing/benchmarks/bench_models.py [--device cpu|cuda] [--steps 6] [--size 448 448 160]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "BreastTumorSeg"))


def training_throughput(card, device, steps: int) -> tuple[float, list]:
    """Patches per second over ``steps`` timed steps (after two warm-up steps)."""
    import torch

    from breasttumorseg.segmentation.networks import build_network
    from breasttumorseg.training.losses import segmentation_loss

    training = card.metrics.get("training", {})
    patch = tuple(training.get("patch_size", card.patch_size))
    batch = int(training.get("batch_size", 2))
    torch.manual_seed(0)
    network = build_network(card.architecture, **card.hyperparameters).to(device).train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    channels = 6 if card.takes_phase_series else len(card.inputs)
    images = torch.rand((batch, channels) + patch, device=device)
    labels = (torch.rand((batch,) + patch, device=device) > 0.9).long()
    extra = ((torch.tensor([[0.0, 60, 120, 240, 360, 480]] * batch, device=device),) if card.takes_phase_series
             else ())
    use_amp = device.type == "cuda"

    def step():
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = network(images, *extra)
        loss = segmentation_loss(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start), [batch, *patch]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=6, help="timed training steps per model (default 6)")
    parser.add_argument("--size", type=int, nargs=3, default=(448, 448, 160), metavar=("X", "Y", "Z"))
    parser.add_argument("--seed", type=int, default=9001)
    args = parser.parse_args()

    import torch

    from breasttumorseg.core.device import resolve_device
    from breasttumorseg.evaluation.metrics import dice
    from breasttumorseg.segmentation.models import list_models, load_model
    from breasttumorseg.phantom import generate_phantom
    from breasttumorseg.segmentation.pipeline import predict_probability, segment_study

    device = resolve_device(args.device)
    cards = list_models()
    print(f"device: {device} ({torch.get_num_threads()} CPU threads)")
    print(f"\n{'model':<30}{'task':>7}{'params':>10}{'batch x patch':>22}{'patches/s':>11}")
    for card in cards:
        rate, shape = training_throughput(card, device, args.steps)
        params = card.metrics.get("n_parameters", 0)
        print(f"{card.name:<30}{card.task:>7}{params:>10,}{' x '.join(map(str, shape)):>22}{rate:>11.2f}", flush=True)

    case = generate_phantom(args.seed, layout="axial", n_phases=6, size=tuple(args.size), spacing=(0.75, 0.75, 2.0))
    truth = case.tumor_mask > 0
    print(f"\nstandard case: {tuple(args.size)} voxels, 6 phases, seed {args.seed} "
          f"(tumor {truth.sum() * case.study.geometry.voxel_volume_ml:.1f} mL)")
    print(f"{'model':<30}{'total s':>9}  stages (s)                                           Dice")
    for card in cards:
        model = load_model(card.name, device=device)
        start = time.perf_counter()
        if card.task == "breast":
            probability, _, timings = predict_probability(case.study, model, device=device)
            score = dice(probability >= 0.5, case.breast_mask > 0)
        else:
            result = segment_study(case.study, model, device=device)
            timings, score = result.timings_s, dice(result.mask > 0, truth)
        total = time.perf_counter() - start
        stages = ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
        print(f"{card.name:<30}{total:>9.1f}  {stages:<52} {score:.3f}", flush=True)
    print("(breast-mask Dice is against the phantom's breast mask; tumor Dice against its tumor; synthetic data)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
