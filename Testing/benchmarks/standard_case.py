"""The standard case of the benchmarks (DESIGN.md section 7): its options and its files.

A synthetic phantom at clinical size, 448 x 448 x 160 voxels (0.75 x 0.75 x 2.0 mm), 6
phases, axial bilateral, seed 9001; generating and writing it is never part of a timing.
"""

from __future__ import annotations

import time
from pathlib import Path


def add_options(parser) -> None:
    """``--size``, ``--spacing``, ``--phases`` and ``--seed`` of the standard case."""
    parser.add_argument("--size", type=int, nargs=3, default=(448, 448, 160), metavar=("X", "Y", "Z"))
    parser.add_argument("--spacing", type=float, nargs=3, default=(0.75, 0.75, 2.0), metavar=("X", "Y", "Z"))
    parser.add_argument("--phases", type=int, default=6)
    parser.add_argument("--seed", type=int, default=9001)


def write(folder: Path, args):
    """Generate the case ``args`` describe and write it into ``folder``; returns the PhantomCase."""
    from breasttumorseg.phantom import generate_phantom, write_phantom_case

    started = time.perf_counter()
    case = generate_phantom(args.seed, layout="axial", n_phases=args.phases, size=tuple(args.size),
                            spacing=tuple(args.spacing))
    write_phantom_case(case, folder)
    print(f"phantom {tuple(args.size)} x {args.phases} phases generated and written in "
          f"{time.perf_counter() - started:.1f} s (not part of the timing)")
    return case
