"""Each reader's reading order: every case once per arm, randomised, with a washout.

The order is a crossover in two passes. Pass 1 reads every case once in a random order, half
of them (rounded at random) in the manual arm and the rest assisted; pass 2 reads every case
again in the other arm. Between the two readings of a case lie at least ``washout_cases``
other cases: pass 2's order is drawn at random among the orders that respect it (a case
read at position p of pass 1 may come at position ``p - (n - 1 - washout)`` of pass 2 at the
earliest; drawing at each position among the cases already allowed always succeeds when
``washout <= n - 1``). A one-arm study is one pass.

The draws come from ``numpy.random.default_rng`` seeded with the study's seed and the
reader's ID (through SHA-256, not Python's salted ``hash``): the same study gives every
reader the same order on every machine, and different readers different orders.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .definition import ReaderStudy


@dataclass(frozen=True)
class Reading:
    """One reading: a reader reads one case in one arm, ``position`` (0-based) in their order."""

    position: int
    case_id: str
    arm: str

    @property
    def key(self) -> tuple[str, str]:
        return self.case_id, self.arm


def reader_rng(seed: int, reader: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{reader}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def reading_order(study: ReaderStudy, reader: str) -> list[Reading]:
    """The readings of ``reader`` in the order they are read (see the module docstring)."""
    study.check_reader(reader)
    rng = reader_rng(study.seed, reader)
    cases = study.case_ids
    n = len(cases)
    first = [cases[i] for i in rng.permutation(n)]
    if len(study.arms) == 1:
        return [Reading(i, c, study.arms[0]) for i, c in enumerate(first)]
    n_manual_first = n // 2 + (int(rng.integers(0, 2)) if n % 2 else 0)
    manual_first = set(first[i] for i in rng.permutation(n)[:n_manual_first])
    arm1 = {c: ("manual" if c in manual_first else "assisted") for c in cases}
    second = _second_pass(first, study.washout_cases, rng)
    readings = [Reading(i, c, arm1[c]) for i, c in enumerate(first)]
    other = {"manual": "assisted", "assisted": "manual"}
    readings += [Reading(n + i, c, other[arm1[c]]) for i, c in enumerate(second)]
    return readings


def _second_pass(first: list[str], washout: int, rng: np.random.Generator) -> list[str]:
    n = len(first)
    slack = n - 1 - washout
    if slack < 0:
        raise ValueError(f"washout {washout} impossible with {n} cases")
    earliest = {case: max(0, position - slack) for position, case in enumerate(first)}
    remaining = list(first)
    order = []
    for position in range(n):
        allowed = [c for c in remaining if earliest[c] <= position]
        choice = allowed[int(rng.integers(0, len(allowed)))]
        order.append(choice)
        remaining.remove(choice)
    return order


def washout_gaps(readings: list[Reading]) -> dict[str, int]:
    """For each case read twice: how many other readings lie between its two readings."""
    positions: dict[str, list[int]] = {}
    for reading in readings:
        positions.setdefault(reading.case_id, []).append(reading.position)
    return {case: p[1] - p[0] - 1 for case, p in positions.items() if len(p) == 2}
