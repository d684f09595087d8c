"""Regenerate the bundled sample study, BreastTumorSeg/Resources/SampleData/SampleBreastDCE.

The sample is one synthetic phantom (:mod:`breasttumorseg.phantom`, seed below; never used
in training, validation or the accuracy benchmark), on a modest grid so that it stays a
few MB in git: axial bilateral, 224 x 224 x 56 voxels of 1.5 x 1.5 x 2.9 mm (x, y, z; LPS),
four phases (pre-contrast and three post-contrast). The signal is rescaled so that the
pre-contrast's 95th percentile inside the body is 600 and stored as int16, as scanners store it.

    .venv/bin/python Testing/tools/make_sample_study.py [--output DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "BreastTumorSeg"))

from breasttumorseg.core.atomic import write_json, write_text  # noqa: E402
from breasttumorseg.segmentation.models import sha256_of  # noqa: E402
from breasttumorseg.phantom import generate_phantom  # noqa: E402
from breasttumorseg.reporting.writing import write_image  # noqa: E402

SEED = 33
PROTOCOL = {"layout": "axial", "n_phases": 4, "size": (224, 224, 56), "spacing": (1.5, 1.5, 2.9)}
DEFAULT_OUTPUT = ROOT / "BreastTumorSeg" / "Resources" / "SampleData" / "SampleBreastDCE"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="folder to write (default: the bundled one)")
    args = parser.parse_args(argv)
    case = generate_phantom(SEED, **PROTOCOL)
    study = case.study
    body = case.body_mask > 0
    scale = 600.0 / float(np.percentile(study.phases[0][body], 95))
    args.output.mkdir(parents=True, exist_ok=True)
    for n, phase in enumerate(study.phases):
        signal = np.clip(np.rint(phase * scale), 0, np.iinfo(np.int16).max).astype(np.int16)
        write_image(args.output / f"phase_{n:02d}.nii.gz", signal, study.geometry)
    write_image(args.output / "tumor_mask.nii.gz", case.tumor_mask.astype(np.uint8), study.geometry)
    write_image(args.output / "breast_mask.nii.gz", case.breast_mask.astype(np.uint8), study.geometry)
    times = [round(float(t), 1) for t in study.times_s]
    write_text(args.output / "times.json", json.dumps({"times_s": times}) + "\n")
    info = {k: case.info[k] for k in ("seed", "layout", "n_phases", "size", "spacing_mm", "tumor_volume_ml",
                                      "tumor_shape", "tumor_shape_source", "kinetic_type", "tumor_side",
                                      "fgt_density_category", "bpe_level") if k in case.info}
    info["times_s"] = times
    info["signal_scale"] = scale
    write_json(args.output / "info.json", info, indent=1)
    sums = "".join(f"{sha256_of(p)}  {p.name}\n"
                   for p in sorted(args.output.iterdir()) if p.suffix in (".gz", ".json"))
    write_text(args.output / "SHA256SUMS", sums)
    print(f"wrote {args.output}: tumor {info.get('tumor_volume_ml')} mL, {info.get('kinetic_type')} kinetics")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
