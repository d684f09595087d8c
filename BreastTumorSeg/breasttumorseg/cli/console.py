"""What the command line shows while it works: warnings, log lines and progress bars (stderr), or
progress as JSON lines on stdout for the Slicer logic's background run (``--progress-lines``)."""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager

log = logging.getLogger("breasttumorseg")


def warn(message: str) -> None:
    log.warning(message)


def info(*parts, **_) -> None:
    log.info(" ".join(str(p) for p in parts))


@contextmanager
def progress_bar(args, description: str):
    """A ``progress(step, fraction)`` callback: a tqdm bar on stderr, JSON lines on stdout
    with ``--progress-lines``, or None with ``--quiet``."""
    if getattr(args, "progress_lines", False):
        def emit(step: str, fraction: float) -> None:
            print(json.dumps({"step": step, "progress": round(fraction, 4)}), flush=True)

        yield emit
        return
    if args.quiet:
        yield None
        return
    from tqdm import tqdm  # tqdm waits: installed on first use in Slicer

    bar = tqdm(total=1000, desc=description, unit="‰", file=sys.stderr, leave=False,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")

    def progress(step: str, fraction: float) -> None:
        if step and step != bar.desc:
            bar.set_description_str(step, refresh=False)
        bar.update(int(round(fraction * 1000)) - bar.n)

    try:
        yield progress
    finally:
        bar.close()


@contextmanager
def no_progress():
    yield None


def iterate(iterable, quiet: bool, description: str):
    """``iterable`` with a tqdm bar on stderr unless ``quiet``."""
    if quiet:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=description, file=sys.stderr, leave=False)
