"""Reading-room response times per reader: one reader alone vs four readers at once.

A reading room (``breasttumorseg serve --room``) is started twice on the same phantom case,
with a study of one reader and then of four; every reader's station is driven at once at the
protocol level (``Testing/station_client.py``: what the page sends, no browser) through:
open the data case, Segment, ``--moves`` threshold moves, start the reader-study case, submit.
Each step is timed from the page's request to the station's answer (for Segment: until the
result is in the page's state). Printed side by side: the median over readers of each step
with 1 and with 4 readers and their ratio, the slowest reader, and each station's memory
(resident now and peak, from /proc).

The case is a synthetic phantom (``--size``, default 160 x 160 x 48 voxels, 4 phases: the
reader-study demo's matrix); the model runs on ``--device``.

    python Testing/benchmarks/bench_reading_room.py [--device cpu|cuda] [--size X Y Z] [--moves 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "BreastTumorSeg"), str(ROOT / "Testing")]

STEPS = ("open", "segment", "slider", "start case", "submit")
TIMEOUT_S = 900


def write_room(folder: Path, args, readers) -> Path:
    """A one-case manual study of ``readers`` on a phantom, and the same case as a data case."""
    from breasttumorseg.phantom import generate_phantom, write_phantom_case

    case = generate_phantom(args.seed, n_phases=args.phases, size=tuple(args.size), spacing=tuple(args.spacing))
    write_phantom_case(case, folder / "data" / "phantom")
    phases = [f"data/phantom/phase_{p:02d}.nii.gz" for p in range(case.study.n_phases)]
    study = {"name": "reading-room benchmark", "seed": 1, "readers": list(readers), "arms": {"manual": {}},
             "cases": [{"id": "phantom", "phases": phases, "times_s": [float(t) for t in case.study.times_s],
                        "reference": "data/phantom/tumor_mask.nii.gz"}]}
    path = folder / "study.json"
    path.write_text(json.dumps(study, indent=2))
    return path


async def drive(reader: str, link: str, moves: int) -> dict:
    from station_client import StationClient

    base, token = link.split("/?token=")
    times: dict[str, list] = {step: [] for step in STEPS}

    async def timed(step, action):
        started = time.perf_counter()
        await action
        times[step].append(time.perf_counter() - started)

    async with StationClient(base, token) as client:
        await client.wait_for(lambda s: s.get("bts_reader") == reader and s.get("bts_worklist"), TIMEOUT_S, "worklist")
        await client.set(bts_case="phantom")
        await timed("open", client.click("bts-open-case"))
        started = time.perf_counter()
        await client.click("bts-segment")
        await client.wait_for(lambda s: s.get("bts_has_result") and not s.get("bts_running"), TIMEOUT_S, "segment")
        times["segment"].append(time.perf_counter() - started)
        for index in range(moves):
            await timed("slider", client.set(bts_threshold=0.3 + 0.1 * (index % 5)))
        await timed("start case", client.click("bts-start-case"))
        await client.wait_for(lambda s: s.get("bts_reading"), TIMEOUT_S, "reading")
        await timed("submit", client.click("bts-submit"))
        if client.state.get("bts_error"):
            raise RuntimeError(f"{reader}: {client.state['bts_error']}")
    return times


def run_room(folder: Path, args, n_readers: int) -> dict:
    from test_reading_room import memory_mb, start_room, station_pids

    readers = [f"R{index + 1}" for index in range(n_readers)]
    study = write_room(folder, args, readers)
    process, links, _ = start_room(study, "--data", str(folder / "data"), log=folder / "room.log",
                                   device=args.device)
    try:
        pids = station_pids(process.pid)

        async def everyone():
            return await asyncio.gather(*(drive(reader, links[reader], args.moves) for reader in readers))

        started = time.perf_counter()
        per_reader = dict(zip(readers, asyncio.run(everyone())))
        wall = time.perf_counter() - started
        memory = {reader: memory_mb(pids[reader]) for reader in readers}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    return {"times": per_reader, "memory": memory, "wall": wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--size", type=int, nargs=3, default=(160, 160, 48), metavar=("X", "Y", "Z"))
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.2, 1.2, 3.0), metavar=("X", "Y", "Z"))
    parser.add_argument("--phases", type=int, default=4)
    parser.add_argument("--seed", type=int, default=70002)
    parser.add_argument("--moves", type=int, default=5)
    args = parser.parse_args()

    runs = {}
    for n_readers in (1, 4):
        with tempfile.TemporaryDirectory() as tmp:
            runs[n_readers] = run_room(Path(tmp), args, n_readers)

    def per_reader_medians(run, step):
        return [statistics.median(times[step]) for times in run["times"].values()]

    print(f"reading room, phantom {tuple(args.size)} x {args.phases} phases, device {args.device}; "
          "each reader's step timed from the page's request to the station's answer")
    print(f"{'step (s; median over readers)':<34}{'1 reader':>10}{'4 readers':>11}{'ratio':>8}{'slowest of 4':>14}")
    for step in STEPS:
        one = statistics.median(per_reader_medians(runs[1], step))
        four = per_reader_medians(runs[4], step)
        print(f"{step:<34}{one:>10.3f}{statistics.median(four):>11.3f}{statistics.median(four) / one:>8.2f}"
              f"{max(four):>14.3f}")
    for n_readers, run in runs.items():
        memory = ", ".join(f"{reader} {rss:.0f} (peak {peak:.0f})" for reader, (rss, peak) in run["memory"].items())
        print(f"{n_readers} reader(s): whole run {run['wall']:.1f} s; station memory MiB: {memory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
