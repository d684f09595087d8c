"""Training on two processes under torchrun (CPU, gloo): both ranks finish, rank 0 alone
writes the weights and a valid card, the ranks end with identical networks, and the
checkpoint holds both ranks' generator states."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from breasttumorseg.training.distributed import ENV_DIGESTS, state_digest, world_from_environment
from breasttumorseg.core.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def test_world_from_the_environment():
    assert world_from_environment({}) == (0, 1, 0)
    assert world_from_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4, 1)
    with pytest.raises(InputError, match="environment WORLD_SIZE: is not an integer: 'two'"):
        world_from_environment({"WORLD_SIZE": "two"})
    with pytest.raises(InputError, match="inconsistent"):
        world_from_environment({"RANK": "2", "WORLD_SIZE": "2"})


@pytest.mark.slow
def test_two_processes_train_one_model(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from breasttumorseg.segmentation.models import load_model
    from breasttumorseg.training.config import TrainingConfig
    from breasttumorseg.training.loop import train_on_phantom

    settings = {"output": str(tmp_path / "run"), "name": "tiny", "n_train_cases": 1, "n_val_cases": 1, "steps": 3,
                "batch_size": 1, "patch_size": [16, 32, 32], "hyperparameters": {"base_channels": 4, "depth": 3},
                "validate_every": 3, "checkpoint_every": 3, "working_spacing_mm": [4.5, 4.5, 4.5], "threads": 1,
                "device": "cpu"}
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(settings))
    env = dict(os.environ, OMP_NUM_THREADS="1", **{ENV_DIGESTS: str(tmp_path / "digests")})
    env["PYTHONPATH"] = str(ROOT / "BreastTumorSeg") + os.pathsep + env.get("PYTHONPATH", "")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "breasttumorseg", "train", "--config", str(config), "--quiet"],
                          capture_output=True, text=True, env=env, timeout=300)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("validation Dice") == 1, done.stdout           # rank 0 reports, once
    assert seconds < 120

    output = tmp_path / "run"
    assert sorted(p.name for p in output.iterdir()) == ["checkpoint.safetensors", "tiny.json", "tiny.md",
                                                        "tiny.safetensors"]
    card = load_model(output / "tiny.safetensors").card                    # checksum and architecture verified
    assert card.metrics["training"]["world_size"] == 2 and card.metrics["training"]["effective_batch_size"] == 2
    ranks = [json.loads((tmp_path / "digests" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["step"] for r in ranks] == [3, 3] and [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["digest"] == ranks[1]["digest"]                         # identical networks after training
    # one validation, at the last step: the written weights are that network
    assert state_digest(load_file(str(output / "tiny.safetensors"))) == ranks[0]["digest"]

    with safe_open(str(output / "checkpoint.safetensors"), framework="pt") as handle:
        scalars = json.loads(handle.metadata()["training_state"])
        keys = set(handle.keys())
    assert scalars["world_size"] == 2 and len(scalars["numpy_rng_ranks"]) == 2
    assert scalars["numpy_rng_ranks"][0] != scalars["numpy_rng_ranks"][1]   # one sampling stream per rank
    assert {"rng/torch/0", "rng/torch/1"} <= keys
    # a single process cannot resume a two-process run exactly: refused
    with pytest.raises(InputError, match=r"made by 2 process\(es\), this run has 1"):
        train_on_phantom(TrainingConfig(**dict(settings, steps=4)), resume=True, log=lambda *a: None)
