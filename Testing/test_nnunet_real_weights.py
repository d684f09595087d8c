"""Opt-in: a downloaded MAMA-MIA nnU-Net model segments the bundled sample study.

Skipped unless ``BREASTTUMORSEG_MAMA_MIA`` names the folder the MAMA-MIA archive was unzipped
into (see README, "Running a model trained on real data"). Prints the time it took.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "BreastTumorSeg" / "Resources" / "SampleData" / "SampleBreastDCE"
FOLDER = os.environ.get("BREASTTUMORSEG_MAMA_MIA")


@pytest.mark.skipif(not FOLDER, reason="set BREASTTUMORSEG_MAMA_MIA to a downloaded MAMA-MIA model folder")
def test_mama_mia_segments_the_sample(tmp_path):
    phases = sorted(SAMPLE.glob("phase_*.nii.gz"))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "BreastTumorSeg"))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "breasttumorseg", "segment", *map(str, phases), "--model", FOLDER,
                           "--output", str(out), "--quiet"], capture_output=True, text=True, env=env, timeout=3600,
                          check=False)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "measurements.json").read_text())
    assert record["model_kind"] == "nnunetv2" and record["channel_mapping_from"].startswith("MAMA-MIA")
    assert "licence" in done.stderr
    print(f"\nMAMA-MIA ({record['model_version']}) segmented the sample in {seconds:.1f} s on {record['device']}: "
          f"tumor volume {record.get('tumor_volume_ml')} mL (the sample is a phantom: no accuracy is claimed)")
