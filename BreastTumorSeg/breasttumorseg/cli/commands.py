# Over 500 lines: one add_X/run_X pair per sub-command (segment, batch, evaluate, train, phantom,
# demo, models), kept together so the command line reads as one table of contents.
"""The sub-commands of ``breasttumorseg``: each ``add_X`` declares its options and
each ``run_X`` does the work, calling the backend's Python API."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
import argparse

from ..core import atomic
from .console import info, iterate, no_progress, progress_bar, warn
from ..core.resources import SAMPLE_STUDY_FOLDER
from ..core.errors import InputError, Cancelled, OutputError
from ..run.request import (
    SegmentationRequest,
    add_ftv_arguments,
    add_model_arguments,
    add_nnunet_arguments,
    add_request_arguments,
    add_threshold_arguments,
)
from ..run.runner import load_model_with_options, run_segmentation
from ..training.datasets import check_case, discover_cases, parse_dataset_settings
from ..training.validation import evaluate_on_cases
from ..exam.loading import read_image, read_mask
from ..evaluation.metrics import evaluate_masks
from ..phantom import generate_phantom, write_phantom_case
from ..evaluation.comparison import (
    baseline_inputs,
    cohort_summary,
    evaluate_cohort,
    evaluate_pairs,
    format_cohort_summary,
    format_table,
    pair_cases,
    read_phases_csv,
    summarize,
    write_cohort_outputs,
)
from ..training.distributed import world_from_environment
from ..training.config import config_from_settings, read_config_file
from ..training.loop import train_on_phantom
from ..training.publishing import install_into_registry
from ..reporting.measurement_table import measurement_rows, row_text
from ..run.cohort import SUMMARY_FILE, device_for_rank, parse_shard, read_manifest, run_cohort, shard_from_environment
from ..segmentation.model_cards import headline
from ..segmentation.models import default_model_name, list_models, nnunet_entries, nnunet_folder_of, read_registry

log = logging.getLogger("breasttumorseg")

#: The bundled sample study (a synthetic phantom, see its README).


# ----------------------------------------------------------------------------- segment
def add_segment(commands, common) -> None:
    p = commands.add_parser(
        "segment", parents=[common], help="segment the tumor in one DCE-MRI study",
        description="Segment the breast tumor in one DCE-MRI study. Writes probability.nii.gz, "
                    "tumor_label.nii.gz, tumor.seg.nrrd, measurements.json/.csv and overview.png "
                    "into --output, all on the grid of the first post-contrast phase.")
    add_request_arguments(p)
    p.add_argument("--output", "-o", required=True, type=Path, metavar="DIR", help="output folder")
    add_model_arguments(p)
    add_threshold_arguments(p)
    add_ftv_arguments(p)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--progress-lines", action="store_true",
                   help="report progress as JSON lines on stdout ({\"step\": ..., \"progress\": 0..1}), for "
                        "programs that run this command in the background (the Slicer module does)")
    p.set_defaults(run=run_segment)


def run_segment(args) -> int:
    request = SegmentationRequest.from_args(args)
    with progress_bar(args, "segmenting") as progress:
        run = run_segmentation(request, output=args.output, overwrite=args.overwrite, progress=progress, warn=warn)
    _print_measurements(run.record, args.output)
    return 0


# ----------------------------------------------------------------------------- demo
def add_demo(commands, common) -> None:
    p = commands.add_parser(
        "demo", parents=[common], help="segment the bundled sample study and score it",
        description="Segment the bundled synthetic sample study with the default model, write the "
                    "outputs and print the measurements and the Dice against its ground truth.")
    p.add_argument("--output", "-o", type=Path, default=Path("demo-output"), metavar="DIR",
                   help="output folder (default: ./demo-output)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    add_model_arguments(p)
    p.set_defaults(run=run_demo)


def run_demo(args) -> int:

    phases = sorted(SAMPLE_STUDY_FOLDER.glob("phase_*.nii.gz"))
    if not phases:
        raise InputError("the bundled sample study is missing", SAMPLE_STUDY_FOLDER)
    request = SegmentationRequest.from_args(args, phases=[str(p) for p in phases])
    with progress_bar(args, "segmenting") as progress:
        run = run_segmentation(request, output=args.output, overwrite=args.overwrite, progress=progress, warn=warn)
    _print_measurements(run.record, args.output)
    label, geometry = read_image(args.output / "tumor_label.nii.gz")
    truth = read_mask(SAMPLE_STUDY_FOLDER / "tumor_mask.nii.gz", geometry, warn=warn)
    scores = evaluate_masks(label > 0.5, truth > 0, geometry)
    print(f"\nAgainst the sample's ground truth: Dice {scores['dice']:.3f}, sensitivity "
          f"{scores['sensitivity']:.3f}, precision {scores['precision']:.3f}, HD95 {scores['hd95_mm']:.1f} mm, "
          f"ASSD {scores['assd_mm']:.2f} mm (synthetic phantom; no clinical claim)")
    return 0


# ----------------------------------------------------------------------------- phantom
def add_phantom(commands, common) -> None:
    p = commands.add_parser(
        "phantom", parents=[common], help="write synthetic DCE-MRI studies with ground truth",
        description="Write N synthetic DCE-MRI studies (phases as NIfTI, times.json, tumor and breast "
                    "masks; DICOM series with --dicom) into OUTDIR/case_XXXX.")
    p.add_argument("outdir", type=Path, metavar="OUTDIR", help="output folder")
    p.add_argument("--n", type=int, default=1, metavar="N", help="number of studies (default: 1)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the first study; study i uses S+i")
    p.add_argument("--layout", choices=("axial", "sagittal"), default="axial",
                   help="axial bilateral or sagittal unilateral (default: axial)")
    p.add_argument("--phases", type=int, metavar="K", help="phases incl. the pre-contrast, 2..8 (default: random)")
    p.add_argument("--size", type=int, nargs=3, metavar=("X", "Y", "Z"),
                   help="matrix in voxels (default: random protocol)")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="voxel spacing in mm (default: random)")
    p.add_argument("--no-tumor", action="store_true", help="studies without a malignant tumor")
    p.add_argument("--dicom", action="store_true", help="also write each study as DICOM series")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.set_defaults(run=run_phantom)


def run_phantom(args) -> int:

    if args.n < 1:
        raise InputError(f"must be at least 1, got {args.n}", "--n")
    if args.phases is not None and not 2 <= args.phases <= 8:
        raise InputError(f"must be between 2 and 8, got {args.phases}", "--phases")
    atomic.check_output_dir(args.outdir, args.overwrite)
    with atomic.atomic_output_dir(args.outdir, overwrite=args.overwrite) as staging:
        for i in iterate(range(args.n), args.quiet, "phantoms"):
            case = generate_phantom(args.seed + i, layout=args.layout, n_phases=args.phases,
                                    size=tuple(args.size) if args.size else None,
                                    spacing=tuple(args.spacing) if args.spacing else None,
                                    with_tumor=not args.no_tumor)
            write_phantom_case(case, staging / f"case_{args.seed + i:04d}", dicom=args.dicom)
    if not args.quiet:
        print(f"wrote {args.n} synthetic studies to {args.outdir}")
    return 0


# ----------------------------------------------------------------------------- evaluate
def add_evaluate(commands, common) -> None:
    p = commands.add_parser(
        "evaluate", parents=[common], help="compare predicted and reference masks (one case or a cohort)",
        description="Dice, sensitivity, precision, HD95 and average symmetric surface distance (mm), "
                    "and volume difference (mL, %%) between predicted and reference masks. P and R are "
                    "two mask files, or two folders of cases: <case>.nii.gz files, or <case>/ folders "
                    "holding tumor_label.nii.gz (prediction) / tumor_mask.nii.gz (reference). The "
                    "reference's grid is used; a prediction on another grid is resampled (nearest). "
                    "Cohort evaluation (--output, --baselines): per-case rows, median, IQR, mean and "
                    "bootstrap confidence intervals per method, size band (T1 <= 20 mm, T2 <= 50 mm, "
                    "T3 > 50 mm longest diameter of the reference) and number of phases, and box plots. "
                    "With --model and a data set (--dataset-folder or --dataset-mama-mia, the layouts `train` "
                    "reads), the model segments every case through the full inference path and is scored "
                    "against the case's tumor mask, as training scores its validation cases: a registry name, "
                    "a .safetensors file or an nnU-Net v2 model folder (with --folds, --channel, ...).")
    p.add_argument("--pred", type=Path, metavar="P", help="predicted mask file or folder")
    p.add_argument("--ref", type=Path, metavar="R", help="reference mask file or folder")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the per-case metrics and summary as JSON")
    p.add_argument("--output", "-o", type=Path, metavar="DIR",
                   help="cohort evaluation: write per_case.csv, per_case.json, summary.json and boxplots.png here")
    p.add_argument("--baselines", type=Path, metavar="DCE_FOLDER_OR_MANIFEST",
                   help="also score two conventional baselines (percent enhancement >= 70 %%, fuzzy c-means) on "
                        "the same cases; they need the images: a folder of <case>/ folders with phase*.nii.gz "
                        "(or dicom/) and optionally breast_mask.nii.gz, or a batch manifest CSV")
    p.add_argument("--phases-csv", type=Path, metavar="FILE",
                   help="number of phases per case (columns case, n_phases) for the split by phases "
                        "(default: the studies of --baselines, else measurements.json / info.json / times.json "
                        "beside the masks)")
    p.add_argument("--bootstrap", type=int, default=2000, metavar="N",
                   help="bootstrap resamples for the 95 %% confidence intervals (default: 2000)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the bootstrap (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output folder")
    model = p.add_argument_group("scoring a model on a data set (instead of --pred/--ref)")
    model.add_argument("--model", metavar="NAME|PATH",
                       help="a model name from `breasttumorseg models`, a .safetensors file with its card, or an "
                            "nnU-Net v2 model folder (or a folder above it, as unzipped)")
    data = model.add_mutually_exclusive_group()
    data.add_argument("--dataset-folder", type=Path, metavar="DIR",
                      help="cases in DIR/<case>/ (phase_*.nii.gz, times.json, tumor_mask.nii.gz)")
    data.add_argument("--dataset-mama-mia", type=Path, metavar="DIR",
                      help="a MAMA-MIA folder (DIR/images/<case>/..., DIR/segmentations/expert/<case>.nii.gz)")
    model.add_argument("--cases", nargs="+", metavar="NAME", help="only these cases of the data set (default: all)")
    model.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="where the network runs (default: auto)")
    add_nnunet_arguments(p)
    p.set_defaults(run=run_evaluate)


def run_evaluate(args) -> int:

    dataset = args.dataset_folder or args.dataset_mama_mia
    if args.model is not None or dataset is not None:
        return _run_model_evaluation(args)
    for option, value in (("--pred", args.pred), ("--ref", args.ref)):
        if value is None:
            raise InputError("give --pred and --ref (masks), or --model with --dataset-folder or "
                             "--dataset-mama-mia (a model scored on a data set)", option)
    if args.output is not None or args.baselines is not None or args.phases_csv is not None:
        return _run_cohort_evaluation(args)
    pairs = pair_cases(args.pred, args.ref)
    rows = evaluate_pairs(pairs, warn=warn, progress_iter=lambda it: iterate(it, args.quiet, "cases"))
    summary = summarize(rows)
    print(format_table(rows, summary))
    if args.json:
        report = {"cases": rows, "summary": summary}
        atomic.write_text(args.json, json.dumps(report, indent=2, default=_json_default) + "\n")
    return 0


def _run_cohort_evaluation(args) -> int:
    """Model and baselines over a cohort; every input is checked before any output is written."""
    if args.bootstrap < 100:
        raise InputError(f"must be at least 100 resamples, got {args.bootstrap}", "--bootstrap")
    if args.output is not None:
        atomic.check_output_dir(args.output, args.overwrite)
    pairs = pair_cases(args.pred, args.ref)
    phases = read_phases_csv(args.phases_csv) if args.phases_csv else None
    baselines = baseline_inputs(args.baselines, [case for case, _, _ in pairs]) if args.baselines else None
    rows = evaluate_cohort(pairs, baselines=baselines, phases=phases, warn=warn,
                           progress_iter=lambda it: iterate(it, args.quiet, "cases"))
    summary = cohort_summary(rows, resamples=args.bootstrap, seed=args.seed)
    model_rows = [r for r in rows if r["method"] == "model"]
    print(format_table(model_rows, summarize(model_rows)))
    print()
    print(format_cohort_summary(summary))
    if args.output is not None:
        with atomic.atomic_output_dir(args.output, overwrite=args.overwrite) as staging:
            write_cohort_outputs(staging, rows, summary)
        print(f"outputs in {args.output}")
    if args.json:
        atomic.write_json(args.json, {"cases": rows, "summary": summary})
    return 0


def _run_model_evaluation(args) -> int:
    """A model (ours or an nnU-Net folder) scored on a data set's cases; the data set and the
    model are checked before anything runs, and --json is written once, at the end."""
    dataset = args.dataset_folder or args.dataset_mama_mia
    if dataset is None or args.model is None:
        raise InputError("scoring a model needs both --model and a data set (--dataset-folder or "
                         "--dataset-mama-mia)", "--model" if args.model is None else "--dataset-folder")
    for option in ("pred", "ref", "output", "baselines", "phases_csv"):
        if getattr(args, option) is not None:
            raise InputError("compares mask files; it does not go with --model", f"--{option.replace('_', '-')}")
    kind = "folder" if args.dataset_folder is not None else "mama_mia"
    cases = discover_cases(parse_dataset_settings({"kind": kind, "path": str(dataset)}, "evaluate"))
    if args.cases:
        by_name = {case.name.lower(): case for case in cases}
        unknown = [name for name in args.cases if name.lower() not in by_name]
        if unknown:
            raise InputError(f"case {unknown[0]!r} is not in the data set ({len(cases)} cases found)", dataset)
        cases = [by_name[name.lower()] for name in dict.fromkeys(args.cases)]
    options = {"configuration": args.configuration, "folds": args.folds, "mirroring": args.mirroring,
               "channels": tuple(args.channel or ()), "whole_image": args.whole_image, "region": args.region}
    model = load_model_with_options(args.model, options, warn=warn)
    for case in cases:
        check_case(case, model.card)
    with progress_bar(args, "evaluation") as progress:
        figures = evaluate_on_cases(model, cases, device=args.device, progress=progress)
    print(f"{'case':24s}{'phases':>8s}{'tumor mL':>10s}{'Dice':>8s}")
    for row in figures["cases"]:
        print(f"{row['case']:24s}{row['n_phases']:8d}{row['tumor_ml']:10.2f}{row['dice']:8.3f}")
    low, high = figures["iqr_dice"]
    print(f"model {model.card.name} ({model.card.version}) on {figures['n_cases']} cases: median Dice "
          f"{figures['median_dice']:.3f} (IQR {low:.3f}-{high:.3f}), mean {figures['mean_dice']:.3f}")
    if args.json:
        provenance = model.provenance() if hasattr(model, "provenance") else {}
        atomic.write_json(args.json, {"model_name": model.card.name, "model_version": model.card.version,
                                      **provenance, "dataset": str(dataset), **figures})
    return 0


# ----------------------------------------------------------------------------- train
def add_train(commands, common) -> None:

    p = commands.add_parser(
        "train", parents=[common], help="train a model on synthetic phantoms or on your own cases",
        argument_default=argparse.SUPPRESS,
        description="Train a segmentation model (Hirsch et al.'s 3D U-Net, the spatial-temporal transformer, or "
                    "the whole-breast mask U-Net) on synthetic DCE-MRI phantoms generated on the fly, or on a "
                    "folder of cases or a MAMA-MIA folder (README: Training on your own data); writes "
                    "<name>.safetensors, its card <name>.json and a Markdown model card. Settings come from the "
                    "defaults, then --config FILE, then the options given here. Under torchrun "
                    "(torchrun --nproc-per-node N -m breasttumorseg train ...) every process trains with "
                    "--batch-size patches per step and rank 0 writes.")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="JSON object of training settings (keys: the option names below with '_' for '-', plus "
                        "architecture, inputs, task, normalization, hyperparameters, breast_mask, phase_dropout, "
                        "time_jitter_s, dataset, augment, rotation_probability, max_rotation_deg, "
                        "scaling_probability, scaling_range, bias_field_probability, bias_field_strength; see "
                        "BreastTumorSeg/Resources/Models/recipes)")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--dataset-folder", type=Path, metavar="DIR",
                      help="train on the cases in DIR/<case>/ (phase_*.nii.gz, times.json, tumor_mask.nii.gz, "
                           "optional breast_mask.nii.gz) instead of phantoms")
    data.add_argument("--dataset-mama-mia", type=Path, metavar="DIR",
                      help="train on a MAMA-MIA folder (DIR/images/<case>/<case>_0000.nii.gz ..., "
                           "DIR/segmentations/expert/<case>.nii.gz) instead of phantoms")
    p.add_argument("--output", "-o", type=Path, metavar="DIR", help="folder for weights, card and checkpoints")
    p.add_argument("--name", help="model name (default: hirsch-unet3d-phantom)")
    p.add_argument("--version", help="model version written into the card (default: 1.0.0)")
    p.add_argument("--steps", type=int, metavar="N", help="optimiser steps (default: 2000)")
    p.add_argument("--train-cases", type=int, metavar="N", help="training phantoms (default: 48)")
    p.add_argument("--val-cases", type=int, metavar="N", help="held-out validation phantoms (default: 8)")
    p.add_argument("--batch-size", type=int, metavar="N",
                   help="patches per step and process (default: 2; under torchrun the effective batch is N x "
                        "WORLD_SIZE)")
    p.add_argument("--patch", type=int, nargs=3, metavar=("Z", "Y", "X"),
                   help="patch size in voxels of the working grid (default: 64 96 96)")
    p.add_argument("--window", type=int, nargs=3, metavar=("Z", "Y", "X"),
                   help="sliding window of validation and inference, written into the card, in voxels of the "
                        "working grid (default: the --patch size)")
    p.add_argument("--working-spacing", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="spacing of the model's working grid in mm (default: 1.5 1.5 1.5)")
    p.add_argument("--foreground-fraction", type=float, metavar="F",
                   help="share of patches centred near the target, 0..1 (default: 0.33)")
    p.add_argument("--loss", choices=("dice_ce", "generalized_dice_ce"),
                   help="cross-entropy + the target's batch soft Dice (default), or + the generalized Dice "
                        "of Hirsch et al.")
    p.add_argument("--overlap", type=float, metavar="F",
                   help="sliding-window overlap written into the card, 0..0.9 (default: 0.5)")
    p.add_argument("--threshold", type=float, metavar="P",
                   help="default probability threshold written into the card (default: 0.5)")
    p.add_argument("--relative-threshold", action="store_true",
                   help="the card's threshold is a fraction of the maximum probability (Hirsch et al.)")
    p.add_argument("--base-channels", type=int, metavar="C", help="channels of the first level (default: 16)")
    p.add_argument("--learning-rate", type=float, metavar="LR", help="AdamW learning rate (default: 1e-3)")
    p.add_argument("--seed", type=int, metavar="S", help="random seed (default: 0)")
    p.add_argument("--validate-every", type=int, metavar="N",
                   help="steps between validations and checkpoints (default: 250)")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch")
    p.add_argument("--workers", type=int, metavar="N",
                   help="processes generating the phantoms before training (default: 1)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="training device (default: auto)")
    p.add_argument("--overwrite", action="store_true", help="start afresh in an --output that holds an earlier run")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output")
    p.add_argument("--install", action="store_true",
                   help="copy the trained model into the bundled registry (Resources/Models)")
    p.set_defaults(run=run_train)


#: ``train`` option (argparse dest) -> TrainingConfig field
_TRAIN_OPTIONS = {"output": "output", "name": "name", "version": "version", "steps": "steps",
                  "train_cases": "n_train_cases", "val_cases": "n_val_cases", "batch_size": "batch_size",
                  "patch": "patch_size", "window": "window_size", "working_spacing": "working_spacing_mm",
                  "foreground_fraction": "foreground_fraction", "loss": "loss", "overlap": "overlap",
                  "threshold": "threshold", "relative_threshold": "relative_threshold",
                  "learning_rate": "learning_rate", "seed": "seed", "validate_every": "validate_every",
                  "threads": "threads", "workers": "workers", "device": "device", "overwrite": "overwrite"}


def run_train(args) -> int:

    settings = read_config_file(args.config) if getattr(args, "config", None) else {}
    for option, name in _TRAIN_OPTIONS.items():
        if hasattr(args, option):
            settings[name] = getattr(args, option)
    if hasattr(args, "base_channels"):
        settings["hyperparameters"] = dict(settings.get("hyperparameters") or {}, base_channels=args.base_channels)
    for option, kind in (("dataset_folder", "folder"), ("dataset_mama_mia", "mama_mia")):
        if hasattr(args, option):
            given = settings.get("dataset")
            # keep the config's other dataset settings (validation split, cache) when the kind is the same
            keep = dict(given) if isinstance(given, dict) and given.get("kind") == kind else {}
            settings["dataset"] = dict(keep, kind=kind, path=str(getattr(args, option)))
    if "validate_every" in settings:
        settings.setdefault("checkpoint_every", settings["validate_every"])
    if "output" not in settings:
        raise InputError("give --output DIR (or \"output\" in the --config file)", "train")
    config = config_from_settings(settings, getattr(args, "config", None) or "train")
    quiet = getattr(args, "quiet", False)
    rank = world_from_environment()[0]
    with progress_bar(args, "training") if rank == 0 else no_progress() as progress:
        result = train_on_phantom(config, progress=progress, resume=getattr(args, "resume", False),
                                  log=(lambda *a, **k: None) if quiet else info)
    if rank != 0:
        return 0  # rank 0 reports and installs
    what = "phantoms" if config.dataset.is_phantom else "cases"
    print(f"validation Dice (median over {result.model_card.metrics.get('n_cases')} held-out {what}): "
          f"{result.val_dice_median:.3f}")
    if getattr(args, "install", False):
        install_into_registry(result.model_card)
        print(f"installed {result.model_card.name} into the bundled model registry")
    return 0


# ----------------------------------------------------------------------------- models
def add_models(commands, common) -> None:
    p = commands.add_parser("models", parents=[common], help="list the models in the registry",
                            description="List the registered models, their inputs and held-out figures.")
    p.set_defaults(run=run_models)


def run_models(args) -> int:

    default = default_model_name()
    by_phases = read_registry().get("default_by_phases") or {}
    for card in list_models():
        mark = "*" if card.name == default else " "
        phases = (f"{card.min_phases}-{card.max_phases}" if card.max_phases else f">= {card.min_phases}") + " phases"
        figure = f"; {headline(card)}"
        default_for = sorted(int(k) for k, v in by_phases.items() if v == card.name)
        chosen = f"; default for {_ranges(default_for)} phases" if default_for else ""
        print(f"{mark} {card.name} {card.version}  [{card.task}: {card.architecture}]  inputs: "
              f"{', '.join(card.inputs)}; {phases}{figure}{chosen}; trained on: {card.trained_on}")
    for entry in nnunet_entries():
        folder = nnunet_folder_of(entry)
        options = [f"{key} {', '.join(entry[key]) if isinstance(entry[key], list) else entry[key]}"
                   for key in ("configuration", "folds", "channels", "region") if key in entry]
        options += [key.replace("_", " ") for key in ("mirroring", "whole_image") if entry.get(key)]
        print(f"  {entry['name']}  [tumor: nnU-Net v2 model folder]  source: {folder}"
              + ("" if folder.is_dir() else " (not found)") + (f"; {'; '.join(options)}" if options else ""))
    return 0


def _ranges(numbers: list[int]) -> str:
    """[2, 3, 4, 7] -> "2-4, 7"."""
    parts, start = [], None
    for i, n in enumerate(numbers):
        start = n if start is None else start
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            parts.append(f"{start}" if start == n else f"{start}-{n}")
            start = None
    return ", ".join(parts)


def _print_measurements(record: dict, output: Path) -> None:
    """The measurement table (the rows every display shows), then what produced it."""
    rows = [(name, row_text(value, unit)) for name, value, unit in measurement_rows(record)] + [
        ("Model", f"{record.get('model_name')} {record.get('model_version')}"),
        ("Threshold", f"{record.get('threshold')}{' x max' if record.get('threshold_relative') else ''}"),
        ("Device", str(record.get("device"))),
    ]
    width = max(len(name) for name, _ in rows)
    for name, text in rows:
        print(f"{name:<{width}}  {text}".rstrip())
    print(f"outputs in {output}")


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# ----------------------------------------------------------------------------- batch
#: Exit status of ``batch`` when at least one case failed (bad input stays 2).
EXIT_CASES_FAILED = 1


def add_batch(commands, common) -> None:
    p = commands.add_parser(
        "batch", parents=[common], help="segment every study of a manifest (cohort inference)",
        description="Segment every study listed in MANIFEST.csv exactly as `segment` does, each into "
                    "DIR/<case>/ (built aside and renamed into place when complete). Columns: case, phases "
                    "(image files or DICOM folders separated by ';', relative to the manifest's folder), "
                    "optional times (seconds separated by ';') and model. Cases already complete are skipped "
                    "(--overwrite redoes them); a failing case is recorded and the run goes on (exit status 1). "
                    "DIR/cohort.csv summarises every case (status, volume, diameter, seconds, device).")
    p.add_argument("manifest", type=Path, metavar="MANIFEST.csv", help="the cohort manifest (CSV with a header row)")
    p.add_argument("--output", "-o", required=True, type=Path, metavar="DIR", help="cohort output folder")
    add_model_arguments(p)
    add_threshold_arguments(p)
    add_ftv_arguments(p)
    p.add_argument("--overwrite", action="store_true", help="segment again the cases whose folder is complete")
    p.add_argument("--shard", metavar="I/N",
                   help="run only the cases at manifest positions i (from 0) with i %% N == I; default under "
                        "torchrun: RANK/WORLD_SIZE (LOCAL_RANK picks the GPU), else all cases")
    p.set_defaults(run=run_batch)


def run_batch(args) -> int:

    # the options common to every case, checked before any case runs (the manifest's model may vary)
    common = SegmentationRequest.from_args(args, phases=[str(args.manifest)])
    from_torchrun = None if args.shard else shard_from_environment()
    shard = parse_shard(args.shard) if args.shard else (from_torchrun or (0, 1))
    cases = read_manifest(args.manifest)
    if args.output.exists() and not args.output.is_dir():
        raise OutputError("exists and is not a folder", args.output)
    device = device_for_rank(args.device)

    def segment_case(case, folder: Path) -> dict:
        # `segment`'s own request and runner; the case folder is replaced only once complete
        request = common.replace(phases=tuple(str(p) for p in case.phases),
                                 times_s=tuple(case.times_s) if case.times_s else None,
                                 model=case.model or common.model, device=device)
        return run_segmentation(request, output=folder, overwrite=True).record

    try:
        outcome = run_cohort(cases, args.output, segment_case, shard=shard, overwrite=args.overwrite,
                             progress_iter=lambda items: iterate(items, args.quiet, "cases"), warn=warn)
    except (KeyboardInterrupt, Cancelled):
        print(f"breasttumorseg: interrupted; the finished cases are kept in {args.output} (run the same command "
              "again to continue)", file=sys.stderr)
        return 130
    where = f" (shard {shard[0]}/{shard[1]})" if shard[1] > 1 else ""
    print(f"batch{where}: {outcome.n_cases} case(s): {len(outcome.segmented)} segmented, {len(outcome.skipped)} "
          f"skipped (already complete), {len(outcome.failed)} failed; summary in {args.output / SUMMARY_FILE}")
    if outcome.failed and from_torchrun:
        # torchrun stops every worker as soon as one exits non-zero: the other shards must go on
        warn(f"{len(outcome.failed)} case(s) failed; exit status 0 under torchrun so that the other shards are not "
              "stopped; the failures are in cohort.csv and a plain rerun retries them")
        return 0
    return EXIT_CASES_FAILED if outcome.failed else 0
